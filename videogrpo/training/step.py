"""One policy step — velocity, then the step rule — shared by rollout, replay and update.

Everything that decides a transition's numbers (rule, η, σ grid, clamp, log-prob reduction,
guidance) lives in one `StepSettings`, built once per run (or per eval), so the three callers
cannot drift apart: the update replays exactly what the rollout sampled.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from videogrpo.core import sde
from videogrpo.models.base import Conditioning, VideoGenerator


@dataclass(frozen=True)
class StepSettings:
    """How a trajectory is stepped from σ_0 = 1 to σ_T = 0 (ALGORITHMS §1–3)."""

    rule: str
    eta: float
    sigmas: Tensor  # (T+1,) float64, σ_0 = 1 … σ_T = 0
    guidance_scale: float = 1.0
    sigma_clamp: float = sde.DEFAULT_SIGMA_CLAMP
    log_prob_reduction: str = "mean"
    # Samples per model call (0: all rows of a step at once). Batch composition decides the
    # floats, so rollout, replay and update split rows the same way through `model_batches`.
    micro_batch_size: int = 0

    @property
    def num_steps(self) -> int:
        return self.sigmas.numel() - 1

    @cached_property
    def variances(self) -> Tensor:
        """(T,) float64 Σ_k of the rule at every step."""
        return sde.variance(
            self.rule, self.sigmas[:-1], self.sigmas[1:], self.eta, self.sigma_clamp
        )

    @cached_property
    def stochastic(self) -> Tensor:
        """(T,) bool: the steps with Σ > 0, the only ones that can be trained."""
        return self.variances > 0

    def sigma_pair(self, k: int) -> tuple[float, float]:
        return self.sigmas[k].item(), self.sigmas[k + 1].item()

    def model_batches(self, rows: Tensor) -> list[Tensor]:
        """`rows` as the model is called on them: at once, or `micro_batch_size` at a time."""
        if self.micro_batch_size and rows.numel() > self.micro_batch_size:
            return list(rows.split(self.micro_batch_size))
        return [rows]


@dataclass
class PolicyStep:
    velocity: Tensor  # what the model predicted (its gradient is the per-step norm diagnostic)
    out: sde.StepOutput


def policy_step(
    model: VideoGenerator,
    settings: StepSettings,
    k: int,
    latents: Tensor,
    conditioning: Conditioning,
    *,
    stochastic: bool = True,
    noise: Tensor | None = None,
    prev_sample: Tensor | None = None,
) -> PolicyStep:
    """Step k of `latents` under `model`: sample the next state (with `noise`) or, given the
    stored `prev_sample`, score it (replay). `stochastic=False` takes the ODE step instead."""
    sigma, sigma_next = settings.sigma_pair(k)
    sigmas = torch.full((latents.shape[0],), sigma, device=latents.device)
    velocity = model.velocity(latents, sigmas, conditioning, settings.guidance_scale)
    out = sde.step(
        settings.rule if stochastic else "ode",
        velocity,
        latents,
        sigma,
        sigma_next,
        eta=settings.eta,
        noise=noise,
        prev_sample=prev_sample,
        sigma_clamp=settings.sigma_clamp,
        log_prob_reduction=settings.log_prob_reduction,
    )
    return PolicyStep(velocity, out)
