"""Backbones by `model.type`: the built-in adapters, or any factory named as `module:Class`.

A factory is called with one `ModelSpec` and returns a `VideoGenerator`. Built-ins map a short
name to a loader function; a plugin class is called with the spec, so `__init__(self, spec)` (or a
classmethod named in the spec, `module:Class.load`) is all it takes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from videogrpo.errors import UserError
from videogrpo.models.base import MemorySpec, ModelSpec, VideoGenerator
from videogrpo.registry import Registry

if TYPE_CHECKING:
    from videogrpo.config.settings import MemoryConfig, ModelConfig, SamplingConfig

BUILTIN_MODELS = {
    "tiny_wan": "videogrpo.embedded.tiny_wan:load_tiny_wan",
    "wan": "videogrpo.models.wan:WanGenerator.from_spec",
    "hunyuan_video_15": "videogrpo.models.hunyuan_video_15:HunyuanVideo15Generator.from_spec",
    "ltx": "videogrpo.models.ltx:LTXGenerator.from_spec",
}
MODELS = Registry("model.type", BUILTIN_MODELS, "videogrpo.models")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICE_AUTO = "auto"  # CUDA when there is one, else the CPU


def resolve_device(name: str) -> torch.device:
    """`auto`, `cpu`, `cuda`, `cuda:1` … → a device this machine has, or a one-line error."""
    if name == DEVICE_AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UserError(
            f"model.device: {name!r} is not a device; use auto, cpu or cuda:N"
        ) from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"model.device: {name!r} but this machine has no CUDA GPU; use cpu or auto")
    return device


def model_spec(
    config: ModelConfig, sampling: SamplingConfig, memory: MemoryConfig | None = None
) -> ModelSpec:
    memory_spec = MemorySpec()
    if memory is not None:
        memory_spec = MemorySpec(
            offload=memory.offload,
            gradient_checkpointing=memory.gradient_checkpointing,
            vae_slicing=memory.vae_slicing,
            vae_tiling=memory.vae_tiling,
            text_cache_dir=memory.text_cache_dir,
        )
    return ModelSpec(
        path=config.path,
        options=dict(config.options),
        dtype=DTYPES[config.dtype],
        text_encoder_dtype=DTYPES[config.text_encoder_dtype],
        vae_dtype=DTYPES[config.vae_dtype],
        device=resolve_device(config.device),
        num_frames=sampling.num_frames,
        height=sampling.height,
        width=sampling.width,
        attention_backend=config.attention_backend,
        compile=config.compile,
        memory=memory_spec,
    )


def build_model(
    config: ModelConfig, sampling: SamplingConfig, memory: MemoryConfig | None = None
) -> VideoGenerator:
    """The configured backbone, frozen, in eval mode (no trainable part switched on yet).

    `memory` (the config's section) is for training runs; without it the backbone gets the
    defaults of `MemorySpec` (inference: `videogrpo sample`, `eval`)."""
    model = MODELS.resolve(config.type)(model_spec(config, sampling, memory))
    if not isinstance(model, VideoGenerator):
        missing = [name for name in _protocol_members() if not hasattr(model, name)]
        raise UserError(
            f"model.type {config.type!r} built a {type(model).__name__}, which is not a "
            f"VideoGenerator (missing: {', '.join(missing)}); see videogrpo/models/base.py"
        )
    return model


def enable_training(model: VideoGenerator, config: ModelConfig) -> VideoGenerator:
    """Switch on the trainable part the config asks for: a LoRA adapter or every weight."""
    if config.finetune == "lora":
        try:
            model.enable_lora(config.lora_rank, config.lora_alpha, config.lora_targets)
        except ValueError as error:  # peft: a target that matches no module
            reason = str(error).strip().splitlines()[0]
            raise UserError(
                f"model.lora_targets: {reason}; list module names of the backbone"
            ) from error
    else:
        model.enable_full_finetuning()
    return model


def _protocol_members() -> list[str]:
    return sorted(name for name in vars(VideoGenerator) if not name.startswith("_"))
