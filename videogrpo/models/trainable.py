"""What trains in a diffusers-transformer backbone, written once for every adapter.

A backbone subclasses `TrainableTransformer`, sets `self.transformer` (the denoiser; a backbone
with several, like Wan 2.2 A14B's two experts, lists their attribute names in `denoiser_names`)
and `lora_pipeline_class` (the diffusers pipeline whose `load_lora_weights` should read the
exported adapter), and gets the protocol's training half: LoRA or full fine-tuning, the fixed
reference, clone-safe state dicts, the LoRA export, and the transformer-side speed and memory
switches (gradient checkpointing, attention backend, torch.compile, mixed precision).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import ClassVar

import torch
from torch import Tensor, nn

from videogrpo.errors import UserError
from videogrpo.models.lora import (
    WAN_LORA_TARGET_MODULES,
    adapters_disabled,
    add_lora,
    has_lora,
    lora_weight_name,
    save_lora_for_pipeline,
)

HALF_DTYPES = (torch.bfloat16, torch.float16)


class TrainableTransformer(nn.Module):
    """LoRA or full fine-tuning of the denoiser(s); everything else stays frozen."""

    lora_pipeline_class: ClassVar[type]
    default_lora_targets: ClassVar[tuple[str, ...]] = WAN_LORA_TARGET_MODULES
    # Attributes holding a denoiser; one that is None (Wan 2.1 has no transformer_2) is skipped.
    denoiser_names: ClassVar[tuple[str, ...]] = ("transformer",)
    # Attributes of a denoiser that list its repeated blocks (diffusers: Wan `blocks`,
    # CogVideoX/LTX/HunyuanVideo `transformer_blocks`).
    block_lists: ClassVar[tuple[str, ...]] = ("blocks", "transformer_blocks")
    transformer: nn.Module

    def __init__(self) -> None:
        super().__init__()
        self._prompt_cache: dict[str, Tensor] = {}
        self._reference_weights: dict[str, Tensor] | None = None
        self._reference_active = False
        # Full fine-tuning of a half-precision transformer keeps float32 weights (AdamW steps
        # below bfloat16's resolution would vanish) and computes under autocast to this dtype.
        self.autocast_dtype: torch.dtype | None = None

    def denoisers(self) -> dict[str, nn.Module]:
        """The trained networks by attribute name, in a fixed order."""
        found = {name: getattr(self, name, None) for name in self.denoiser_names}
        return {name: module for name, module in found.items() if module is not None}

    def clear_prompt_cache(self) -> None:
        """Call after changing text-encoder weights by hand (loading, editing) while frozen."""
        self._prompt_cache.clear()

    # ----------------------------------------------------------------- speed and memory

    def configure_denoisers(
        self, *, gradient_checkpointing: bool, attention_backend: str | None, compile: bool
    ) -> None:
        """Apply the transformer-side switches of the config to every denoiser."""
        for module in self.denoisers().values():
            if gradient_checkpointing:
                if not getattr(module, "_supports_gradient_checkpointing", False):
                    raise UserError(
                        f"memory.gradient_checkpointing: {type(module).__name__} does not "
                        "support it; set memory.gradient_checkpointing false"
                    )
                module.enable_gradient_checkpointing()
            if attention_backend is not None:
                set_attention_backend(module, attention_backend)
            if compile:
                compile_blocks(module)

    def compute_context(self) -> AbstractContextManager[None]:
        """Autocast around the transformer call when full fine-tuning keeps float32 weights."""
        if self.autocast_dtype is None:
            return nullcontext()
        device = next(iter(self.denoisers().values())).device
        return torch.autocast(device.type, dtype=self.autocast_dtype)

    # ----------------------------------------------------------------- training mode

    def enable_lora(
        self,
        rank: int,
        alpha: float,
        target_modules: list[str] | None = None,
        dropout: float = 0.0,
    ) -> None:
        self._require_no_training_mode_yet()
        self.requires_grad_(False)
        targets = target_modules or self.default_lora_targets
        for module in self.denoisers().values():
            add_lora(module, rank, alpha, targets, dropout)

    def enable_full_finetuning(self) -> None:
        """Train the denoiser(s), keep their current weights as the reference; text is frozen."""
        self._require_no_training_mode_yet()
        self.requires_grad_(False)
        for module in self.denoisers().values():
            # diffusers' `dtype` skips the modules it keeps in float32 (Wan's norms, RoPE)
            dtype = getattr(module, "dtype", next(module.parameters()).dtype)
            if dtype in HALF_DTYPES:
                self.autocast_dtype = dtype
                module.float()
            module.requires_grad_(True)
        self._reference_weights = {
            name: param.detach().clone() for name, param in self._denoiser_parameters()
        }

    def _denoiser_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for prefix, module in self.denoisers().items():
            for name, param in module.named_parameters():
                yield f"{prefix}.{name}", param

    def _require_no_training_mode_yet(self) -> None:
        lora = any(has_lora(module) for module in self.denoisers().values())
        if lora or self._reference_weights is not None:
            raise ValueError("enable_lora / enable_full_finetuning may be called once per model")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [param for param in self.parameters() if param.requires_grad]

    @contextmanager
    def reference_policy(self) -> Iterator[None]:
        """The fixed KL reference: LoRA disabled, or the weights kept by enable_full_finetuning.

        Full fine-tuning swaps the reference's values in and out; without either mode the model
        is its own reference.
        """
        denoisers = list(self.denoisers().values())
        if any(has_lora(module) for module in denoisers):
            with _all_adapters_disabled(denoisers):
                yield
        elif self._reference_weights is not None and not self._reference_active:
            self._swap_reference_weights()
            self._reference_active = True
            try:
                yield
            finally:
                self._swap_reference_weights()
                self._reference_active = False
        else:
            yield

    def _swap_reference_weights(self) -> None:
        """Swap values, not storage: FSDP2 all-gathers from the storage a parameter was sharded
        into, so a parameter must keep it (a sharded reference swaps shard for shard)."""
        assert self._reference_weights is not None
        with torch.no_grad():
            for name, param in self._denoiser_parameters():
                reference = self._reference_weights[name]
                current = param.detach().clone()
                param.copy_(reference)
                reference.copy_(current)

    def fsdp_units(self) -> list[nn.Module]:
        """What FSDP2 shards one by one: each denoiser's blocks, then the denoisers."""
        denoisers = list(self.denoisers().values())
        blocks = [
            block
            for denoiser in denoisers
            for name in self.block_lists
            for block in getattr(denoiser, name, None) or []
        ]
        return [*blocks, *denoisers]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        return {
            name: param.detach().clone()
            for name, param in self.named_parameters()
            if param.requires_grad
        }

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        trainable = {name: p for name, p in self.named_parameters() if p.requires_grad}
        if state.keys() != trainable.keys():
            missing = sorted(trainable.keys() - state.keys())[:3]
            unexpected = sorted(state.keys() - trainable.keys())[:3]
            raise ValueError(
                f"trainable state does not match the model: missing {missing}, "
                f"unexpected {unexpected}"
            )
        with torch.no_grad():
            for name, param in trainable.items():
                param.copy_(state[name])
        prefixes = tuple(f"{name}." for name in self.denoiser_names)
        if any(not name.startswith(prefixes) for name in trainable):
            self.clear_prompt_cache()  # a text encoder changed: cached prompts are stale

    def save_lora(self, directory: str | Path) -> None:
        """One diffusers LoRA file per denoiser: `pytorch_lora_weights.safetensors` for the first
        (what `load_lora_weights(directory)` reads), `<name>_lora_weights.safetensors` for others
        (Wan 2.2: `load_lora_weights(directory, weight_name=…, load_into_transformer_2=True)`)."""
        denoisers = self.denoisers()
        if not any(has_lora(module) for module in denoisers.values()):
            raise ValueError("save_lora needs a LoRA: call enable_lora first")
        for index, (name, module) in enumerate(denoisers.items()):
            save_lora_for_pipeline(
                module,
                self.lora_pipeline_class,
                Path(directory),
                weight_name=lora_weight_name(None if index == 0 else name),
            )


@contextmanager
def _all_adapters_disabled(modules: list[nn.Module]) -> Iterator[None]:
    if not modules:
        yield
        return
    with adapters_disabled(modules[0]), _all_adapters_disabled(modules[1:]):
        yield


def set_attention_backend(module: nn.Module, backend: str) -> None:
    """diffusers' attention dispatcher for every attention layer, or a one-line error."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    allowed = [name.value for name in AttentionBackendName]
    if backend not in allowed:
        raise UserError(
            f"model.attention_backend: {backend!r} is not a diffusers backend; choose one of: "
            f"{', '.join(allowed)}"
        )
    try:
        module.set_attention_backend(backend)
    except (RuntimeError, ImportError, ValueError) as error:  # e.g. flash-attn not installed
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(
            f"model.attention_backend: {backend!r} is unavailable here ({reason}); "
            "leave it unset for PyTorch SDPA"
        ) from error


def compile_blocks(module: nn.Module) -> None:
    """Regional compilation (each repeated transformer block) when the class names its blocks,
    which compiles once per block type instead of once per model; the whole module otherwise."""
    if getattr(module, "_repeated_blocks", None):
        module.compile_repeated_blocks()
    else:
        module.compile()
