"""Which steps use the SDE at rollout and which steps are trained (ALGORITHMS §6, §10).

A strategy returns, for one iteration, a (T,) mask of the rollout steps that use the stochastic
rule (ODE elsewhere) and, per sample, the steps to train in training order, shape (B, K). Every
trained step is an SDE step, because a deterministic step has no log-probability (§3).

``stochastic`` (T,) marks the steps whose rule has Σ > 0 (``sde.stochastic_steps``); only those
may use the SDE. ``deterministic_last_step`` keeps the last step ODE at rollout: SDE noise at the
last step costs visual quality (it is added straight to the output) and that step teaches little.
Randomness comes only from the given ``torch.Generator`` so a selection is reproducible.
"""

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

# FlowGRPO trains the first ⌊0.99·T⌋ steps; DanceGRPO a random 60 % per sample (§6, §10).
FLOWGRPO_FRACTION = 0.99
DANCEGRPO_FRACTION = 0.6
# MixGRPO: an SDE window of 4 steps sliding by 1 every 25 iterations (§10).
MIXGRPO_WINDOW_SIZE = 4
MIXGRPO_STRIDE = 1
MIXGRPO_SHIFT_EVERY = 25


@dataclass(frozen=True)
class StepSelection:
    """sde_mask (T,) bool: rollout uses the SDE rule there. trained_steps (B, K) int64."""

    sde_mask: Tensor
    trained_steps: Tensor


@dataclass(frozen=True)
class StepSelector(ABC):
    """Base of the strategies: validates the inputs once, then ``_choose`` decides."""

    name: ClassVar[str] = "base"
    deterministic_last_step: bool = False

    def select(
        self,
        num_steps: int,
        batch_size: int,
        *,
        iteration: int = 0,
        generator: torch.Generator | None = None,
        stochastic: Tensor | None = None,
    ) -> StepSelection:
        """The SDE mask and trained steps for ``iteration`` (the rollout count, from 0)."""
        _check_positive_int("num_steps", num_steps)
        _check_positive_int("batch_size", batch_size)
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
            raise ValueError(f"iteration must be an integer >= 0, got {iteration!r}")
        if stochastic is None:
            candidates = torch.ones(num_steps, dtype=torch.bool)
        elif stochastic.shape == (num_steps,) and stochastic.dtype == torch.bool:
            candidates = stochastic.detach().cpu().clone()
        else:
            raise ValueError(
                f"stochastic must be a bool tensor of shape ({num_steps},), got "
                f"{stochastic.dtype} {tuple(stochastic.shape)}"
            )
        if self.deterministic_last_step:
            candidates[-1] = False
        return self._choose(candidates, batch_size, iteration, generator)

    @abstractmethod
    def _choose(
        self, candidates: Tensor, batch_size: int, iteration: int, generator: torch.Generator | None
    ) -> StepSelection:
        """``candidates`` (T,): steps allowed to use the SDE (Σ > 0, last kept ODE if asked)."""


@dataclass(frozen=True)
class AllSteps(StepSelector):
    """Train every SDE step, in a random order per sample (SAGE, DDPO)."""

    name: ClassVar[str] = "all"

    def _choose(
        self, candidates: Tensor, batch_size: int, iteration: int, generator: torch.Generator | None
    ) -> StepSelection:
        pool = _nonempty(candidates.nonzero().squeeze(1), self.name)
        return StepSelection(candidates, _random_orders(pool, batch_size, generator))


@dataclass(frozen=True)
class FirstFraction(StepSelector):
    """Train the first ⌊fraction·T⌋ steps in order, SDE everywhere (FlowGRPO)."""

    name: ClassVar[str] = "first_k"
    fraction: float = FLOWGRPO_FRACTION

    def __post_init__(self) -> None:
        _check_fraction(self.fraction)

    def _choose(
        self, candidates: Tensor, batch_size: int, iteration: int, generator: torch.Generator | None
    ) -> StepSelection:
        first_k = math.floor(self.fraction * candidates.numel())
        pool = _nonempty(candidates[:first_k].nonzero().squeeze(1), self.name)
        return StepSelection(candidates, pool.expand(batch_size, -1).clone())


