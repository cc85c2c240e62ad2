"""Clipped policy loss with per-step equalizer weights (ALGORITHMS §6).

    ρ = exp(log π_θ − log π_old)
    ℓ = S_k · max(−A·ρ, −A·clip(ρ, 1 − ε_c, 1 + ε_c))

averaged over every (sample, trained step) element. With one optimizer step per rollout ρ ≈ 1
and the clip rarely acts; with several (minibatches, inner epochs) it does, so the diagnostics
say how often and on which side.
"""

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PolicyLossStats:
    """Detached float32 scalars for logging.

    clip_frac: fraction of elements with ρ outside [1 − ε_c, 1 + ε_c].
    clip_frac_pos: fraction of elements with A > 0 and ρ > 1 + ε_c (the clip zeroes the gradient).
    clip_frac_neg: fraction of elements with A < 0 and ρ < 1 − ε_c (the clip zeroes the gradient).
    approx_kl: mean((ρ − 1) − log ρ), the non-negative k3 estimator of KL(π_old ‖ π_θ).
    """

    clip_frac: Tensor
    clip_frac_pos: Tensor
    clip_frac_neg: Tensor
    approx_kl: Tensor
    ratio_mean: Tensor
    ratio_min: Tensor
    ratio_max: Tensor


def clipped_policy_loss(
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    clip_range: float,
    weights: Tensor | None = None,
) -> tuple[Tensor, PolicyLossStats]:
    """Mean clipped surrogate loss over N elements (all inputs (N,)) and its diagnostics.

    ``weights`` are the equalizer factors S_k of each element's step (§4); they multiply the
    per-element loss, they are not a weighted average.
    """
    if not clip_range > 0:
        raise ValueError(f"clip_range must be > 0, got {clip_range!r}")
    inputs = {"log_prob": log_prob, "old_log_prob": old_log_prob, "advantages": advantages}
    if weights is not None:
        inputs["weights"] = weights
    shapes = {name: tuple(value.shape) for name, value in inputs.items()}
    if log_prob.ndim != 1 or log_prob.numel() == 0 or len(set(shapes.values())) != 1:
        raise ValueError(
            f"policy loss inputs must all have one shape (N,) with N > 0, got {shapes}"
        )

    log_ratio = log_prob.float() - old_log_prob.float().detach()
    ratio = log_ratio.exp()
    advantages = advantages.float().detach()
    clipped_ratio = ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    per_element = torch.maximum(-advantages * ratio, -advantages * clipped_ratio)
    if weights is not None:
        per_element = per_element * weights.float().detach()
    loss = per_element.mean()

    with torch.no_grad():
        above = ratio > 1.0 + clip_range
        below = ratio < 1.0 - clip_range
        stats = PolicyLossStats(
            clip_frac=(above | below).float().mean(),
            clip_frac_pos=(above & (advantages > 0)).float().mean(),
            clip_frac_neg=(below & (advantages < 0)).float().mean(),
            approx_kl=((ratio - 1.0) - log_ratio).mean(),
            ratio_mean=ratio.mean(),
            ratio_min=ratio.min(),
            ratio_max=ratio.max(),
        )
    return loss, stats
