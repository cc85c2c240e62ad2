"""Sampling loop: denoise groups of samples with any step rule and record what training replays.

This is the only sampler in videogrpo: rollouts, eval and `videogrpo sample` all come through
`_denoise`, and every step is `training.step.policy_step`. The model is called on batches whose
composition the update will reproduce exactly (rows grouped by minibatch and by whether they train
the step), because a CPU or GPU matmul gives slightly different floats for a row in a different
batch, and replaying a stored step must give a ratio of exactly 1 (DESIGN.md invariants).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from videogrpo.models.base import Conditioning, VideoGenerator
from videogrpo.training.step import StepSettings, policy_step


@dataclass
class Trajectories:
    """What a rollout stores per sample n and step k (T steps, N samples)."""

    seeds: list[int]
    states: Tensor  # (T+1, N, *latent) float32: x at σ_0 … σ_T; states[T] is the clean latent
    log_probs: Tensor  # (T, N) float32: log π_old of states[k+1] given states[k]; NaN on ODE steps
    sde_mask: Tensor  # (T,) bool: steps sampled with the stochastic rule
    means: Tensor | None = None  # (T, N, *latent): μ_old per step, when asked for (analytic KL)

    @property
    def final(self) -> Tensor:
        return self.states[-1]


def row_batches(
    chunk: Tensor, trained_at_step: Tensor, settings: StepSettings | None = None
) -> list[Tensor]:
    """The model batches for one step of one chunk: rows that train this step, then the others
    (each split into `settings.micro_batch_size` pieces when set).

    The update recomputes exactly the first batches, so grouping the rollout this way makes its
    floats bitwise equal to the replay's.
    """
    trained = chunk[trained_at_step[chunk]]
    untrained = chunk[~trained_at_step[chunk]]
    split = settings.model_batches if settings is not None else (lambda rows: [rows])
    return [piece for rows in (trained, untrained) if rows.numel() for piece in split(rows)]


def noise_streams(seeds: list[int]) -> list[torch.Generator]:
    """One random stream per sample, so a sample's noise does not depend on its batch neighbours.

    A sample draws its initial noise and then every step's exploration noise from its one stream.
    Two generators seeded alike would repeat the initial noise as the first step's noise, which
    adds √Σ₀ more of x itself at the noisiest step and throws the sample off the noise level.
    """
    return [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]


def draw_noise(model: VideoGenerator, streams: list[torch.Generator]) -> Tensor:
    """The next standard normal latent of each stream, stacked on the model's device."""
    noise = torch.stack([torch.randn(model.latent_shape, generator=g) for g in streams])
    return noise.to(model.device)


def initial_noise(model: VideoGenerator, seeds: list[int]) -> Tensor:
    """Each sample's noise at σ = 1: the first draw of its stream."""
    return draw_noise(model, noise_streams(seeds))


def shared_noise_seeds(seeds: list[int], group_size: int) -> list[int]:
    """Every sample's group's first seed: whose first draw starts the whole group (DanceGRPO's
    shared initial noise). Known per sample, it holds wherever the group's samples run."""
    if len(seeds) % group_size:
        raise ValueError(f"{len(seeds)} samples do not split into groups of {group_size}")
    return [seeds[i - i % group_size] for i in range(len(seeds))]


@torch.no_grad()
def sample_trajectories(
    model: VideoGenerator,
    settings: StepSettings,
    conditioning: Conditioning,
    seeds: list[int],
    *,
    sde_mask: Tensor,
    trained: Tensor | None = None,
    chunks: list[Tensor] | None = None,
    keep_means: bool = False,
    initial_seeds: list[int] | None = None,
    storage_device: torch.device | None = None,
) -> Trajectories:
    """Denoise one sample per (conditioning row, seed) and record every state and log π_old.

    `sde_mask[k]` picks the stochastic rule at step k (ODE elsewhere). `trained` (N, T) bool and
    `chunks` (index tensors covering 0..N-1) describe the coming update's batches; without them
    the whole batch is one chunk and nothing is trained. `initial_seeds` start each sample from
    the first draw of another seed's stream (`shared_noise_seeds`: DanceGRPO's shared noise);
    every sample still explores with its own stream. States are kept on `storage_device`
    (default: the model's), moved to the model one step at a time.
    """
    return _denoise(
        model, settings, conditioning, seeds, sde_mask, trained, chunks,
        record=True, keep_means=keep_means, initial_seeds=initial_seeds,
        storage_device=storage_device,
    )  # fmt: skip


