"""Score a generator on a prompt set with fixed seeds: the numbers every report and README quotes.

Eval is deterministic by default (ODE sampling, seeds derived from one base seed), so two evals of
the same weights give the same numbers and a before/after difference is the training's doing.
With a stochastic rule and several samples per prompt it also measures the within-group spread of
the composite, i.e. how much signal group advantages will have (ALGORITHMS §5). Only each
sample's final latent is kept, and videos are decoded and scored in chunks (training/scoring.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from videogrpo.distributed.parallel import ONE_PROCESS, Parallel
from videogrpo.models.base import VideoGenerator
from videogrpo.rewards.base import RewardModel
from videogrpo.training.rollout import sample_final
from videogrpo.training.scoring import decode_and_score
from videogrpo.training.step import StepSettings

# Samples per model call during eval and sampling; bounds memory, not results (each sample has
# its own noise stream).
DEFAULT_EVAL_BATCH = 64
DEFAULT_DECODE_BATCH = 8


@dataclass
class EvalResult:
    prompts: list[str]
    seeds: list[int]
    rewards: dict[str, Tensor]  # component -> (N,), plus "composite" (equal-weight mean)
    videos: Tensor | None = None  # (K, F, H, W, 3) in [0, 1]: the first K samples, if kept
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
    settings: StepSettings,
    *,
    samples_per_prompt: int = 1,
    seed: int = 0,
    negative_prompt: str = "",
    batch_size: int = DEFAULT_EVAL_BATCH,
    decode_batch_size: int = DEFAULT_DECODE_BATCH,
    keep_videos: int = 0,
    composite_of: Sequence[str] | None = None,
    parallel: Parallel = ONE_PROCESS,
) -> EvalResult:
    """Sample `samples_per_prompt` videos per prompt with `settings` and score them.

    "composite" is the equal-weight mean of the components named in `composite_of` (default:
    all): a fixed yardstick that does not move with the training weights or the curriculum.
    Under torchrun each rank samples a contiguous share and every rank gets the gathered scores.
    """
    world = parallel.world
    repeated = [p for p in prompts for _ in range(samples_per_prompt)]
    seeds = eval_seeds(seed, len(prompts), samples_per_prompt)
    share = world.share(len(repeated))
    sde_mask = torch.full((settings.num_steps,), settings.rule != "ode", dtype=torch.bool)
    sde_mask[-1] = False  # the last step stays deterministic, as in training rollouts
    was_training = model.training
    model.eval()
    with parallel.gathered():
        final = sample_final(
            model,
            settings,
            model.encode(repeated[share], negative_prompt),
            seeds[share],
            sde_mask=sde_mask,
            batch_size=batch_size,
        )
    model.train(was_training)
    scored = decode_and_score(
        model,
        reward,
        final,
        repeated[share],
        decode_batch_size=decode_batch_size,
        keep_videos=max(0, keep_videos - share.start),
        diagnostics=True,
    )
    videos = scored.videos
    if keep_videos and world.size > 1:
        videos = world.gather_optional(videos)
    scored.rewards = {name: world.gather_rows(value) for name, value in scored.rewards.items()}
    scored.diagnostics = {
        name: world.gather_rows(value) for name, value in scored.diagnostics.items()
    }
    scores = dict(scored.rewards)
    averaged = list(scores) if composite_of is None else list(composite_of)
    scores["composite"] = torch.stack([scores[name] for name in averaged]).mean(dim=0)
    result = EvalResult(repeated, seeds, scores, videos)
    result.summary = {name: float(value.mean()) for name, value in scores.items()}
    result.summary.update({f"{name}_std": float(value.std(0)) for name, value in scores.items()})
    result.summary.update({name: float(v.mean()) for name, v in scored.diagnostics.items()})
    if samples_per_prompt >= 2:
        groups = scores["composite"].reshape(len(prompts), samples_per_prompt)
        result.summary["within_group_std"] = float(groups.std(dim=1, unbiased=False).mean())
    return result
