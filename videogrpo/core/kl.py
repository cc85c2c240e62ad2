"""KL terms and KL-coefficient schedules: SAGE's dual trust region (ALGORITHMS §7).

Two Gaussian steps with the same variance Σ differ only in their means, so their KL is
mean((μ_θ − μ_ref)²)/(2·(Σ + ε)). SAGE combines a positional term (to a moving anchor) and a
velocity term (to the previous policy). The coefficient λ_t of the total KL follows a schedule;
every schedule has the same small interface so the trainer and the checkpoint treat them alike.
"""

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

# ε in the Gaussian KL denominator (§7): keeps a tiny Σ from exploding the KL.
KL_VARIANCE_EPS = 1e-6
# SAGE's dual trust region weights: positional (moving anchor) and velocity (step-wise) KL (§7).
DEFAULT_BETA_POSITION = 1.0
DEFAULT_BETA_VELOCITY = 0.1
# The official SAGE adaptive controller (§7): ramp from λ_min to λ_max over 100 updates, then
# compare the mean of the last 10 KL values to a target band [0.5, 1.5]·target and scale λ.
ADAPTIVE_LAMBDA_MIN = 1e-7
ADAPTIVE_LAMBDA_MAX = 1e-5
ADAPTIVE_TARGET = 1e-5  # the official code reuses λ_max as the target; here it is its own setting
ADAPTIVE_RAMP_STEPS = 100
ADAPTIVE_WINDOW = 10
ADAPTIVE_HIGH = 1.5
ADAPTIVE_LOW = 0.5
ADAPTIVE_DECREASE = 0.9
ADAPTIVE_INCREASE = 1.1


def gaussian_kl(
    mean: Tensor, ref_mean: Tensor, variance: float | Tensor, eps: float = KL_VARIANCE_EPS
) -> Tensor:
    """Per-sample KL (B,) float32 between N(μ, Σ) and N(μ_ref, Σ), mean over elements.

    With μ_ref from the anchor this is KL_pos; with μ_old stored at rollout it is the analytic,
    lower-variance form of the step-wise KL_vel. ``variance`` is a scalar or one value per sample.
    """
    if mean.shape != ref_mean.shape or mean.ndim < 1:
        raise ValueError(
            "mean and ref_mean must share one shape with a leading batch dimension, got "
            f"{tuple(mean.shape)} and {tuple(ref_mean.shape)}"
        )
    step_variance = torch.as_tensor(variance, dtype=torch.float32, device=mean.device).reshape(-1)
    if step_variance.numel() not in (1, mean.shape[0]) or (step_variance < 0).any():
        raise ValueError(
            f"variance must be >= 0 and a scalar or one value per sample (batch {mean.shape[0]}), "
            f"got {step_variance.tolist()}"
        )
    step_variance = step_variance.reshape(-1, *(1,) * (mean.ndim - 1))
    squared = (mean.float() - ref_mean.float()) ** 2 / (2.0 * (step_variance + eps))
    return squared.reshape(mean.shape[0], -1).mean(dim=1)


def flowgrpo_variance(sigma_grid: Tensor, eta: float) -> Tensor:
    """FlowGRPO's KL denominator per step (T,): std_dev_t² = η²·σ/(1 − σ̄), σ̄ = σ_1 at σ = 1.

    flow_grpo (train_sd3.py) and SAGE's flow_grpo branch divide the squared mean difference by
    this, not by the step variance Σ = std_dev_t²·Δσ, so their β values only transfer with it.
    """
    sigma = sigma_grid[:-1].double()
    sigma_bar = torch.where(sigma >= 1.0, sigma_grid[1].double(), sigma)
    return eta**2 * sigma / (1.0 - sigma_bar)


def k1_kl(log_prob: Tensor, old_log_prob: Tensor) -> Tensor:
    """Step-wise KL_vel by the k1 estimator, log π_old − log π_θ per sample (B,); its mean over
    rollout samples estimates KL(π_old ‖ π_θ) (§7)."""
    if log_prob.shape != old_log_prob.shape:
        raise ValueError(
            f"log_prob {tuple(log_prob.shape)} and old_log_prob {tuple(old_log_prob.shape)} "
            "must have the same shape"
        )
    return old_log_prob.float().detach() - log_prob.float()


def dual_kl(
    kl_position: Tensor,
    kl_velocity: Tensor,
    beta_position: float = DEFAULT_BETA_POSITION,
    beta_velocity: float = DEFAULT_BETA_VELOCITY,
) -> Tensor:
    """SAGE's dual trust region: β_pos·KL_pos(moving anchor) + β_vel·KL_vel (§7)."""
    if beta_position < 0 or beta_velocity < 0:
        raise ValueError(
            f"KL weights must be >= 0, got beta_position = {beta_position}, "
            f"beta_velocity = {beta_velocity}"
        )
    return beta_position * kl_position + beta_velocity * kl_velocity


class KLSchedule(ABC):
    """λ_t for the total loss mean(ℓ) + λ_t·KL.

    ``value()`` is λ for the coming update; ``update(kl)`` records one optimizer update (and its
    measured KL, used only by the adaptive controller) and returns the new λ. ``state_dict()``
    is JSON-serialisable so a resumed run continues with exactly the same λ sequence.
    """

    name = "base"

    def __init__(self) -> None:
        self._updates = 0

    @abstractmethod
    def value(self) -> float:
        """λ for the coming optimizer update."""

    def update(self, kl_value: float | None = None) -> float:
        self._updates += 1
        return self.value()

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "updates": self._updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("name") != self.name:
            raise ValueError(
                f"KL schedule state is for {state.get('name')!r}, not for {self.name!r}"
            )
        self._updates = int(state["updates"])