@torch.no_grad()
def sample_final(
    model: VideoGenerator,
    settings: StepSettings,
    conditioning: Conditioning,
    seeds: list[int],
    *,
    sde_mask: Tensor,
    batch_size: int | None = None,
) -> Tensor:
    """Only the clean latents (N, *latent), in model batches of `batch_size`: eval and sampling
    keep one state per sample, not T+1."""
    num_samples = len(seeds)
    chunks = list(torch.arange(num_samples).split(batch_size or num_samples or 1))
    return _denoise(
        model, settings, conditioning, seeds, sde_mask, None, chunks,
        record=False, keep_means=False, initial_seeds=None, storage_device=None,
    ).final  # fmt: skip


def _denoise(
    model: VideoGenerator,
    settings: StepSettings,
    conditioning: Conditioning,
    seeds: list[int],
    sde_mask: Tensor,
    trained: Tensor | None,
    chunks: list[Tensor] | None,
    *,
    record: bool,
    keep_means: bool,
    initial_seeds: list[int] | None,
    storage_device: torch.device | None,
) -> Trajectories:
    num_samples, num_steps = len(seeds), settings.num_steps
    if len(conditioning) != num_samples:
        raise ValueError(
            f"need one seed per sample, got {num_samples} seeds for {len(conditioning)}"
        )
    if sde_mask.shape != (num_steps,):
        raise ValueError(f"sde_mask must have shape ({num_steps},), got {tuple(sde_mask.shape)}")
    if initial_seeds is not None and len(initial_seeds) != num_samples:
        raise ValueError(f"need one initial seed per sample, got {len(initial_seeds)}")
    if trained is None:
        trained = torch.zeros(num_samples, num_steps, dtype=torch.bool)
    if chunks is None:
        chunks = [torch.arange(num_samples)]
    storage = storage_device or model.device
    streams = noise_streams(seeds)

    start = draw_noise(model, streams)  # every stream's first draw, used or not
    if initial_seeds is not None:
        start = initial_noise(model, initial_seeds)
    stored_steps = num_steps + 1 if record else 1
    states = torch.empty(stored_steps, num_samples, *model.latent_shape, device=storage)
    states[0] = start
    log_probs = torch.full((num_steps, num_samples), float("nan"), device=storage)
    means = torch.empty(num_steps, *states.shape[1:], device=storage) if keep_means else None
    for k in range(num_steps):
        stochastic = bool(sde_mask[k]) and settings.rule != "ode"
        step_noise = draw_noise(model, streams) if stochastic else None
        current, following = (k, k + 1) if record else (0, 0)
        next_states = torch.empty_like(states[current])
        for chunk in chunks:
            for rows in row_batches(chunk, trained[:, k], settings):
                step = policy_step(
                    model,
                    settings,
                    k,
                    states[current, rows].to(model.device),
                    conditioning.select(rows),
                    stochastic=stochastic,
                    noise=None if step_noise is None else step_noise[rows],
                )
                next_states[rows] = step.out.prev_sample.to(storage)
                if means is not None:
                    means[k, rows] = step.out.mean.to(storage)
                if step.out.log_prob is not None:
                    log_probs[k, rows] = step.out.log_prob.to(storage)
        states[following] = next_states
    return Trajectories(list(seeds), states, log_probs, sde_mask.clone(), means)
