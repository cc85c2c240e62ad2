"""Shared frame handling of the learned rewards: batch checks, 8-bit frames, frame sampling."""

from __future__ import annotations

import torch
from torch import Tensor

from videogrpo.errors import UserError


def check_batch(videos: Tensor, prompts: list[str]) -> None:
    """Videos (B, F, H, W, 3) and one prompt per video, or a UserError saying what is off."""
    if videos.ndim != 5 or videos.shape[-1] != 3:
        raise UserError(f"videos must be (B, F, H, W, 3) in [0, 1]; got {tuple(videos.shape)}")
    if len(prompts) != videos.shape[0]:
        raise UserError(f"got {videos.shape[0]} videos but {len(prompts)} prompts")


def to_uint8(videos: Tensor) -> Tensor:
    """[0, 1] floats to the 8-bit values a video file would hold (round to nearest).

    The learned rewards were trained on decoded video files, so they score what such a file
    would show; generators overshoot [0, 1] a little, which a file cannot hold either.
    """
    return videos.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)


def uniform_frame_indices(num_frames: int, count: int) -> Tensor:
    """`count` indices spread evenly from the first frame to the last (all when count is 0)."""
    if count <= 0 or count >= num_frames:
        return torch.arange(num_frames)
    return torch.linspace(0, num_frames - 1, count).round().long()
