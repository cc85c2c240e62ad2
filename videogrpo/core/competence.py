"""Score normalisation to [0, 1] and competence tracking: the curriculum's checkpointed state.

Self-Paced GRPO compares competence (mean normalised score) with thresholds in [0, 1]
(ALGORITHMS §8); both pieces here carry state across iterations, so both save and restore it.

Documented choices where the sources are silent:

- EMA competence starts at the first batch mean (no zero-init bias holding the curriculum at
  stage 0) and is updated with the current batch BEFORE this batch's weights are computed.
- Calibration keeps the running min/max of the first W calls, current batch included, so calls
  inside the window are normalised by everything seen so far; the bounds freeze after W calls. A
  zero span maps scores at or below lo to 0 and above it to 1.
- NaN rewards are ignored by every statistic; a group or component with no finite score has
  competence 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from videogrpo.errors import UserError

DEFAULT_EMA_DECAY = 0.9
DEFAULT_CALIBRATION_STEPS = 10
_MIN_SPAN = 1e-12  # denominator guard for a degenerate lo == hi calibration

NORMALIZATION_MODES = ("fixed", "calibrate", "none")
COMPETENCE_MODES = ("group", "ema")

ComponentValues = float | Sequence[float] | Mapping[str, float]


def per_component(name: str, values: ComponentValues, components: Sequence[str]) -> list[float]:
    """A scalar, a sequence in component order, or a mapping component → value, as K floats."""
    if isinstance(values, Mapping):
        missing = [c for c in components if c not in values]
        unknown = [c for c in values if c not in components]
        if missing or unknown:
            raise UserError(
                f"{name} = {dict(values)!r}: missing {missing}, unknown {unknown}; "
                f"keys must be exactly the components {list(components)}"
            )
        return [float(values[c]) for c in components]
    if isinstance(values, int | float):
        return [float(values)] * len(components)
    out = [float(v) for v in values]
    if len(out) != len(components):
        raise UserError(
            f"{name} = {out} has {len(out)} entries; expected one per component {list(components)}"
        )
    return out


class ScoreNormalizer:
    """Maps each component to [0, 1]: r̂ = clip((r − lo)/(hi − lo), 0, 1) (ALGORITHMS §8).

    ``fixed``: lo/hi from config. ``calibrate``: running min/max over the finite rewards of the
    first ``calibration_steps`` calls (current batch included), frozen afterwards. ``none``: scores
    pass through unchanged (raw composites such as SAGE setting B on VideoAlign scores).
    """

    def __init__(
        self,
        components: Sequence[str],
        mode: str = "fixed",
        lo: ComponentValues = 0.0,
        hi: ComponentValues = 1.0,
        calibration_steps: int = DEFAULT_CALIBRATION_STEPS,
    ) -> None:
        if mode not in NORMALIZATION_MODES:
            raise UserError(f"normalization = {mode!r} is unknown; allowed: {NORMALIZATION_MODES}")
        self.components = tuple(components)
        self.mode = mode
        self.calibration_steps = int(calibration_steps)
        self.calls = 0
        self.lo: list[float | None] = [None] * len(self.components)
        self.hi: list[float | None] = [None] * len(self.components)
        if mode == "fixed":
            self.lo = list(per_component("lo", lo, self.components))
            self.hi = list(per_component("hi", hi, self.components))
            for c, low, high in zip(self.components, self.lo, self.hi, strict=True):
                if not (math.isfinite(low) and math.isfinite(high) and low < high):
                    raise UserError(
                        f"normalization bounds for {c!r}: lo = {low!r}, hi = {high!r}; "
                        "they must be finite with lo < hi"
                    )
        if mode == "calibrate" and self.calibration_steps < 1:
            raise UserError(f"calibration_steps = {calibration_steps!r} must be an integer >= 1")

    @property
    def calibrating(self) -> bool:
        """True while calibration calls still update lo/hi."""
        return self.mode == "calibrate" and self.calls < self.calibration_steps

    def __call__(self, scores: Tensor) -> Tensor:
        """(B, K) raw scores → (B, K) normalised scores; advances the call count."""
        if self.calibrating:
            finite = torch.isfinite(scores)
            inf = torch.full_like(scores, math.inf)
            batch_lo = torch.where(finite, scores, inf).amin(dim=0).tolist()
            batch_hi = torch.where(finite, scores, -inf).amax(dim=0).tolist()
            for j, (low, high) in enumerate(zip(batch_lo, batch_hi, strict=True)):
                if math.isfinite(low):
                    self.lo[j] = low if self.lo[j] is None else min(self.lo[j], low)
                    self.hi[j] = high if self.hi[j] is None else max(self.hi[j], high)
        self.calls += 1
        if self.mode == "none":
            return scores
        # A component never observed finite holds only NaN so far; any bounds keep it NaN.
        lo = scores.new_tensor([0.0 if v is None else v for v in self.lo])
        hi = scores.new_tensor([1.0 if v is None else v for v in self.hi])
        return ((scores - lo) / (hi - lo).clamp_min(_MIN_SPAN)).clamp(0.0, 1.0)

    def state_dict(self) -> dict[str, Any]:
        """Call count and bounds as plain JSON types (None = not observed yet)."""
        return {"mode": self.mode, "calls": self.calls, "lo": list(self.lo), "hi": list(self.hi)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore; fixed bounds come from config, calibrated ones from the checkpoint."""
        if state["mode"] != self.mode:
            raise UserError(
                f"checkpoint normalization = {state['mode']!r} but config has {self.mode!r}"
            )
        self.calls = int(state["calls"])
        if self.mode == "calibrate":
            self.lo = [None if v is None else float(v) for v in state["lo"]]
            self.hi = [None if v is None else float(v) for v in state["hi"]]


