"""Rewards by `reward.type`: built-ins or any class named `module:Class`, combined into one set.

A reward is built as `Factory(**options)`. Several rewards (`reward.type` plus
`reward.additional`) become one `RewardSet` whose components are the union of theirs, each reward
called in chunks of its own batch size, so the trainer, the curriculum and eval see one reward.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from videogrpo.errors import UserError
from videogrpo.registry import Registry
from videogrpo.rewards.base import RewardModel
from videogrpo.rewards.guarded import GuardedReward, RewardFailure

if TYPE_CHECKING:
    from videogrpo.config.settings import RewardConfig

BUILTIN_REWARDS = {
    "world": "videogrpo.rewards.world:WorldReward",
    "videoalign": "videogrpo.rewards.videoalign:VideoAlign",
    "clipscore": "videogrpo.rewards.clip:ClipScore",
    "pickscore": "videogrpo.rewards.clip:PickScore",
    "python": "videogrpo.rewards.python:PythonReward",
    "http": "videogrpo.rewards.http:HttpReward",
}
REWARDS = Registry("reward.type", BUILTIN_REWARDS, "videogrpo.rewards")
ADDITIONAL_KEYS = ("type", "options", "batch_size")


@dataclass
class Member:
    """One reward of a set and how many videos it scores per call (0: all it is given)."""

    name: str
    reward: RewardModel
    batch_size: int


class RewardSet:
    """Several rewards as one: the union of their components, each scored in its own chunks.

    Every chunk goes through a GuardedReward: a chunk whose call fails scores NaN, the others
    stand, and `take_failures` tells the trainer what failed and why.
    """

    def __init__(self, members: list[Member]) -> None:
        seen: dict[str, str] = {}
        for member in members:
            for component in member.reward.components:
                if component in seen:
                    raise UserError(
                        f"reward: component {component!r} is returned by both {seen[component]!r} "
                        f"and {member.name!r}; give each reward distinct component names"
                    )
                seen[component] = member.name
        self.members = members
        self.guards = [GuardedReward(member.reward) for member in members]
        self.components: tuple[str, ...] = tuple(seen)

    @torch.no_grad()
    def __call__(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        scores: dict[str, torch.Tensor] = {}
        for member, guard in zip(self.members, self.guards, strict=True):
            size = member.batch_size or len(prompts) or 1
            parts = [
                guard(videos[start : start + size], prompts[start : start + size])
                for start in range(0, len(prompts), size)
            ]
            for component in guard.components:
                scores[component] = torch.cat([part[component] for part in parts])
        return scores

    def take_failures(self) -> list[RewardFailure]:
        """The failed calls since the last call, each reason prefixed with its reward's name."""
        return [
            RewardFailure(failure.samples, f"{member.name}: {failure.reason}")
            for member, guard in zip(self.members, self.guards, strict=True)
            for failure in guard.take_failures()
        ]

    def check_prompts(self, prompts: list[str]) -> None:
        for member in self.members:
            check = getattr(member.reward, "check_prompts", None)
            if check is not None:
                check(prompts)

    def diagnostics(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        values: dict[str, torch.Tensor] = {}
        for member in self.members:
            diagnose = getattr(member.reward, "diagnostics", None)
            if diagnose is not None:
                values.update(diagnose(videos, prompts))
        return values


def build_one(type_name: str, options: Mapping[str, Any], key: str) -> RewardModel:
    factory = REWARDS.resolve(type_name)
    try:
        reward = factory(**options)
    except TypeError as error:  # an option the reward does not take
        raise UserError(f"{key}: {type_name!r} rejects its options ({error})") from error
    if not isinstance(reward, RewardModel):
        raise UserError(
            f"{key}: {type_name!r} built a {type(reward).__name__}, which is not a reward "
            "(it needs `components` and `__call__(videos, prompts)`; see videogrpo/rewards/base.py)"
        )
    return reward


def build_reward(config: RewardConfig) -> RewardSet:
    """`reward.type` with `reward.options`, then each of `reward.additional`, as one set."""
    members = [
        Member(config.type, build_one(config.type, config.options, "reward"), config.batch_size)
    ]
    for i, entry in enumerate(config.additional):
        key = f"reward.additional[{i}]"
        unknown = sorted(set(entry) - set(ADDITIONAL_KEYS))
        if "type" not in entry or unknown:
            raise UserError(
                f"{key}: expected {{type, options, batch_size}}, got keys {sorted(entry)}"
            )
        options, batch_size = entry.get("options") or {}, entry.get("batch_size", 0)
        if not isinstance(options, dict) or not isinstance(batch_size, int) or batch_size < 0:
            raise UserError(f"{key}: options must be a mapping and batch_size an integer >= 0")
        members.append(Member(entry["type"], build_one(entry["type"], options, key), batch_size))
    return RewardSet(members)


def effective_weights(
    weights: Mapping[str, float], components: tuple[str, ...]
) -> dict[str, float]:
    """The static weights to use with a reward whose components are `components`.

    Presets weight the world's vq/mq/ta; with another reward that returns none of those names,
    every component of that reward gets weight 1 (and the caller says so), so
    `--set reward.type=...` alone gives a working run. Naming some but not all is an error.
    """
    unknown = [name for name in weights if name not in components]
    if not unknown:
        return dict(weights)
    if len(unknown) == len(weights):
        return dict.fromkeys(components, 1.0)
    raise UserError(
        f"reward.weights names {', '.join(unknown)}, which the reward does not return; "
        f"its components are {', '.join(components)}"
    )
