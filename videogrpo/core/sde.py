"""One sampling step from σ to σ' for every exploration rule, and its log-probability.

ALGORITHMS §2–4. Every rule is affine in the sample x and the velocity v:

    μ = sample_coef·x + velocity_coef·v,    x' = μ + √Σ·ξ,    ξ ~ N(0, I)

so a rule is one small function that returns (sample_coef, velocity_coef, Σ) for a step; the
velocity coefficient is J = ∂μ/∂v, which the equalizer needs (§4). Adding a rule means adding one
function to ``RULES``. Coefficients are computed in float64 from the σ values and the step math
runs in float32 whatever the model dtype: bf16 log-probs give NaN and replay ratios ≠ 1 (§2, §3).
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# σ̃ = min(σ, 1 − c) keeps the `sage` integral finite at σ = 1 (ALGORITHMS §2, SAGE default).
DEFAULT_SIGMA_CLAMP = 3e-3
LOG_PROB_REDUCTIONS = ("mean", "sum", "cps_unnormalized")
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass(frozen=True)
class StepCoefficients:
    """μ = sample_coef·x + velocity_coef·v and the step variance Σ (float64, shaped like σ)."""

    sample_coef: Tensor
    velocity_coef: Tensor
    variance: Tensor


@dataclass(frozen=True)
class StepOutput:
    """Result of one step; float32 tensors.

    ``std`` broadcasts against the sample: shape (B, 1, …), or (1, 1, …) for one σ.
    ``log_prob`` has shape (B,); it is None when the step is deterministic (some sample has
    Σ = 0) and no ``prev_sample`` was given.
    """

    prev_sample: Tensor
    mean: Tensor
    std: Tensor
    log_prob: Tensor | None


RuleFn = Callable[[Tensor, Tensor, float, float], StepCoefficients]


def _template(sigma: Tensor, sigma_next: Tensor, step_variance: Tensor) -> StepCoefficients:
    """μ = x − Δ·v − (Σ/(2σ))·x̂₁ with x̂₁ = x + (1 − σ)·v: Euler plus the Itô correction (§2)."""
    delta = sigma - sigma_next
    ito = step_variance / (2.0 * sigma)
    return StepCoefficients(1.0 - ito, -delta - ito * (1.0 - sigma), step_variance)


def _ode(sigma: Tensor, sigma_next: Tensor, eta: float, sigma_clamp: float) -> StepCoefficients:
    """Deterministic Euler step x' = x − Δ·v."""
    return _template(sigma, sigma_next, torch.zeros_like(sigma))


def _dance(sigma: Tensor, sigma_next: Tensor, eta: float, sigma_clamp: float) -> StepCoefficients:
    """DanceGRPO: constant diffusion coefficient, Σ = η²·Δ."""
    return _template(sigma, sigma_next, eta**2 * (sigma - sigma_next))


def _flow(sigma: Tensor, sigma_next: Tensor, eta: float, sigma_clamp: float) -> StepCoefficients:
    """FlowGRPO: left-endpoint estimate Σ = η²·σ/(1 − σ̄)·Δ, σ̄ = σ' at σ = 1 (no division by 0)."""
    sigma_bar = torch.where(sigma >= 1.0, sigma_next, sigma)
    return _template(sigma, sigma_next, eta**2 * sigma / (1.0 - sigma_bar) * (sigma - sigma_next))


def _sage(sigma: Tensor, sigma_next: Tensor, eta: float, sigma_clamp: float) -> StepCoefficients:
    """SAGE: exact ∫_{σ'}^{σ} η²·u/(1 − u) du = η²·[ln((1 − σ')/(1 − σ̃)) − Δ], σ̃ = min(σ, 1 − c)."""
    sigma_tilde = sigma.clamp(max=1.0 - sigma_clamp)
    step_variance = eta**2 * (
        torch.log((1.0 - sigma_next) / (1.0 - sigma_tilde)) - (sigma - sigma_next)
    )
    if (step_variance < 0).any():
        k = int(torch.nonzero(step_variance.reshape(-1) < 0)[0])
        raise ValueError(
            f"sage variance is negative for σ' = {sigma_next.reshape(-1)[k].item()}: σ' must be "
            f"below 1 - sigma_clamp = {1.0 - sigma_clamp}; use fewer steps or a smaller sigma_clamp"
        )
    return _template(sigma, sigma_next, step_variance)


