"""Sampling loop: denoise groups of samples with any step rule and record what training replays.

This is the only sampler in videogrpo: rollouts, eval and `videogrpo sample` all call
`sample_trajectories`, and the step math is `core.sde.step`. The model is called on batches whose
composition the update will reproduce exactly (rows grouped by minibatch and by whether they train
the step), because a CPU or GPU matmul gives slightly different floats for a row in a different
batch, and replaying a stored step must give a ratio of exactly 1 (DESIGN.md invariants).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from videogrpo.core import sde
from videogrpo.models.base import PromptEmbeddings, VideoGenerator


@dataclass
class Trajectories:
    """What a rollout stores per sample n and step k (T steps, N samples)."""

    prompts: list[str]
    seeds: list[int]
    states: Tensor  # (T+1, N, C, F, H, W) float32: x at σ_0 … σ_T; states[T] is the clean latent
    log_probs: Tensor  # (T, N) float32: log π_old of states[k+1] given states[k]; NaN on ODE steps
    sde_mask: Tensor  # (T,) bool: steps sampled with the stochastic rule
    means: Tensor | None = None  # (T, N, C, F, H, W): μ_old per step, when asked for (analytic KL)

    @property
    def final(self) -> Tensor:
        return self.states[-1]


def row_batches(chunk: Tensor, trained_at_step: Tensor) -> list[Tensor]:
    """The model batches for one step of one chunk: rows that train this step, then the others.

    The update recomputes exactly the first batch, so grouping the rollout this way makes its
    floats bitwise equal to the replay's.
    """
    trained = chunk[trained_at_step[chunk]]
    untrained = chunk[~trained_at_step[chunk]]
    return [rows for rows in (trained, untrained) if rows.numel()]


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


@torch.no_grad()
def sample_trajectories(
    model: VideoGenerator,
    prompts: list[str],
    seeds: list[int],
    sigmas: Tensor,
    *,
    rule: str,
    eta: float,
    sde_mask: Tensor,
    guidance_scale: float,
    trained: Tensor | None = None,
    chunks: list[Tensor] | None = None,
    sigma_clamp: float = sde.DEFAULT_SIGMA_CLAMP,
    log_prob_reduction: str = "mean",
    embeddings: PromptEmbeddings | None = None,
    keep_means: bool = False,
    noise_group_size: int = 1,
) -> Trajectories:
    """Denoise one sample per (prompt, seed) from σ_0 = 1 to 0 and record every state.

    `sde_mask[k]` picks the stochastic `rule` at step k (ODE elsewhere). `trained` (N, T) bool and
    `chunks` (index tensors covering 0..N-1) describe the coming update's batches; without them
    the whole batch is one chunk and nothing is trained. `noise_group_size` G > 1 starts each
    run of G consecutive samples from the first one's initial noise (DanceGRPO's shared noise);
    every sample still explores with its own stream.
    """
    num_samples, num_steps = len(prompts), sigmas.numel() - 1
    if len(seeds) != num_samples:
        raise ValueError(f"need one seed per prompt, got {len(seeds)} seeds for {num_samples}")
    if sde_mask.shape != (num_steps,):
        raise ValueError(f"sde_mask must have shape ({num_steps},), got {tuple(sde_mask.shape)}")
    if trained is None:
        trained = torch.zeros(num_samples, num_steps, dtype=torch.bool)
    if chunks is None:
        chunks = [torch.arange(num_samples)]
    embeddings = model.encode_prompts(prompts) if embeddings is None else embeddings
    streams = noise_streams(seeds)

    states = torch.empty(num_steps + 1, num_samples, *model.latent_shape, device=model.device)
    states[0] = draw_noise(model, streams)
    if noise_group_size > 1:
        if num_samples % noise_group_size:
            raise ValueError(
                f"{num_samples} samples do not split into groups of {noise_group_size}"
            )
        states[0] = states[0, ::noise_group_size].repeat_interleave(noise_group_size, dim=0)
    log_probs = torch.full((num_steps, num_samples), float("nan"), device=model.device)
    means = torch.empty_like(states[1:]) if keep_means else None
    for k in range(num_steps):
        step_rule = rule if bool(sde_mask[k]) else "ode"
        sigma, sigma_next = sigmas[k].item(), sigmas[k + 1].item()
        step_noise = None if step_rule == "ode" else draw_noise(model, streams)
        for chunk in chunks:
            for rows in row_batches(chunk, trained[:, k]):
                x = states[k, rows]
                sigma_rows = torch.full((rows.numel(),), sigma, device=model.device)
                velocity = model.velocity(x, sigma_rows, embeddings.select(rows), guidance_scale)
                out = sde.step(
                    step_rule,
                    velocity,
                    x,
                    sigma,
                    sigma_next,
                    eta=eta,
                    noise=None if step_noise is None else step_noise[rows],
                    sigma_clamp=sigma_clamp,
                    log_prob_reduction=log_prob_reduction,
                )
                states[k + 1, rows] = out.prev_sample
                if means is not None:
                    means[k, rows] = out.mean
                if out.log_prob is not None:
                    log_probs[k, rows] = out.log_prob
    return Trajectories(list(prompts), list(seeds), states, log_probs, sde_mask.clone(), means)