class ConstantKL(KLSchedule):
    """λ_t = value."""

    name = "constant"

    def __init__(self, value: float) -> None:
        super().__init__()
        self._value = _non_negative("value", value)

    def value(self) -> float:
        return self._value


class TwoStageKL(KLSchedule):
    """λ_t = first before ``switch_at`` updates, then second (the SAGE paper: 1e-7, then 1e-5)."""

    name = "two_stage"

    def __init__(self, first: float, second: float, switch_at: int) -> None:
        super().__init__()
        self._first = _non_negative("first", first)
        self._second = _non_negative("second", second)
        self._switch_at = _non_negative_int("switch_at", switch_at)

    def value(self) -> float:
        return self._first if self._updates < self._switch_at else self._second


class LinearRampKL(KLSchedule):
    """λ_t goes linearly from ``start`` to ``end`` over ``ramp_steps`` updates, then stays."""

    name = "linear_ramp"

    def __init__(self, start: float, end: float, ramp_steps: int) -> None:
        super().__init__()
        self._start = _non_negative("start", start)
        self._end = _non_negative("end", end)
        self._ramp_steps = _non_negative_int("ramp_steps", ramp_steps)

    def value(self) -> float:
        return _ramp(self._start, self._end, self._updates, self._ramp_steps)


class AdaptiveKL(KLSchedule):
    """The official SAGE controller, with the KL target separate from the λ bounds (§7).

    λ ramps linearly from λ_min to λ_max over ``ramp_steps`` updates. After that, each update
    compares the mean of the last ``window`` KL values with the target: λ × 0.9 when above
    1.5·target, λ × 1.1 when below 0.5·target, then clamps λ to [λ_min, λ_max].
    """

    name = "adaptive"

    def __init__(
        self,
        lambda_min: float = ADAPTIVE_LAMBDA_MIN,
        lambda_max: float = ADAPTIVE_LAMBDA_MAX,
        target: float = ADAPTIVE_TARGET,
        ramp_steps: int = ADAPTIVE_RAMP_STEPS,
        window: int = ADAPTIVE_WINDOW,
    ) -> None:
        super().__init__()
        self._lambda_min = _non_negative("lambda_min", lambda_min)
        self._lambda_max = _non_negative("lambda_max", lambda_max)
        if self._lambda_min > self._lambda_max:
            raise ValueError(f"lambda_min = {lambda_min} must be <= lambda_max = {lambda_max}")
        if not (math.isfinite(target) and target > 0):
            raise ValueError(f"target must be a finite number > 0, got {target!r}")
        self._target = float(target)
        self._ramp_steps = _non_negative_int("ramp_steps", ramp_steps)
        self._window = _non_negative_int("window", window)
        if self._window < 1:
            raise ValueError(f"window must be >= 1, got {window!r}")
        self._lambda = _ramp(self._lambda_min, self._lambda_max, 0, self._ramp_steps)
        self._history: list[float] = []

    def value(self) -> float:
        return self._lambda

    def update(self, kl_value: float | None = None) -> float:
        if kl_value is None or not math.isfinite(float(kl_value)):
            raise ValueError(
                f"the adaptive KL controller needs a finite KL value, got {kl_value!r}"
            )
        self._history = [*self._history, float(kl_value)][-self._window :]
        self._updates += 1
        if self._updates <= self._ramp_steps:
            self._lambda = _ramp(
                self._lambda_min, self._lambda_max, self._updates, self._ramp_steps
            )
            return self._lambda
        recent_kl = sum(self._history) / len(self._history)
        if recent_kl > ADAPTIVE_HIGH * self._target:
            self._lambda *= ADAPTIVE_DECREASE
        elif recent_kl < ADAPTIVE_LOW * self._target:
            self._lambda *= ADAPTIVE_INCREASE
        self._lambda = min(max(self._lambda, self._lambda_min), self._lambda_max)
        return self._lambda

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "lambda": self._lambda, "history": list(self._history)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._lambda = float(state["lambda"])
        self._history = [float(kl) for kl in state["history"]][-self._window :]


KL_SCHEDULES: dict[str, type[KLSchedule]] = {
    schedule.name: schedule for schedule in (ConstantKL, TwoStageKL, LinearRampKL, AdaptiveKL)
}


def make_kl_schedule(name: str, **settings: Any) -> KLSchedule:
    """Build a KL-coefficient schedule by name: ``make_kl_schedule("constant", value=0.01)``."""
    if name not in KL_SCHEDULES:
        raise ValueError(f"unknown KL schedule {name!r}; allowed: {sorted(KL_SCHEDULES)}")
    try:
        return KL_SCHEDULES[name](**settings)
    except TypeError as error:
        raise ValueError(
            f"bad settings {sorted(settings)} for KL schedule {name!r}: {error}"
        ) from None


def _ramp(start: float, end: float, updates: int, ramp_steps: int) -> float:
    if ramp_steps == 0:
        return end
    return start + (end - start) * min(updates / ramp_steps, 1.0)


def _non_negative(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def _non_negative_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value
