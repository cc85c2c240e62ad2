"""Group-relative advantages from rewards (ALGORITHMS §5).

The G rollouts of one prompt form a group (consecutive entries of the reward vector). A_i is the
reward minus its group mean, divided by a guarded population std, then clipped. Failed (NaN)
rewards are left out of the statistics and get advantage 0, so one bad video cannot poison its
group. When a group spans data-parallel ranks, gather the rewards first: these functions see the
whole group.
"""

from collections.abc import Mapping

import torch
from torch import Tensor

STD_MODES = ("group", "batch", "none")
AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")
# A_i = (R_i − mean) / max(std, ε), then clip to ±adv_clip (SAGE defaults, ALGORITHMS §5).
DEFAULT_STD_EPS = 1e-6
DEFAULT_ADV_CLIP = 5.0


def group_advantages(
    rewards: Tensor,
    group_size: int,
    *,
    std_mode: str = "group",
    eps: float = DEFAULT_STD_EPS,
    clip: float | None = DEFAULT_ADV_CLIP,
) -> Tensor:
    """Advantages (B,) float32 from rewards (B,) in consecutive groups of ``group_size``.

    ``std_mode``: "group" divides by the group's std (GRPO), "batch" by the std of every valid
    reward in the batch while still centring per group (FlowGRPO's global_std), "none" only
    centres (Dr.GRPO). A group whose valid rewards all tie gets 0. ``clip=None`` disables clipping.
    """
    if std_mode not in STD_MODES:
        raise ValueError(f"unknown std_mode {std_mode!r}; allowed: {list(STD_MODES)}")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0 or None, got {clip!r}")
    grouped = _grouped(rewards, group_size)
    valid, centred, group_std = _group_statistics(grouped)
    if std_mode == "group":
        scale = group_std.clamp(min=eps)
    elif std_mode == "batch":
        batch_rewards = grouped[valid]
        no_valid_reward = batch_rewards.numel() == 0  # then every centred value is 0 anyway
        scale = grouped.new_ones(()) if no_valid_reward else batch_rewards.std(correction=0)
        scale = scale.clamp(min=eps)
    else:
        scale = grouped.new_ones(())
    normalised = centred / scale
    if clip is not None:
        normalised = normalised.clamp(-clip, clip)
    return normalised.reshape(-1).to(torch.float32)


def composite_reward(components: Mapping[str, Tensor], weights: Mapping[str, float]) -> Tensor:
    """R = Σ_c w_c·r_c (float64, (B,)); components without a weight are ignored (logged only).

    A NaN in any weighted component makes the composite NaN, so the sample is excluded later.
    """
    names = _check_weights(components, weights)
    return sum(float(weights[name]) * components[name].to(torch.float64) for name in names)