class CompetenceTracker:
    """Competence = mean normalised score (ALGORITHMS §8), per group or as a batch EMA.

    ``group``: the group's own mean, (n, K). ``ema``: one value per component shared by all groups,
    c ← d·c + (1 − d)·batch mean, started at the first batch mean and updated before use.
    """

    def __init__(self, mode: str = "group", ema_decay: float = DEFAULT_EMA_DECAY) -> None:
        if mode not in COMPETENCE_MODES:
            raise UserError(f"competence = {mode!r} is unknown; allowed: {COMPETENCE_MODES}")
        if not 0.0 <= ema_decay < 1.0:
            raise UserError(f"ema_decay = {ema_decay!r} is outside [0, 1)")
        self.mode = mode
        self.ema_decay = float(ema_decay)
        self.value: list[float | None] | None = None
        self.updates = 0

    def __call__(self, grouped: Tensor) -> Tensor:
        """(n, G, K) normalised scores → (n, K) competence; EMA mode updates its state first."""
        if self.mode == "group":
            return torch.nan_to_num(torch.nanmean(grouped, dim=1), nan=0.0)
        num_groups, _, num_components = grouped.shape
        batch = torch.nanmean(grouped.reshape(-1, num_components), dim=0).tolist()
        if self.value is None:
            self.value = [None] * num_components
        for j, mean in enumerate(batch):
            if math.isnan(mean):
                continue
            old = self.value[j]
            self.value[j] = (
                mean if old is None else self.ema_decay * old + (1 - self.ema_decay) * mean
            )
        self.updates += 1
        shared = grouped.new_tensor([0.0 if v is None else v for v in self.value])
        return shared.expand(num_groups, num_components)

    def state_dict(self) -> dict[str, Any]:
        """EMA value (None before the first update) and update count, plain JSON types."""
        value = None if self.value is None else list(self.value)
        return {"mode": self.mode, "value": value, "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["mode"] != self.mode:
            raise UserError(
                f"checkpoint competence = {state['mode']!r} but config has {self.mode!r}"
            )
        value = state["value"]
        self.value = None if value is None else [None if v is None else float(v) for v in value]
        self.updates = int(state["updates"])
