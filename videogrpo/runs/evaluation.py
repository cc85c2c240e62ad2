"""Score a generator on a prompt set with fixed seeds: the numbers every report and README quotes.

Eval is deterministic by default (ODE sampling, seeds derived from one base seed), so two evals of
the same weights give the same numbers and a before/after difference is the training's doing.
With a stochastic rule and several samples per prompt it also measures the within-group spread of
the composite, i.e. how much signal group advantages will have (ALGORITHMS §5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from videogrpo.core import schedule
from videogrpo.models.base import VideoGenerator
from videogrpo.rewards.base import RewardModel
from videogrpo.training.rollout import sample_trajectories

# Rows per model call during eval; bounds memory, not results (each sample has its own noise).
EVAL_CHUNK = 64


@dataclass
class EvalResult:
    prompts: list[str]
    seeds: list[int]
    videos: Tensor  # (N, F, H, W, 3) in [0, 1]
    rewards: dict[str, Tensor]  # component -> (N,), plus "composite" (equal-weight mean)
    coherent_fraction: float | None = None
    within_group_std: float | None = None
    summary: dict[str, float] = field(default_factory=dict)


def eval_seeds(base_seed: int, num_prompts: int, samples_per_prompt: int) -> list[int]:
    """Seed of sample j of prompt i; fixed so that every eval of a run sees the same noise."""
    return [
        base_seed + i * samples_per_prompt + j
        for i in range(num_prompts)
        for j in range(samples_per_prompt)
    ]


@torch.no_grad()
def evaluate(
    model: VideoGenerator,
    reward: RewardModel,
    prompts: list[str],
    *,
    samples_per_prompt: int = 1,
    seed: int = 0,
    num_steps: int = 10,
    shift: float = 3.0,
    guidance_scale: float = 1.0,
    rule: str = "ode",
    eta: float = 0.0,
) -> EvalResult:
    """Sample `samples_per_prompt` videos per prompt and score them.

    "composite" is the equal-weight mean of the reward's components: a fixed yardstick that does
    not move with the training weights or the curriculum.
    """
    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    seeds = eval_seeds(seed, len(prompts), samples_per_prompt)
    sigmas = schedule.sigmas(num_steps, shift)
    sde_mask = torch.full((num_steps,), rule != "ode", dtype=torch.bool)
    if rule != "ode":
        sde_mask[-1] = False  # the last step stays deterministic, as in training rollouts
    chunks = list(torch.arange(len(repeated)).split(EVAL_CHUNK))
    was_training = model.training
    model.eval()
    trajectories = sample_trajectories(
        model,
        repeated,
        seeds,
        sigmas,
        rule=rule,
        eta=eta,
        sde_mask=sde_mask,
        guidance_scale=guidance_scale,
        chunks=chunks,
    )
    model.train(was_training)
    videos = model.decode(trajectories.final).cpu()
    scores = {name: value.float().cpu() for name, value in reward(videos, repeated).items()}
    scores["composite"] = torch.stack(list(scores.values())).mean(dim=0)
    result = EvalResult(repeated, seeds, videos, scores)
    result.summary = {name: float(value.mean()) for name, value in scores.items()}
    result.summary.update({f"{name}_std": float(value.std(0)) for name, value in scores.items()})
    attribute_scores = getattr(reward, "attribute_scores", None)
    if attribute_scores is not None:  # which asked-for attribute the samples miss
        for name, value in attribute_scores(videos, repeated).items():
            result.summary[f"attribute_{name}"] = float(value.mean())
    coherent = getattr(reward, "coherent_object", None)
    if coherent is not None:
        result.coherent_fraction = float(coherent(videos).float().mean())
        result.summary["coherent_fraction"] = result.coherent_fraction
    if samples_per_prompt >= 2:
        groups = scores["composite"].reshape(len(prompts), samples_per_prompt)
        result.within_group_std = float(groups.std(dim=1, unbiased=False).mean())
        result.summary["within_group_std"] = result.within_group_std
    return result