def advantages(
    components: Mapping[str, Tensor],
    weights: Mapping[str, float],
    group_size: int,
    *,
    aggregation: str = "sum_then_normalize",
    std_mode: str = "group",
    eps: float = DEFAULT_STD_EPS,
    clip: float | None = DEFAULT_ADV_CLIP,
) -> Tensor:
    """Advantages (B,) from named reward components.

    "sum_then_normalize": weight and sum the components, then normalise per group (SAGE).
    "normalize_then_sum": normalise each component per group (unclipped), weight and sum, then
    clip (DanceGRPO's VQ/MQ advantages, TRL's normalize_then_sum); a NaN component contributes 0.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {aggregation!r}; allowed: {list(AGGREGATIONS)}")
    if aggregation == "sum_then_normalize":
        total = composite_reward(components, weights)
        return group_advantages(total, group_size, std_mode=std_mode, eps=eps, clip=clip)
    names = _check_weights(components, weights)
    scores = torch.stack([components[name] for name in names], dim=-1)
    constant = scores.new_tensor([float(weights[name]) for name in names])
    return weighted_group_advantages(
        scores, constant, group_size, std_mode=std_mode, eps=eps, clip=clip
    )


def weighted_group_advantages(
    scores: Tensor,
    weights: Tensor,
    group_size: int,
    *,
    std_mode: str = "group",
    eps: float = DEFAULT_STD_EPS,
    clip: float | None = DEFAULT_ADV_CLIP,
) -> Tensor:
    """Normalize-then-sum: Σ_j w_j·A_ij over components standardised per group, then clip.

    ``scores`` (B, K); ``weights`` (K,) for all groups or (B/G, K), one row per group (a
    curriculum's). Standardising each component first makes a weight that component's share of
    the advantage whatever its spread; summed first, a component that barely varies within
    groups gets almost none of it (docs/results.md).
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (B, K), got {tuple(scores.shape)}")
    per_component = torch.stack(
        [
            group_advantages(column, group_size, std_mode=std_mode, eps=eps, clip=None)
            for column in scores.unbind(dim=1)
        ],
        dim=-1,
    )
    num_samples, num_components = scores.shape
    shared, per_group = (num_components,), (num_samples // group_size, num_components)
    if tuple(weights.shape) not in (shared, per_group):
        raise ValueError(f"weights must be {shared} or {per_group}, got {tuple(weights.shape)}")
    per_sample = weights.to(per_component.dtype)
    if weights.ndim == 2:
        per_sample = per_sample.repeat_interleave(group_size, dim=0)
    summed = (per_component * per_sample).sum(dim=-1)
    return summed.clamp(-clip, clip) if clip is not None else summed


def zero_std_group_fraction(
    rewards: Tensor, group_size: int, eps: float = DEFAULT_STD_EPS
) -> float:
    """Fraction of groups whose valid rewards have std ≤ ε (fewer than 2 valid counts too).

    Such groups give zero advantage and no learning signal: the saturation diagnostic of §8.
    """
    valid, _, group_std = _group_statistics(_grouped(rewards, group_size))
    flat = (group_std.squeeze(1) <= eps) | (valid.sum(dim=1) < 2)
    return flat.double().mean().item()


def extremes_mask(advantages: Tensor, group_size: int, count: int) -> Tensor:
    """(B,) bool: the ``count`` highest and ``count`` lowest advantages of each group.

    DanceGRPO trains only these (best 4 + worst 4 of 24): the middle of a group carries the
    least advantage per forward pass. Ties are broken by position (a stable sort).
    """
    grouped = _grouped(advantages, group_size)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if 2 * count >= group_size:
        return torch.ones(advantages.shape, dtype=torch.bool)
    order = grouped.argsort(dim=1, stable=True)
    picked = torch.cat([order[:, :count], order[:, group_size - count :]], dim=1)
    mask = torch.zeros(grouped.shape, dtype=torch.bool)
    mask.scatter_(1, picked, True)
    return mask.reshape(-1)


def mean_group_std(rewards: Tensor, group_size: int) -> float:
    """Population std of the valid rewards within each group, averaged over groups.

    Logged per reward component: a component whose groups bunch together has saturated (§8)
    and only adds noise to the group advantage, even while the composite's groups still spread.
    """
    _, _, group_std = _group_statistics(_grouped(rewards, group_size))
    return group_std.mean().item()


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """(B,) rewards → (B/G, G) float64, validating the shape and group size."""
    if rewards.ndim != 1:
        raise ValueError(f"rewards must have shape (B,), got {tuple(rewards.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
    if rewards.numel() == 0 or rewards.numel() % group_size:
        raise ValueError(
            f"batch size {rewards.numel()} must be a positive multiple of group_size {group_size}"
        )
    return rewards.detach().to(torch.float64).reshape(-1, group_size)


def _group_statistics(grouped: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Valid mask, rewards centred on their group mean (0 where invalid), population std (G, 1).

    Only finite rewards enter the mean and std; a group with no valid reward has std 0.
    """
    valid = torch.isfinite(grouped)
    counts = valid.sum(dim=1, keepdim=True).clamp(min=1)
    zeros = torch.zeros_like(grouped)
    group_mean = torch.where(valid, grouped, zeros).sum(dim=1, keepdim=True) / counts
    centred = torch.where(valid, grouped - group_mean, zeros)
    group_std = ((centred**2).sum(dim=1, keepdim=True) / counts).sqrt()
    return valid, centred, group_std


def _check_weights(components: Mapping[str, Tensor], weights: Mapping[str, float]) -> list[str]:
    if not weights:
        raise ValueError("weights must name at least one reward component")
    missing = [name for name in weights if name not in components]
    if missing:
        raise ValueError(
            f"weights name unknown reward components {missing}; available: {sorted(components)}"
        )
    shapes = {tuple(components[name].shape) for name in weights}
    if len(shapes) != 1:
        raise ValueError(f"weighted reward components must share one shape (B,), got {shapes}")
    return list(weights)
