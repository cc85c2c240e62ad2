"""Self-paced reward curriculum: per-group component weights and the weighted composite.

Static weights let the policy trade one reward for another and saturate (ALGORITHMS §8). The
self-paced mechanism of Self-Paced GRPO (Li et al., arXiv 2511.19356) moves weight over ordered
components (visual → motion → alignment) as the generator's competence grows. This module turns
named reward components into R̃_i = Σ_j w_j·r̂_ij; the group advantage of R̃ lives in
``core/advantage.py``.

Pipeline of one call (all under ``torch.no_grad`` on detached inputs: weights are statistics of
rewards, never differentiated):

1. normalise each component to [0, 1] (``ScoreNormalizer``, ``core/competence.py``);
2. competence per group and component (``CompetenceTracker``, same file) and group-centred Hoyer
   sparsity;
3. per-group weights from a registered ``WeightingStrategy`` (``static``, ``staged``, ``utility``);
4. composite, weights, stage (argmax of the weights) and scalar diagnostics.

Documented choices where the sources are silent:

- ``static`` weights are normalised to sum 1 by default (``normalize_weights=False`` uses them as
  given, e.g. SAGE setting B 0.5/0.5/1.0 on raw scores: ALGORITHMS §5).
- ``utility`` takes one threshold per component; given the paper's K − 1 thresholds (one per gated
  component), the last component (alignment) is ungated: τ_K = 0, its term is sigmoid(k·m_K).
- Hoyer sparsity of a group whose centred scores all tie (‖r‖₂ ≤ ``TIE_TOLERANCE``) or that has
  fewer than two finite scores is 0 (no sparsity signal, never NaN).
- The composite of a sample with a NaN component is NaN, so the advantage step excludes it
  (ALGORITHMS §5); competence and calibration choices are documented in ``core/competence.py``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from videogrpo.core.competence import (
    DEFAULT_CALIBRATION_STEPS,
    DEFAULT_EMA_DECAY,
    CompetenceTracker,
    ComponentValues,
    ScoreNormalizer,
    per_component,
)
from videogrpo.errors import UserError

DEFAULT_COMPONENTS = ("vq", "mq", "ta")  # the synthetic world; VideoAlign uses ("VQ", "MQ", "TA")
SAGE_SETTING_B = (0.5, 0.5, 1.0)  # SAGE's alignment-focused static weights (ALGORITHMS §5)
PAPER_THRESHOLD = 0.75  # τ_I = τ_II for Wan 1.3B (Self-Paced GRPO)
UNGATED_THRESHOLD = 0.0  # τ_K of the utility form when only K − 1 thresholds are given
DEFAULT_STAGED_TEMPERATURE = 0.05  # paper unstated; gates go 0.12 → 0.88 over τ ± 0.1
DEFAULT_UTILITY_TEMPERATURE = 1.0  # k = T = 1 reproduce the paper text (ALGORITHMS §8)
DEFAULT_SHARPNESS = 1.0  # k of the utility form
DEFAULT_BETA = 0.3  # middle of the paper's β ∈ {0.1, 0.3, 0.5}
TIE_TOLERANCE = 1e-6  # ‖r‖₂ at or below this counts as a tie; above float32 rounding of [0, 1] data


# --------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------


def hoyer_sparsity(x: Tensor, dim: int = -1, eps: float = TIE_TOLERANCE) -> Tensor:
    """Hoyer sparsity H = (√n − ‖x‖₁/‖x‖₂)/(√n − 1) ∈ [0, 1] along ``dim`` (ALGORITHMS §8).

    Non-finite entries are left out (n counts the finite ones). Ties (‖x‖₂ ≤ eps) and n < 2 give 0,
    so saturated groups yield a defined, finite value.
    """
    finite = torch.isfinite(x)
    n = finite.sum(dim).to(x.dtype)
    x0 = torch.where(finite, x, torch.zeros_like(x))
    l1 = x0.abs().sum(dim)
    l2 = x0.square().sum(dim).sqrt()
    defined = (n > 1) & (l2 > eps)
    root = n.sqrt()
    ratio = l1 / torch.where(defined, l2, torch.ones_like(l2))
    h = (root - ratio) / torch.where(defined, root - 1, torch.ones_like(root))
    return torch.where(defined, h.clamp(0.0, 1.0), torch.zeros_like(h))


def group_centred_sparsity(grouped: Tensor) -> Tensor:
    """Hoyer sparsity of group-centred scores, (num_groups, G, K) → (num_groups, K).

    Centring matters: raw [0, 1] scores are all positive and give H ≈ 0 (ALGORITHMS §8).
    """
    centred = grouped - torch.nanmean(grouped, dim=1, keepdim=True)
    return hoyer_sparsity(centred, dim=1)


def staged_weights(competence: Tensor, thresholds: Sequence[float], temperature: float) -> Tensor:
    """Sequential gates of the staged curriculum, (n, K) competences → (n, K) weights.

    σ_j = sigmoid((c_j − τ_j)/T) for the K − 1 gated components; w_j = (Π_{i<j} σ_i)·(1 − σ_j),
    w_K = Π_{i<K} σ_i. For K = 3 this is (1 − σ_I, σ_I(1 − σ_II), σ_Iσ_II); rows sum to 1.
    """
    num_gates = competence.shape[-1] - 1
    tau = competence.new_tensor(list(thresholds))
    gates = torch.sigmoid((competence[..., :num_gates] - tau) / temperature)
    ones = torch.ones_like(competence[..., :1])
    reached = torch.cumprod(torch.cat([ones, gates], dim=-1), dim=-1)
    stays = torch.cat([1 - gates, ones], dim=-1)
    return reached * stays


def utility_weights(
    competence: Tensor,
    sparsity: Tensor,
    thresholds: Sequence[float],
    sharpness: float,
    beta: float,
    temperature: float,
) -> Tensor:
    """Utility form: g_j = sigmoid(k(m_j − τ_j)) + β(H_j − H_{j+1}), H_{K+1} = 0, w = softmax(g/T).

    ``competence`` is m (n, K), ``sparsity`` is H (n, K), ``thresholds`` has K entries.
    """
    tau = competence.new_tensor(list(thresholds))
    next_sparsity = torch.cat([sparsity[..., 1:], torch.zeros_like(sparsity[..., :1])], dim=-1)
    utility = torch.sigmoid(sharpness * (competence - tau)) + beta * (sparsity - next_sparsity)
    return torch.softmax(utility / temperature, dim=-1)


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _check_components(components: Sequence[str]) -> tuple[str, ...]:
    names = tuple(components)
    if not names or len(set(names)) != len(names) or not all(isinstance(c, str) for c in names):
        raise UserError(f"components = {list(names)} must be a non-empty list of distinct names")
    return names


def _check_positive(name: str, value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise UserError(f"{name} = {value!r} is not allowed; it must be a finite number > 0")
    return float(value)


def _check_unit_thresholds(
    thresholds: Sequence[float], allowed_lengths: Sequence[int], meaning: str = ""
) -> tuple[float, ...]:
    values = tuple(float(t) for t in thresholds)
    if len(values) not in allowed_lengths:
        lengths = " or ".join(str(n) for n in allowed_lengths)
        raise UserError(
            f"thresholds = {list(values)} has {len(values)} entries; expected {lengths}{meaning}"
        )
    for i, t in enumerate(values):
        if not 0.0 <= t <= 1.0:
            raise UserError(f"thresholds[{i}] = {t!r} is outside [0, 1] (competence is in [0, 1])")
    return values


# --------------------------------------------------------------------------------------------
# Weighting strategies (registry by name)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StrategyOptions:
    """Plain config values of every strategy; each strategy reads the fields it needs."""

    static_weights: ComponentValues | None = None
    normalize_weights: bool = True
    thresholds: Sequence[float] | None = None
    temperature: float | None = None
    sharpness: float = DEFAULT_SHARPNESS
    beta: float = DEFAULT_BETA


class WeightingStrategy(ABC):
    """Maps per-group competence and sparsity, both (n, K), to per-group weights (n, K)."""

    name: ClassVar[str]
    needs_unit_scores: ClassVar[bool] = True  # compares competence to thresholds in [0, 1]

    @classmethod
    @abstractmethod
    def from_options(cls, components: Sequence[str], options: StrategyOptions) -> WeightingStrategy:
        """Build from plain config values, validating them."""

    @abstractmethod
    def weights(self, competence: Tensor, sparsity: Tensor) -> Tensor:
        """Per-group weights (n, K)."""


STRATEGIES: dict[str, type[WeightingStrategy]] = {}


def register_strategy(cls: type[WeightingStrategy]) -> type[WeightingStrategy]:
    """Class decorator: make a strategy selectable by its ``name`` in config."""
    STRATEGIES[cls.name] = cls
    return cls


@register_strategy
class StaticWeights(WeightingStrategy):
    """Fixed weights (ALGORITHMS §5), the baseline the curriculum is compared with."""

    name = "static"
    needs_unit_scores = False

    def __init__(self, weights: Sequence[float], normalize: bool = True) -> None:
        for i, w in enumerate(weights):
            if not (math.isfinite(w) and w >= 0):
                raise UserError(f"static_weights[{i}] = {w!r} must be a finite number >= 0")
        total = sum(weights)
        if total <= 0:
            raise UserError(f"static_weights = {list(weights)} sum to 0; at least one must be > 0")
        self.values = tuple(w / total for w in weights) if normalize else tuple(weights)

    @classmethod
    def from_options(cls, components: Sequence[str], options: StrategyOptions) -> StaticWeights:
        given = options.static_weights if options.static_weights is not None else 1.0
        return cls(per_component("static_weights", given, components), options.normalize_weights)

    def weights(self, competence: Tensor, sparsity: Tensor) -> Tensor:
        return competence.new_tensor(self.values).expand_as(competence)


@register_strategy
class StagedWeights(WeightingStrategy):
    """The seed paper's sequential stages (Self-Paced GRPO v1; ALGORITHMS §8, staged form)."""

    name = "staged"

    def __init__(
        self, thresholds: Sequence[float], temperature: float = DEFAULT_STAGED_TEMPERATURE
    ) -> None:
        self.thresholds = _check_unit_thresholds(thresholds, [len(thresholds)])
        self.temperature = _check_positive("temperature", temperature)

    @classmethod
    def from_options(cls, components: Sequence[str], options: StrategyOptions) -> StagedWeights:
        num_gates = len(components) - 1
        given = options.thresholds
        if given is None:
            given = (PAPER_THRESHOLD,) * num_gates
        temperature = options.temperature
        return cls(
            _check_unit_thresholds(
                given, [num_gates], f" (a gate for each of {list(components[:-1])})"
            ),
            DEFAULT_STAGED_TEMPERATURE if temperature is None else temperature,
        )

    def weights(self, competence: Tensor, sparsity: Tensor) -> Tensor:
        return staged_weights(competence, self.thresholds, self.temperature)


