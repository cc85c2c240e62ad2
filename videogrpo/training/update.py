"""The policy update: replay stored steps, clipped loss × equalizer factors + λ·KL, optimizer steps.

ALGORITHMS §6-7, §9 step 4. A minibatch is a chunk of samples; for every step k that some of its
samples train, the rows that train k are recomputed in one forward — the same rows the rollout
batched together, so the first replay reproduces log π_old exactly (ratio 1). The loss is the mean
over the minibatch's (sample, step) pairs; each step's share is back-propagated at once so only
one forward graph is alive at a time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from videogrpo.core import kl as kl_terms
from videogrpo.core import sde
from videogrpo.core.loss import clipped_policy_loss
from videogrpo.models.base import PromptEmbeddings, VideoGenerator
from videogrpo.training.rollout import Trajectories


@dataclass(frozen=True)
class UpdateSettings:
    """Per-run constants of the update (from the config and the schedule)."""

    rule: str
    eta: float
    sigmas: Tensor  # (T+1,)
    step_variances: Tensor  # (T,) Σ_k of the rule, for the Gaussian KL
    step_weights: Tensor  # (T,) equalizer factors S_k (ones when off)
    guidance_scale: float
    sigma_clamp: float
    log_prob_reduction: str
    clip_range: float
    grad_clip: float
    kl_reference: str  # none | fixed | moving | stepwise | dual
    beta_pos: float
    beta_vel: float
    stepwise_estimator: str  # k1 | analytic


@dataclass
class UpdateBatch:
    """One rollout, ready to be replayed."""

    trajectories: Trajectories
    embeddings: PromptEmbeddings
    advantages: Tensor  # (N,)
    trained: Tensor  # (N, T) bool
    chunks: list[Tensor]  # minibatches: index tensors covering 0..N-1
    reference_means: Tensor | None  # (T, N, ...) μ_ref at trained (step, sample), else NaN


def _kl_for_step(
    settings: UpdateSettings,
    batch: UpdateBatch,
    k: int,
    rows: Tensor,
    mean: Tensor,
    log_prob: Tensor,
) -> dict[str, Tensor]:
    """The KL terms of ALGORITHMS §7 for the rows that train step k (each a scalar)."""
    terms: dict[str, Tensor] = {}
    variance = settings.step_variances[k]
    if settings.kl_reference in ("fixed", "moving", "dual"):
        assert batch.reference_means is not None
        terms["pos"] = kl_terms.gaussian_kl(mean, batch.reference_means[k, rows], variance).mean()
    if settings.kl_reference in ("stepwise", "dual"):
        if settings.stepwise_estimator == "analytic":
            assert batch.trajectories.means is not None
            old_mean = batch.trajectories.means[k, rows]
            terms["vel"] = kl_terms.gaussian_kl(mean, old_mean, variance).mean()
        else:
            terms["vel"] = kl_terms.k1_kl(log_prob, batch.trajectories.log_probs[k, rows])
    return terms


def _combined_kl(settings: UpdateSettings, terms: dict[str, Tensor]) -> Tensor | None:
    if settings.kl_reference == "dual":
        return kl_terms.dual_kl(terms["pos"], terms["vel"], settings.beta_pos, settings.beta_vel)
    if "pos" in terms:
        return terms["pos"]
    return terms.get("vel")


def policy_update(
    model: VideoGenerator,
    optimizer: torch.optim.Optimizer,
    batch: UpdateBatch,
    settings: UpdateSettings,
    *,
    epochs: int,
    kl_coef: Callable[[], float],
    after_step: Callable[[float], None],
) -> dict[str, float]:
    """Run `epochs` passes of one optimizer step per minibatch; return averaged diagnostics.

    `kl_coef()` gives λ_t for the coming optimizer step; `after_step(kl)` reports the step's KL
    (the controller's input) once the step is taken.
    """
    trajectories = batch.trajectories
    parameters = [p for p in model.parameters() if p.requires_grad]
    sums: dict[str, float] = defaultdict(float)
    step_norm_sums: dict[int, float] = defaultdict(float)
    step_counts: dict[int, int] = defaultdict(int)
    total_pairs, optimizer_steps = 0, 0
    model.train()
    for _epoch in range(epochs):
        for chunk in batch.chunks:
            pairs = int(batch.trained[chunk].sum())
            if pairs == 0:
                continue
            optimizer.zero_grad(set_to_none=True)
            coef = kl_coef()
            step_kl = 0.0
            for k in torch.nonzero(batch.trained[chunk].any(dim=0)).flatten().tolist():
                rows = chunk[batch.trained[chunk, k]]
                n = rows.numel()
                sigma = settings.sigmas[k].item()
                x = trajectories.states[k, rows]
                velocity = model.velocity(
                    x,
                    torch.full((n,), sigma, device=x.device),
                    batch.embeddings.select(rows),
                    settings.guidance_scale,
                )
                velocity.retain_grad()
                out = sde.step(
                    settings.rule,
                    velocity,
                    x,
                    sigma,
                    settings.sigmas[k + 1].item(),
                    eta=settings.eta,
                    prev_sample=trajectories.states[k + 1, rows],
                    sigma_clamp=settings.sigma_clamp,
                    log_prob_reduction=settings.log_prob_reduction,
                )
                loss, stats = clipped_policy_loss(
                    out.log_prob,
                    trajectories.log_probs[k, rows],
                    batch.advantages[rows],
                    settings.clip_range,
                    weights=settings.step_weights[k].expand(n),
                )
                terms = _kl_for_step(settings, batch, k, rows, out.mean, out.log_prob)
                kl = _combined_kl(settings, terms)
                total = loss if kl is None else loss + coef * kl
                (total * (n / pairs)).backward()

                step_norm_sums[k] += float(velocity.grad.flatten(1).norm(dim=1).sum())
                step_counts[k] += n
                sums["policy/loss"] += float(loss.detach()) * n
                for name in ("clip_frac", "clip_frac_pos", "clip_frac_neg", "approx_kl"):
                    sums[f"policy/{name}"] += float(getattr(stats, name)) * n
                sums["policy/ratio_mean"] += float(stats.ratio_mean) * n
                sums["policy/ratio_max"] = max(sums["policy/ratio_max"], float(stats.ratio_max))
                for name, value in terms.items():
                    sums[f"kl/{name}"] += float(value.detach()) * n
                if kl is not None:
                    step_kl += float(kl.detach()) * n / pairs
                total_pairs += n
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, settings.grad_clip)
            sums["grad/norm"] += float(grad_norm)
            optimizer.step()
            optimizer_steps += 1
            after_step(step_kl)
            sums["kl/coef"] = coef
    metrics = {
        key: value / total_pairs
        for key, value in sums.items()
        if key not in ("policy/ratio_max", "grad/norm", "kl/coef")
    }
    metrics["policy/ratio_max"] = sums["policy/ratio_max"]
    metrics["grad/norm"] = sums["grad/norm"] / max(1, optimizer_steps)
    metrics["kl/coef"] = sums["kl/coef"]
    metrics["optim/steps"] = optimizer_steps
    for k, norm_sum in step_norm_sums.items():
        after = norm_sum / step_counts[k]
        metrics[f"grad/step_norm_after/{k}"] = after
        metrics[f"grad/step_norm_before/{k}"] = after / float(settings.step_weights[k])
    return metrics
