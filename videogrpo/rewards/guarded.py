"""One failed reward call costs its own samples, never the run.

A reward is another program's weights, a user's function or a server on the network, and any of
them can fail on one batch: an out-of-memory on a long clip, a timeout, a bug on an odd prompt, a
NaN. `GuardedReward` turns an exception or a malformed answer into NaN scores for that call's
samples and remembers why. NaN samples get no advantage (core/advantage.py leaves them out of
their group's statistics); the trainer counts them, and only a whole iteration without one valid
score stops the run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from videogrpo.rewards.base import RewardModel


@dataclass(frozen=True)
class RewardFailure:
    """One failed call: how many samples it cost and why, as one line."""

    samples: int
    reason: str


def one_line(error: BaseException) -> str:
    """`Type: message` on one line, for metrics, reports and the final error message."""
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def nan_scores(components: tuple[str, ...], count: int) -> dict[str, Tensor]:
    return {name: torch.full((count,), float("nan")) for name in components}


def checked_scores(scores: object, components: tuple[str, ...], count: int) -> dict[str, Tensor]:
    """The declared components as CPU float32 (count,) tensors; inf becomes NaN.

    Raises ValueError naming what is wrong when the answer is not a mapping with every declared
    component as `count` numbers. Undeclared extra names are dropped: weights and curricula only
    ever see the components the reward declared before the run.
    """
    if not isinstance(scores, dict):
        raise ValueError(f"a reward must return a dict of scores, got {type(scores).__name__}")
    missing = [name for name in components if name not in scores]
    if missing:
        raise ValueError(f"the reward returned no {missing}; it declared {list(components)}")
    checked = {}
    for name in components:
        values = torch.as_tensor(scores[name]).detach().to("cpu", torch.float32).reshape(-1)
        if values.numel() != count:
            raise ValueError(f"component {name!r} has {values.numel()} scores for {count} videos")
        checked[name] = torch.where(values.isfinite(), values, float("nan"))
    return checked


class GuardedReward:
    """A reward whose failures become NaN scores plus a record in `failures`.

    Any Exception is caught on purpose: whatever went wrong inside one call, the samples of that
    call are the only ones that cannot be scored. KeyboardInterrupt still stops the run.
    """

    def __init__(self, reward: RewardModel) -> None:
        self.reward = reward
        self.components: tuple[str, ...] = tuple(reward.components)
        self.failures: list[RewardFailure] = []

    def __call__(self, videos: Tensor, prompts: list[str]) -> dict[str, Tensor]:
        try:
            return checked_scores(self.reward(videos, prompts), self.components, len(prompts))
        except Exception as error:  # noqa: BLE001 - isolating any failure is the point
            self.failures.append(RewardFailure(len(prompts), one_line(error)))
            return nan_scores(self.components, len(prompts))

    def take_failures(self) -> list[RewardFailure]:
        """The failures since the last call (the trainer reads them once per iteration)."""
        failures, self.failures = self.failures, []
        return failures