@register_strategy
class UtilityWeights(WeightingStrategy):
    """Competence plus sparsity utility, softmax over components (paper v2; ALGORITHMS §8)."""

    name = "utility"

    def __init__(
        self,
        thresholds: Sequence[float],
        sharpness: float = DEFAULT_SHARPNESS,
        beta: float = DEFAULT_BETA,
        temperature: float = DEFAULT_UTILITY_TEMPERATURE,
    ) -> None:
        self.thresholds = _check_unit_thresholds(thresholds, [len(thresholds)])
        self.sharpness = _check_positive("sharpness", sharpness)
        if not (math.isfinite(beta) and beta >= 0):
            raise UserError(f"beta = {beta!r} is not allowed; it must be a finite number >= 0")
        self.beta = float(beta)
        self.temperature = _check_positive("temperature", temperature)

    @classmethod
    def from_options(cls, components: Sequence[str], options: StrategyOptions) -> UtilityWeights:
        num = len(components)
        given = options.thresholds
        if given is None:
            given = (PAPER_THRESHOLD,) * (num - 1)
        thresholds = _check_unit_thresholds(
            given,
            [num - 1, num],
            f" (one per component of {list(components)}, or all but the last)",
        )
        if len(thresholds) == num - 1:
            thresholds = (*thresholds, UNGATED_THRESHOLD)
        temperature = options.temperature
        return cls(
            thresholds,
            options.sharpness,
            options.beta,
            DEFAULT_UTILITY_TEMPERATURE if temperature is None else temperature,
        )

    def weights(self, competence: Tensor, sparsity: Tensor) -> Tensor:
        return utility_weights(
            competence, sparsity, self.thresholds, self.sharpness, self.beta, self.temperature
        )


