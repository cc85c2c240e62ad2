"""LoRA on a diffusers transformer through peft, shared by every backbone adapter.

diffusers models carry peft's `PeftAdapterMixin` (`add_adapter`, `disable_adapters`), so the same
few calls serve Wan, HunyuanVideo 1.5 and LTX-Video; only the pipeline class that writes the
diffusers LoRA file and the default target modules differ.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from peft import LoraConfig, get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

# The attention projections (self and cross) and both feed-forward linears of a Wan block: the
# layers FlowGRPO/DanceGRPO adapt, and the names diffusers' Wan LoRA loader maps.
WAN_LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")

# The attention projections of HunyuanVideo 1.5's double-stream blocks (video and text streams)
# and the linears of both MLPs, as the diffusers HunyuanVideo LoRA trainers target them.
HUNYUAN_VIDEO_LORA_TARGET_MODULES = (
    "to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
)  # fmt: skip
# LTX-Video blocks: self- and cross-attention projections and the feed-forward linears.
LTX_LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")

# peft's name for the single adapter we train.
ADAPTER_NAME = "default"
# diffusers' LoRA file name, the one `load_lora_weights(folder)` reads without a weight_name.
LORA_WEIGHT_FILE = "pytorch_lora_weights.safetensors"


def add_lora(
    transformer: nn.Module,
    rank: int,
    alpha: float,
    target_modules: list[str] | tuple[str, ...],
    dropout: float = 0.0,
) -> None:
    """Freeze `transformer` and inject a zero-initialised (B = 0) LoRA that alone is trainable."""
    if rank <= 0:
        raise ValueError(f"LoRA rank must be positive, got {rank}")
    transformer.requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=alpha,
            target_modules=list(target_modules),
            lora_dropout=dropout,
            init_lora_weights=True,
        ),
        adapter_name=ADAPTER_NAME,
    )


def has_lora(transformer: nn.Module) -> bool:
    return any(isinstance(module, BaseTunerLayer) for module in transformer.modules())


@contextmanager
def adapters_disabled(transformer: nn.Module) -> Iterator[None]:
    """Run the base model: with LoRA the reference policy costs no memory. Safe to nest."""
    already_disabled = any(
        isinstance(module, BaseTunerLayer) and module.disable_adapters
        for module in transformer.modules()
    )
    if already_disabled:
        yield
        return
    transformer.disable_adapters()
    try:
        yield
    finally:
        transformer.enable_adapters()


def lora_weight_name(denoiser: str | None = None) -> str:
    """File name of a denoiser's LoRA: diffusers' default for the main one (None), which
    `load_lora_weights(folder)` picks; one that does not end like the default for any other
    (diffusers would otherwise guess between them)."""
    return LORA_WEIGHT_FILE if denoiser is None else f"{denoiser}_lora_weights.safetensors"


def save_lora_for_pipeline(
    transformer: nn.Module,
    pipeline_class: type,
    directory: Path,
    weight_name: str = LORA_WEIGHT_FILE,
) -> None:
    """Write the adapter as `pipeline_class.load_lora_weights` expects it.

    The peft config goes in as metadata so that a loader restores lora_alpha (scaling = alpha/rank)
    instead of assuming alpha = rank.
    """
    pipeline_class.save_lora_weights(
        str(directory),
        transformer_lora_layers=get_peft_model_state_dict(transformer, adapter_name=ADAPTER_NAME),
        transformer_lora_adapter_metadata=transformer.peft_config[ADAPTER_NAME].to_dict(),
        weight_name=weight_name,
    )