@dataclass(frozen=True)
class RandomFraction(StepSelector):
    """Train round(fraction·T) random steps per sample, never the last; SDE everywhere (Dance)."""

    name: ClassVar[str] = "random_fraction"
    fraction: float = DANCEGRPO_FRACTION

    def __post_init__(self) -> None:
        _check_fraction(self.fraction)

    def _choose(
        self, candidates: Tensor, batch_size: int, iteration: int, generator: torch.Generator | None
    ) -> StepSelection:
        pool = candidates[:-1].nonzero().squeeze(1)
        num_trained = round(self.fraction * candidates.numel())
        if not 1 <= num_trained <= pool.numel():
            raise ValueError(
                f"random_fraction with fraction = {self.fraction} asks for {num_trained} of "
                f"{candidates.numel()} steps, but only {pool.numel()} SDE steps other than the "
                "last are available"
            )
        orders = _random_orders(pool, batch_size, generator)
        return StepSelection(candidates, orders[:, :num_trained])


@dataclass(frozen=True)
class SlidingWindow(StepSelector):
    """SDE (and training) only in a window of ``size`` steps, ODE elsewhere (MixGRPO).

    The window starts at the first SDE step and moves by ``stride`` steps every ``shift_every``
    iterations; once it cannot move further it wraps around to the first SDE step.
    """

    name: ClassVar[str] = "window"
    size: int = MIXGRPO_WINDOW_SIZE
    stride: int = MIXGRPO_STRIDE
    shift_every: int = MIXGRPO_SHIFT_EVERY

    def __post_init__(self) -> None:
        for setting in ("size", "stride", "shift_every"):
            _check_positive_int(setting, getattr(self, setting))

    def _choose(
        self, candidates: Tensor, batch_size: int, iteration: int, generator: torch.Generator | None
    ) -> StepSelection:
        pool = candidates.nonzero().squeeze(1)
        num_positions = pool.numel() - self.size + 1
        if num_positions < 1:
            raise ValueError(
                f"window size {self.size} is larger than the {pool.numel()} SDE steps available"
            )
        num_moves = (num_positions - 1) // self.stride + 1  # distinct starts before wrapping
        start = self.stride * ((iteration // self.shift_every) % num_moves)
        window = pool[start : start + self.size]
        sde_mask = torch.zeros_like(candidates)
        sde_mask[window] = True
        return StepSelection(sde_mask, window.expand(batch_size, -1).clone())


SELECTIONS: dict[str, type[StepSelector]] = {
    strategy.name: strategy for strategy in (AllSteps, FirstFraction, RandomFraction, SlidingWindow)
}


def make_selection(name: str, **settings: Any) -> StepSelector:
    """Build a step-selection strategy by name: ``make_selection("window", size=4)``."""
    if name not in SELECTIONS:
        raise ValueError(f"unknown step selection {name!r}; allowed: {sorted(SELECTIONS)}")
    try:
        return SELECTIONS[name](**settings)
    except TypeError as error:
        raise ValueError(
            f"bad settings {sorted(settings)} for step selection {name!r}: {error}"
        ) from None


def _random_orders(pool: Tensor, batch_size: int, generator: torch.Generator | None) -> Tensor:
    """(B, n): an independent random permutation of ``pool`` for each sample."""
    keys = torch.rand(batch_size, pool.numel(), generator=generator)
    return pool[keys.argsort(dim=1)]


def _nonempty(pool: Tensor, strategy: str) -> Tensor:
    if pool.numel() == 0:
        raise ValueError(f"step selection {strategy!r} found no SDE step to train (all Σ = 0?)")
    return pool


def _check_fraction(fraction: float) -> None:
    if not (isinstance(fraction, int | float) and 0 < fraction <= 1):
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
