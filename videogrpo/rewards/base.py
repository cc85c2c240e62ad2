"""The reward protocol: videos and prompts in, named per-video components out.

Every reward (the synthetic world's, VideoAlign, CLIPScore, a user's function) speaks this one
protocol, so the trainer, the curriculum and eval never special-case a reward.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import torch

from videogrpo.errors import UserError


@runtime_checkable
class RewardModel(Protocol):
    """Scores a batch of videos against their prompts.

    `videos` is float (B, F, H, W, 3) in [0, 1], channels last; the result maps every name in
    `components` to a float32 tensor of B scores. A video that cannot be scored gets NaN, which
    the trainer excludes from group statistics.

    Two optional methods are used when a reward has them: `check_prompts(prompts)` raises a
    UserError for prompts it cannot score (called before a run writes anything), and
    `diagnostics(videos, prompts) -> {name: (B,)}` adds per-video numbers to eval summaries.
    """

    components: tuple[str, ...]

    def __call__(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]: ...


def composite(
    components: Mapping[str, torch.Tensor],
    weights: Mapping[str, float] | None = None,
    *,
    normalise: bool = True,
) -> torch.Tensor:
    """Weighted sum of reward components, R = sum_c w_c * r_c (ALGORITHMS section 5).

    With `normalise` (the default) the weights are divided by their sum, so R is a weighted mean
    and stays on the components' scale: weights (1, 1, 1) give the mean of three that eval
    reports. Without it, R is the raw sum, as SAGE writes its weights. No weights means equal
    weights. Components without a weight are left out; a NaN component makes R NaN.
    """
    if weights is None:
        weights = dict.fromkeys(components, 1.0)
    if not weights:
        raise UserError("reward weights are empty; give a weight to at least one component")
    unknown = sorted(set(weights) - set(components))
    if unknown:
        raise UserError(
            f"reward weights name {', '.join(unknown)}, which the reward does not produce; "
            f"its components are {', '.join(components)}"
        )
    total = sum(weights.values())
    if normalise and total <= 0:
        raise UserError(f"reward weights {dict(weights)} must sum to more than 0 to normalise")
    scale = 1.0 / total if normalise else 1.0
    weighted = [scale * weight * components[name].float() for name, weight in weights.items()]
    return torch.stack(weighted).sum(0)
