"""One description per backbone family for the tests: its tiny folder, its model.type, and how to
make the stock diffusers pipeline sample on videogrpo's σ grid from given noise.

Every pipeline's scheduler shifts what it is given, so the pipeline gets the unshifted linspace and
videogrpo the same shift as the folder's scheduler: both then step on the same σ grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tiny_pipelines as tiny
import torch

from videogrpo.config import TrainConfig
from videogrpo.models.base import VideoGenerator
from videogrpo.models.registry import build_model


@dataclass(frozen=True)
class Case:
    name: str
    model_type: str
    build: Callable[[Path], Path]
    shift: float  # the folder scheduler's shift
    video: dict[str, int]
    options: dict[str, Any] = field(default_factory=dict)

    def load(
        self,
        path: Path,
        memory: dict | None = None,
        options: dict | None = None,
        dtype: str = "float32",
        **sampling,
    ) -> VideoGenerator:
        config = TrainConfig()
        config.model.type, config.model.path = self.model_type, str(path)
        config.model.options, config.model.dtype = dict(options or {}), dtype
        for key, value in sampling.items():
            setattr(config.sampling, key, value)
        for key, value in (memory or {}).items():
            setattr(config.memory, key, value)
        return build_model(config.model, config.sampling, config.memory)


CASES = {
    case.name: case
    for case in (
        Case("wan22_a14b", "wan", tiny.build_wan22_a14b, 3.0, tiny.WAN_VIDEO),
        Case("wan22_ti2v", "wan", tiny.build_wan22_ti2v, 3.0, tiny.WAN_TI2V_VIDEO),
        Case(
            "hunyuan_video_15",
            "hunyuan_video_15",
            tiny.build_hunyuan_video_15,
            5.0,
            tiny.HUNYUAN_VIDEO,
            tiny.HUNYUAN_OPTIONS,
        ),  # fmt: skip
        Case("ltx", "ltx", tiny.build_ltx, 3.0, tiny.LTX_VIDEO),
    )
}


def load_stock_pipeline(case: Case, path: Path) -> Any:
    """The folder loaded by diffusers alone, sampling on an unshifted linspace of σ."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    if case.model_type == "hunyuan_video_15":
        pipe.tokenizer_max_length = case.options["max_sequence_length"]
        pipe.tokenizer_2_max_length = case.options["glyph_max_length"]
    set_timesteps = pipe.scheduler.set_timesteps

    def set_unshifted(num_inference_steps=None, device=None, sigmas=None, **_):
        steps = len(sigmas) if num_inference_steps is None else num_inference_steps
        unshifted = np.linspace(1.0, 0.0, steps + 1)[:-1]
        set_timesteps(device=device, sigmas=unshifted)

    pipe.scheduler.set_timesteps = set_unshifted
    return pipe


def stock_sample(
    case: Case,
    pipe: Any,
    noise: torch.Tensor,
    prompts: list[str],
    *,
    num_steps: int,
    guidance: float,
    negative: str = "",
    decode: bool = False,
) -> torch.Tensor:
    """The pipeline's own output from `noise`: final latents (videogrpo's layout) or, with
    `decode`, videos (B, F, H, W, 3)."""
    from diffusers.guiders import ClassifierFreeGuidance

    size = {key: case.video[key] for key in ("num_frames", "height", "width")}
    common: dict[str, Any] = dict(
        prompt=prompts, negative_prompt=negative, num_inference_steps=num_steps,
        output_type="pt" if decode else "latent", **size,
    )  # fmt: skip
    if case.model_type == "hunyuan_video_15":
        pipe.guider = ClassifierFreeGuidance(guidance_scale=guidance)
        # its encode_prompt repeats a negative prompt only when given one per prompt
        common["negative_prompt"] = [negative] * len(prompts)
    else:
        common.update(guidance_scale=guidance)
        common.update(max_sequence_length=case.video["max_sequence_length"])
    latents = noise
    if case.model_type == "ltx":
        latents = pipe._pack_latents(noise, 1, 1)
    output = pipe(latents=latents.clone(), **common).frames
    if decode:
        return output.permute(0, 1, 3, 4, 2)
    if case.model_type == "ltx":
        return pipe._unpack_latents(output, *noise.shape[2:], 1, 1)
    return output
