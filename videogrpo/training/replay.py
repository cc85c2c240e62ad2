"""A rollout ready to be replayed, and its replay under the model as it is now.

The update recomputes each trained step in the batches the rollout used (rows of one minibatch
that train the step), so the first replay reproduces log π_old bitwise (ratio 1). Reference means
(the model under a reference context) and the old log-probs of the samples `data.train_extremes`
keeps are computed the same way, on exactly those rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from videogrpo.models.base import Conditioning, VideoGenerator
from videogrpo.training.rollout import Trajectories
from videogrpo.training.step import StepSettings, policy_step


@dataclass
class UpdateBatch:
    """One rollout, ready to be replayed."""

    trajectories: Trajectories
    conditioning: Conditioning
    advantages: Tensor  # (N,)
    trained: Tensor  # (N, T) bool
    chunks: list[Tensor]  # minibatches: index tensors covering 0..N-1


@torch.no_grad()
def replay(
    model: VideoGenerator,
    settings: StepSettings,
    batch: UpdateBatch,
    *,
    with_means: bool,
    chunks: list[Tensor] | None = None,
) -> tuple[Tensor | None, Tensor]:
    """μ (if `with_means`) and log π at every trained (step, sample) of `chunks` (default: all
    of the batch's minibatches); NaN elsewhere."""
    states = batch.trajectories.states
    means = torch.full_like(states[1:], float("nan")) if with_means else None
    log_probs = torch.full_like(batch.trajectories.log_probs, float("nan"))
    for k in range(settings.num_steps):
        for chunk in batch.chunks if chunks is None else chunks:
            trained_rows = chunk[batch.trained[chunk, k]]
            if trained_rows.numel() == 0:
                continue
            for rows in settings.model_batches(trained_rows):
                step = policy_step(
                    model,
                    settings,
                    k,
                    states[k, rows].to(model.device),
                    batch.conditioning.select(rows),
                    prev_sample=states[k + 1, rows].to(model.device),
                )
                if means is not None:
                    means[k, rows] = step.out.mean.to(means.device)
                log_probs[k, rows] = step.out.log_prob.to(log_probs.device)
    return means, log_probs


def keep_extremes(
    model: VideoGenerator, settings: StepSettings, batch: UpdateBatch, keep: Tensor
) -> None:
    """Train only the samples `keep` (N,) marks (each group's best and worst, DanceGRPO's
    `advantage.extremes_mask`), and recompute their log π_old (and μ_old) in the update's now
    smaller batches so the first replay is ratio 1."""
    trajectories = batch.trajectories
    batch.trained = batch.trained & keep[:, None]
    means, log_probs = replay(model, settings, batch, with_means=trajectories.means is not None)
    steps = batch.trained.T
    trajectories.log_probs[steps] = log_probs[steps]
    if trajectories.means is not None:
        trajectories.means[steps] = means[steps]