def _cps(sigma: Tensor, sigma_next: Tensor, eta: float, sigma_clamp: float) -> StepCoefficients:
    """CPS: s = σ'·sin(ηπ/2), μ = (1 − σ')·x̂₀ + √(σ'² − s²)·x̂₁ keeps the schedule's coefficients."""
    if eta > 1.0:
        raise ValueError(f"cps needs eta in [0, 1], got eta = {eta}")
    noise_std = sigma_next * math.sin(eta * math.pi / 2.0)
    kept_noise = (sigma_next**2 - noise_std**2).clamp(min=0.0).sqrt()
    # x̂₀ = x − σ·v and x̂₁ = x + (1 − σ)·v, collected by x and v.
    sample_coef = (1.0 - sigma_next) + kept_noise
    velocity_coef = -sigma * (1.0 - sigma_next) + kept_noise * (1.0 - sigma)
    return StepCoefficients(sample_coef, velocity_coef, noise_std**2)


RULES: dict[str, RuleFn] = {
    "ode": _ode,
    "dance": _dance,
    "flow": _flow,
    "sage": _sage,
    "cps": _cps,
}


def coefficients(
    rule: str,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    eta: float,
    sigma_clamp: float = DEFAULT_SIGMA_CLAMP,
) -> StepCoefficients:
    """Validated float64 step coefficients, shaped like the (broadcast) σ inputs."""
    if rule not in RULES:
        raise ValueError(f"unknown step rule {rule!r}; allowed: {sorted(RULES)}")
    eta = float(eta)
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got eta = {eta!r}")
    if not 0.0 < sigma_clamp < 1.0:
        raise ValueError(f"sigma_clamp must be in (0, 1), got {sigma_clamp!r}")
    device = next((v.device for v in (sigma, sigma_next) if isinstance(v, Tensor)), None)
    sigma_t, sigma_next_t = torch.broadcast_tensors(
        _as_float64(sigma, device), _as_float64(sigma_next, device)
    )
    if not (torch.isfinite(sigma_t).all() and (sigma_t > 0).all() and (sigma_t <= 1).all()):
        raise ValueError(f"sigma must be in (0, 1], got {sigma_t.tolist()}")
    if not ((sigma_next_t >= 0).all() and (sigma_next_t < sigma_t).all()):
        raise ValueError(
            f"sigma_next must be in [0, sigma), got sigma_next = {sigma_next_t.tolist()} "
            f"for sigma = {sigma_t.tolist()}"
        )
    return RULES[rule](sigma_t, sigma_next_t, eta, sigma_clamp)


def variance(
    rule: str,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    eta: float,
    sigma_clamp: float = DEFAULT_SIGMA_CLAMP,
) -> Tensor:
    """Σ of one step (float64): the variance of x' given x (§2)."""
    return coefficients(rule, sigma, sigma_next, eta, sigma_clamp).variance


def std(
    rule: str,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    eta: float,
    sigma_clamp: float = DEFAULT_SIGMA_CLAMP,
) -> Tensor:
    """√Σ of one step (float64), the quantity tabulated in ALGORITHMS §2."""
    return variance(rule, sigma, sigma_next, eta, sigma_clamp).sqrt()


def mean_jacobian(
    rule: str,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    eta: float,
    sigma_clamp: float = DEFAULT_SIGMA_CLAMP,
) -> Tensor:
    """J = ∂μ/∂v (float64), the per-element scale of ∂log π/∂v = (x' − μ)·J/Σ (§4)."""
    return coefficients(rule, sigma, sigma_next, eta, sigma_clamp).velocity_coef


def stochastic_steps(
    rule: str, sigma_grid: Tensor, eta: float, sigma_clamp: float = DEFAULT_SIGMA_CLAMP
) -> Tensor:
    """Bool mask (T,) of the steps of a σ grid with Σ > 0: the only steps that can be trained."""
    return variance(rule, sigma_grid[:-1], sigma_grid[1:], eta, sigma_clamp) > 0


