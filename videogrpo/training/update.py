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

from videogrpo.core.loss import clipped_policy_loss
from videogrpo.models.base import VideoGenerator
from videogrpo.training.replay import UpdateBatch
from videogrpo.training.step import StepSettings, policy_step
from videogrpo.training.trust_region import KLReference


@dataclass(frozen=True)
class LossSettings:
    """Per-run constants of the clipped loss and the optimizer step."""

    step_weights: Tensor  # (T,) equalizer factors S_k (ones when off)
    clip_range: float
    grad_clip: float


def policy_update(
    model: VideoGenerator,
    optimizer: torch.optim.Optimizer,
    batch: UpdateBatch,
    settings: StepSettings,
    loss_settings: LossSettings,
    kl: KLReference,
    *,
    epochs: int,
    after_step: Callable[[float], None],
) -> dict[str, float]:
    """Run `epochs` passes of one optimizer step per minibatch; return averaged diagnostics.

    `after_step(kl)` reports each optimizer step and its KL (the λ controller's input) once taken.
    """
    trajectories = batch.trajectories
    parameters = [p for p in model.parameters() if p.requires_grad]
    sums: dict[str, float] = defaultdict(float)
    step_norm_sums: dict[int, float] = defaultdict(float)
    step_counts: dict[int, int] = defaultdict(int)
    total_pairs, optimizer_steps = 0, 0
    model.train()
    for _epoch in range(epochs):
        for chunk_index, chunk in enumerate(batch.chunks):
            pairs = int(batch.trained[chunk].sum())
            if pairs == 0:
                continue
            reference_means = kl.reference_means(model, settings, batch, chunk_index)
            optimizer.zero_grad(set_to_none=True)
            coef = kl.coefficient()
            step_kl = 0.0
            for k in torch.nonzero(batch.trained[chunk].any(dim=0)).flatten().tolist():
                step_rows = chunk[batch.trained[chunk, k]]
                for rows in settings.model_batches(step_rows):  # gradients accumulate
                    n = rows.numel()
                    step = policy_step(
                        model,
                        settings,
                        k,
                        trajectories.states[k, rows].to(model.device),
                        batch.conditioning.select(rows),
                        prev_sample=trajectories.states[k + 1, rows].to(model.device),
                    )
                    step.velocity.retain_grad()
                    loss, stats = clipped_policy_loss(
                        step.out.log_prob,
                        trajectories.log_probs[k, rows].to(step.out.log_prob.device),
                        batch.advantages[rows].to(step.out.log_prob.device),
                        loss_settings.clip_range,
                        weights=loss_settings.step_weights[k].expand(n),
                    )
                    per_sample = kl.terms(
                        k, rows, step.out.mean, step.out.log_prob, trajectories, reference_means
                    )
                    terms = {name: value.mean() for name, value in per_sample.items()}
                    if kl.clock == "sample_step" and per_sample:
                        pair_kl = kl.combine(per_sample)
                        lambdas = kl.coefficients_for(pair_kl.detach())
                        kl_value, penalty = pair_kl.mean(), (lambdas * pair_kl).mean()
                        sums["kl/coef_sum"] += float(lambdas.sum())
                    else:
                        kl_value = kl.combine(terms)
                        penalty = None if kl_value is None else coef * kl_value
                    total = loss if penalty is None else loss + penalty
                    (total * (n / pairs)).backward()

                    step_norm_sums[k] += float(step.velocity.grad.flatten(1).norm(dim=1).sum())
                    step_counts[k] += n
                    sums["policy/loss"] += float(loss.detach()) * n
                    for name in ("clip_frac", "clip_frac_pos", "clip_frac_neg", "approx_kl"):
                        sums[f"policy/{name}"] += float(getattr(stats, name)) * n
                    sums["policy/ratio_mean"] += float(stats.ratio_mean) * n
                    sums["policy/ratio_max"] = max(sums["policy/ratio_max"], float(stats.ratio_max))
                    for name, value in terms.items():
                        sums[f"kl/{name}"] += float(value.detach()) * n
                    if kl_value is not None:
                        step_kl += float(kl_value.detach()) * n / pairs
                    total_pairs += n
            grad_norm = torch.nn.utils.clip_grad_norm_(parameters, loss_settings.grad_clip)
            sums["grad/norm"] += float(grad_norm)
            optimizer.step()
            optimizer_steps += 1
            after_step(step_kl)
            sums["kl/coef"] = coef
    metrics = {
        key: value / total_pairs
        for key, value in sums.items()
        if key not in ("policy/ratio_max", "grad/norm", "kl/coef", "kl/coef_sum")
    }
    metrics["policy/ratio_max"] = sums["policy/ratio_max"]
    metrics["grad/norm"] = sums["grad/norm"] / max(1, optimizer_steps)
    # λ of the last optimizer step; with the per-pair clock, the mean λ the update's pairs saw
    per_pair = "kl/coef_sum" in sums
    metrics["kl/coef"] = sums["kl/coef_sum"] / total_pairs if per_pair else sums["kl/coef"]
    metrics["optim/steps"] = optimizer_steps
    for k, norm_sum in step_norm_sums.items():
        after = norm_sum / step_counts[k]
        metrics[f"grad/step_norm_after/{k}"] = after
        metrics[f"grad/step_norm_before/{k}"] = after / float(loss_settings.step_weights[k])
    return metrics