# --------------------------------------------------------------------------------------------
# The curriculum
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurriculumResult:
    """One call's outputs; every tensor is detached. n = number of groups, K = components."""

    composite: Tensor  # (B,) R̃_i = Σ_j w_j·r̂_ij, NaN where a component is NaN
    weights: Tensor  # (n, K)
    normalized: Tensor  # (B, K) r̂
    competence: Tensor  # (n, K)
    sparsity: Tensor  # (n, K) Hoyer of group-centred r̂
    stage: Tensor  # (n,) int64, argmax of the weights (first index on ties)
    diagnostics: dict[str, float]  # scalars for logging, keyed "<metric>/<component>"


class RewardCurriculum:
    """Turns named reward components into the composite the group advantage is computed from."""

    def __init__(
        self,
        strategy: WeightingStrategy,
        components: Sequence[str] = DEFAULT_COMPONENTS,
        normalizer: ScoreNormalizer | None = None,
        competence: CompetenceTracker | None = None,
    ) -> None:
        self.components = _check_components(components)
        self.strategy = strategy
        self.normalizer = normalizer or ScoreNormalizer(self.components)
        self.competence = competence or CompetenceTracker()
        if strategy.needs_unit_scores and self.normalizer.mode == "none":
            raise UserError(
                f"normalization = 'none' is not allowed with strategy {strategy.name!r}: its "
                "thresholds compare to scores in [0, 1]; use 'fixed' (lo/hi) or 'calibrate'"
            )

    def __call__(self, rewards: Mapping[str, Tensor], group_size: int) -> CurriculumResult:
        """Weights and composite for B = num_groups·G samples, groups contiguous."""
        with torch.no_grad():
            scores = self._stack(rewards)
            batch = scores.shape[0]
            if group_size < 1 or batch % group_size != 0:
                raise UserError(
                    f"batch size B = {batch} is not divisible by group_size G = {group_size}; "
                    "B must be num_groups·G with groups contiguous"
                )
            num_groups = batch // group_size
            normalized = self.normalizer(scores)
            grouped = normalized.reshape(num_groups, group_size, len(self.components))
            competence = self.competence(grouped)
            sparsity = group_centred_sparsity(grouped)
            weights = self.strategy.weights(competence, sparsity)
            composite = (grouped * weights[:, None, :]).sum(dim=-1).reshape(batch)
            stage = weights.argmax(dim=-1)
            diagnostics = self._diagnostics(weights, competence, sparsity, stage)
        return CurriculumResult(
            composite, weights, normalized, competence, sparsity, stage, diagnostics
        )

    def _stack(self, rewards: Mapping[str, Tensor]) -> Tensor:
        """Detached (B, K) float scores in component order; extra reward components are ignored."""
        missing = [c for c in self.components if c not in rewards]
        if missing:
            raise UserError(
                f"component order names {missing}, which the reward does not return; "
                f"available components: {sorted(rewards)}"
            )
        columns = [torch.as_tensor(rewards[c]).detach() for c in self.components]
        shapes = {c: tuple(col.shape) for c, col in zip(self.components, columns, strict=True)}
        if len(set(shapes.values())) != 1 or len(columns[0].shape) != 1 or columns[0].numel() == 0:
            raise UserError(
                f"reward components must be non-empty 1-D tensors of one length B; got {shapes}"
            )
        dtype = torch.promote_types(columns[0].dtype, torch.float32)
        return torch.stack([col.to(dtype) for col in columns], dim=-1)

    def _diagnostics(
        self, weights: Tensor, competence: Tensor, sparsity: Tensor, stage: Tensor
    ) -> dict[str, float]:
        """Per-component weight mean/std over groups, competence and sparsity means, mean stage."""
        stats = {
            "weight_mean": weights.mean(dim=0),
            "weight_std": weights.std(dim=0, correction=0),
            "competence": competence.mean(dim=0),
            "sparsity": sparsity.mean(dim=0),
        }
        out: dict[str, float] = {}
        for metric, values in stats.items():
            for c, v in zip(self.components, values.tolist(), strict=True):
                out[f"{metric}/{c}"] = v
        out["stage_mean"] = stage.to(weights.dtype).mean().item()
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume identically, as plain JSON-serialisable types."""
        return {
            "strategy": self.strategy.name,
            "components": list(self.components),
            "normalizer": self.normalizer.state_dict(),
            "competence": self.competence.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from ``state_dict``; refuses a checkpoint of another strategy or order."""
        saved = (state["strategy"], tuple(state["components"]))
        if saved != (self.strategy.name, self.components):
            raise UserError(
                f"checkpoint curriculum is strategy {saved[0]!r} over {list(saved[1])}, but config "
                f"has {self.strategy.name!r} over {list(self.components)}"
            )
        self.normalizer.load_state_dict(state["normalizer"])
        self.competence.load_state_dict(state["competence"])


