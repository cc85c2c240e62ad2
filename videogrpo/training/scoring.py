"""Decode clean latents and score them in chunks: the memory contract for videos.

One float32 480p clip of 81 frames is ~390 MB, so neither a rollout's nor an eval's videos are
ever held all at once: latents are decoded `decode_batch_size` at a time, scored, and dropped,
except the few videos the caller keeps to save as GIFs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from videogrpo.models.base import VideoGenerator
from videogrpo.rewards.base import RewardModel


@dataclass
class Scored:
    rewards: dict[str, Tensor]  # component -> (N,) float32 on the CPU
    diagnostics: dict[str, Tensor] = field(default_factory=dict)  # name -> (N,), if asked for
    videos: Tensor | None = None  # the first `keep_videos` videos (CPU), if any were kept


@torch.no_grad()
def decode_and_score(
    model: VideoGenerator,
    reward: RewardModel,
    latents: Tensor,
    prompts: list[str],
    *,
    decode_batch_size: int,
    keep_videos: int = 0,
    diagnostics: bool = False,
) -> Scored:
    """Rewards (and, with `diagnostics`, the reward's per-video diagnostics) of every latent."""
    parts: list[dict[str, Tensor]] = []
    extra: list[dict[str, Tensor]] = []
    kept: list[Tensor] = []
    diagnose = getattr(reward, "diagnostics", None) if diagnostics else None
    for start in range(0, len(prompts), decode_batch_size):
        stop = min(start + decode_batch_size, len(prompts))
        videos = model.decode(latents[start:stop].to(model.device)).cpu()
        chunk_prompts = prompts[start:stop]
        parts.append({k: v.float().cpu() for k, v in reward(videos, chunk_prompts).items()})
        if diagnose is not None:
            extra.append({k: v.float().cpu() for k, v in diagnose(videos, chunk_prompts).items()})
        if start < keep_videos:
            kept.append(videos[: keep_videos - start])
    return Scored(
        rewards=_concatenate(parts),
        diagnostics=_concatenate(extra),
        videos=torch.cat(kept) if kept else None,
    )


def _concatenate(parts: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    if not parts:
        return {}
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]}