def step(
    rule: str,
    velocity: Tensor,
    sample: Tensor,
    sigma: float | Tensor,
    sigma_next: float | Tensor,
    *,
    eta: float,
    noise: Tensor | None = None,
    prev_sample: Tensor | None = None,
    sigma_clamp: float = DEFAULT_SIGMA_CLAMP,
    log_prob_reduction: str = "mean",
) -> StepOutput:
    """Take one step from σ to σ' (σ per sample if a (B,) tensor) and score the transition.

    Without ``prev_sample`` the next state is sampled as μ + √Σ·noise (noise drawn if None),
    returned detached, and scored as a fixed action. With ``prev_sample`` (the stored rollout
    latent) that sample is scored and returned unchanged: this is the replay used for ratios,
    and it raises ValueError on a zero-variance step, which has no log-probability (§3).
    ``log_prob_reduction``: "mean" over elements (the references' default), "sum" (the true
    joint density), or "cps_unnormalized" = −mean((x' − μ)²) (the CPS reference, §3).
    """
    if log_prob_reduction not in LOG_PROB_REDUCTIONS:
        allowed = list(LOG_PROB_REDUCTIONS)
        raise ValueError(f"unknown log_prob_reduction {log_prob_reduction!r}; allowed: {allowed}")
    if sample.ndim < 1 or velocity.shape != sample.shape:
        raise ValueError(
            "velocity and sample must have the same shape with a leading batch dimension, got "
            f"velocity {tuple(velocity.shape)} and sample {tuple(sample.shape)}"
        )
    coeffs = coefficients(
        rule, _to_device(sigma, sample), _to_device(sigma_next, sample), eta, sigma_clamp
    )
    sample_coef, velocity_coef, step_variance = (
        _per_sample(c, sample) for c in (coeffs.sample_coef, coeffs.velocity_coef, coeffs.variance)
    )
    mean = sample_coef * sample.float() + velocity_coef * velocity.float()
    step_std = step_variance.sqrt()
    deterministic = bool((coeffs.variance == 0).any())

    if prev_sample is not None:
        if deterministic:
            raise ValueError(
                f"step rule {rule!r} with eta = {eta} from sigma = {_as_float64(sigma).tolist()} "
                f"to sigma_next = {_as_float64(sigma_next).tolist()} is deterministic "
                "(variance 0): it has no log-probability and cannot be trained"
            )
        _check_same_shape("prev_sample", prev_sample, sample)
        log_prob = _log_prob(prev_sample.float(), mean, step_variance, log_prob_reduction)
        return StepOutput(prev_sample, mean, step_std, log_prob)

    if noise is None:
        noise = torch.randn(sample.shape, device=sample.device, dtype=torch.float32)
    _check_same_shape("noise", noise, sample)
    next_sample = (mean + step_std * noise.float()).detach()
    log_prob = (
        None if deterministic else _log_prob(next_sample, mean, step_variance, log_prob_reduction)
    )
    return StepOutput(next_sample, mean, step_std, log_prob)


def _log_prob(next_sample: Tensor, mean: Tensor, step_variance: Tensor, reduction: str) -> Tensor:
    """log N(x'; μ, Σ·I) per sample, reduced over elements as requested (§3)."""
    squared_error = (next_sample - mean) ** 2
    if reduction == "cps_unnormalized":
        per_element = -squared_error
    else:
        per_element = -squared_error / (2.0 * step_variance) - 0.5 * step_variance.log()
        per_element = per_element - _HALF_LOG_2PI
    per_sample = per_element.reshape(per_element.shape[0], -1)
    return per_sample.sum(dim=1) if reduction == "sum" else per_sample.mean(dim=1)


def _as_float64(value: float | Tensor, device: torch.device | None = None) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to(device=device, dtype=torch.float64)
    return torch.tensor(float(value), dtype=torch.float64, device=device)


def _to_device(value: float | Tensor, like: Tensor) -> float | Tensor:
    return value.to(like.device) if isinstance(value, Tensor) else value


def _per_sample(coef: Tensor, sample: Tensor) -> Tensor:
    """Float32 view of a () / (1,) / (B,) coefficient that broadcasts over a (B, …) sample."""
    batch = sample.shape[0]
    if coef.numel() not in (1, batch):
        raise ValueError(
            f"sigma must be a scalar or hold one value per sample (batch {batch}), "
            f"got {coef.numel()} values"
        )
    trailing = (1,) * (sample.ndim - 1)
    return coef.to(device=sample.device, dtype=torch.float32).reshape(-1, *trailing)


def _check_same_shape(name: str, value: Tensor, sample: Tensor) -> None:
    if value.shape != sample.shape:
        raise ValueError(
            f"{name} must have the sample's shape {tuple(sample.shape)}, got {tuple(value.shape)}"
        )