def build_curriculum(
    strategy: str = "static",
    components: Sequence[str] = DEFAULT_COMPONENTS,
    *,
    static_weights: ComponentValues | None = None,
    normalize_weights: bool = True,
    thresholds: Sequence[float] | None = None,
    temperature: float | None = None,
    sharpness: float = DEFAULT_SHARPNESS,
    beta: float = DEFAULT_BETA,
    competence: str = "group",
    ema_decay: float = DEFAULT_EMA_DECAY,
    normalization: str = "fixed",
    lo: ComponentValues = 0.0,
    hi: ComponentValues = 1.0,
    calibration_steps: int = DEFAULT_CALIBRATION_STEPS,
) -> RewardCurriculum:
    """Factory from plain config values; options a strategy does not use are ignored.

    Defaults: ``static_weights`` None = equal weights; ``thresholds`` None = the paper's 0.75 per
    gated component; ``temperature`` None = 0.05 (staged) or 1.0 (utility).
    """
    if strategy not in STRATEGIES:
        raise UserError(f"strategy = {strategy!r} is unknown; allowed: {sorted(STRATEGIES)}")
    names = _check_components(components)
    options = StrategyOptions(
        static_weights, normalize_weights, thresholds, temperature, sharpness, beta
    )
    return RewardCurriculum(
        STRATEGIES[strategy].from_options(names, options),
        names,
        ScoreNormalizer(names, normalization, lo, hi, calibration_steps),
        CompetenceTracker(competence, ema_decay),
    )
