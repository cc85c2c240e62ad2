"""The policy update: replay stored steps, clipped loss × equalizer factors + λ·KL, optimizer steps.

ALGORITHMS §6-7, §9 step 4. A minibatch is a chunk of samples; for every step k that some of its
samples train, the rows that train k are recomputed in one forward — the same rows the rollout
batched together, so the first replay reproduces log π_old exactly (ratio 1). The loss is the mean
over the minibatch's (sample, step) pairs; each step's share is back-propagated at once so only
one forward graph is alive at a time.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributed.tensor import DTensor

from videogrpo.core.loss import clipped_policy_loss
from videogrpo.distributed.layout import MinibatchWork
from videogrpo.distributed.parallel import ONE_PROCESS, Parallel
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
    work: list[MinibatchWork] | None = None,
    parallel: Parallel = ONE_PROCESS,
) -> dict[str, float]:
    """Run `epochs` passes of one optimizer step per minibatch; return averaged diagnostics.

    `after_step(kl)` reports each optimizer step and its KL (the λ controller's input) once taken.
    Under torchrun `batch` holds this rank's part of every minibatch and `work` what the whole
    minibatch trains: every rank runs the same steps (a rank without rows for one runs a padding
    forward) and divides by the global pair count, so the averaged gradient, the KL and the
    diagnostics are those of one process with the whole batch.
    """
    trajectories = batch.trajectories
    parameters = [p for p in model.parameters() if p.requires_grad]
    sums: dict[str, float] = defaultdict(float)
    step_norm_sums: dict[int, float] = defaultdict(float)
    step_counts: dict[int, int] = defaultdict(int)
    total_pairs, optimizer_steps = 0, 0
    work = work or local_work(batch)
    model.train()
    for _epoch in range(epochs):
        for chunk_index, chunk in enumerate(batch.chunks):
            pairs = work[chunk_index].pairs
            if pairs == 0:
                continue
            reference_means = kl.reference_means(model, settings, batch, chunk_index, parallel)
            optimizer.zero_grad(set_to_none=True)
            coef = kl.coefficient()
            step_kl = 0.0
            for k, rows, last in minibatch_calls(batch, chunk, work[chunk_index], settings):
                with parallel.gradient_sync(last):  # DDP reduces on a minibatch's last backward
                    if rows is None:  # only other ranks have rows for this call
                        padding_step(model, settings, k, batch, chunk)
                        if kl.clock == "sample_step" and kl.kind != "none":
                            pair_coefficients(kl, torch.zeros(0), parallel)
                        continue
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
                        lambdas = pair_coefficients(kl, pair_kl.detach(), parallel)
                        kl_value, penalty = pair_kl.mean(), (lambdas * pair_kl).mean()
                        sums["kl/coef_sum"] += float(lambdas.sum())
                    else:
                        kl_value = kl.combine(terms)
                        penalty = None if kl_value is None else coef * kl_value
                    total = loss if penalty is None else loss + penalty
                    # DDP and FSDP2 average over ranks: scale this rank's share back up.
                    (total * (n * parallel.replicas / pairs)).backward()

                velocity_grad = step.velocity.grad.flatten(1).norm(dim=1).sum()
                step_norm_sums[k] += float(velocity_grad) / parallel.replicas
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
            sums["grad/norm"] += float(full_value(grad_norm))
            optimizer.step()
            optimizer_steps += 1
            after_step(parallel.world.sum_float(step_kl))  # one KL for λ on every rank
            sums["kl/coef"] = coef
    if parallel.world.size > 1:
        sums, total_pairs, step_norm_sums, step_counts = combine_ranks(
            parallel, sums, total_pairs, step_norm_sums, step_counts
        )
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


def local_work(batch: UpdateBatch) -> list[MinibatchWork]:
    """One process: the steps, rows and pairs of each minibatch are its own."""
    return [MinibatchWork.of(batch.trained[chunk]) for chunk in batch.chunks]


def minibatch_calls(
    batch: UpdateBatch, chunk: Tensor, work: MinibatchWork, settings: StepSettings
) -> Iterator[tuple[int, Tensor | None, bool]]:
    """This rank's model calls for one minibatch, in order: (step k, rows, last). Every rank
    makes as many calls per step as the rank with the most rows (`memory.micro_batch_size`);
    rows is None for a call this rank only pads. `last` is the minibatch's last call, whose
    backward reduces the gradients."""
    for position, (k, most_rows) in enumerate(zip(work.steps, work.rows, strict=True)):
        rows = chunk[batch.trained[chunk, k]]
        batches = settings.model_batches(rows) if rows.numel() else []
        calls = len(settings.model_batches(torch.arange(most_rows)))
        for call in range(calls):
            last = position == len(work.steps) - 1 and call == calls - 1
            yield k, batches[call] if call < len(batches) else None, last


def pair_coefficients(kl: KLReference, pair_kl: Tensor, parallel: Parallel) -> Tensor:
    """`sample_step` clock: λ for this rank's pairs of a step. The controller steps through the
    whole minibatch's pairs of the step in one process's order (a minibatch's rows are the
    ranks' parts in rank order), so it moves alike on every rank."""
    everyone, start = parallel.world.gather_rows_at(pair_kl)
    return kl.coefficients_for(everyone)[start : start + len(pair_kl)]


def padding_step(
    model: VideoGenerator, settings: StepSettings, k: int, batch: UpdateBatch, chunk: Tensor
) -> None:
    """A forward and a zero backward on one of this rank's rows, so that its collectives (FSDP2
    gathers and gradient reductions, DDP's reduction) line up with the ranks that train step k."""
    row = chunk[:1]
    step = policy_step(
        model,
        settings,
        k,
        batch.trajectories.states[k, row].to(model.device),
        batch.conditioning.select(row),
    )
    (step.velocity.sum() * 0.0).backward()


def full_value(tensor: Tensor) -> Tensor:
    """A whole tensor, also from FSDP2's DTensors (e.g. the clipped gradient norm)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def combine_ranks(
    parallel: Parallel,
    sums: dict[str, float],
    total_pairs: int,
    step_norm_sums: dict[int, float],
    step_counts: dict[int, int],
) -> tuple[dict[str, float], int, dict[int, float], dict[int, int]]:
    """The diagnostics of the whole batch: sums over ranks (the ratio's maximum: the largest).
    The gradient norm and λ are already the same on every rank."""
    same_everywhere = {key: sums[key] for key in ("grad/norm", "kl/coef") if key in sums}
    per_rank = {key: value for key, value in sums.items() if key not in same_everywhere}
    per_rank["pairs"] = total_pairs
    per_rank.update({f"norm/{k}": value for k, value in step_norm_sums.items()})
    per_rank.update({f"count/{k}": value for k, value in step_counts.items()})
    combined = parallel.world.reduce_metrics(per_rank, maxima={"policy/ratio_max"})
    total_pairs = int(combined.pop("pairs"))
    norms = {int(key[5:]): combined.pop(key) for key in list(combined) if key.startswith("norm/")}
    counts = {
        int(key[6:]): int(combined.pop(key)) for key in list(combined) if key.startswith("count/")
    }
    sums = defaultdict(float, {**combined, **same_everywhere})
    return sums, total_pairs, dict(sorted(norms.items())), counts
