"""SAGE Gradient Norm Equalizer: per-step factors that flatten policy-gradient size (ALGORITHMS §4).

For a Gaussian step, ∂log π/∂v = (x' − μ)·J/Σ with x' − μ ~ √Σ·ξ, so its size per element is
N_k = |J_k|/√Σ_k. N spans about two orders of magnitude over a schedule and low-noise steps would
dominate the update; S_k = median_j(N_j)/N_k multiplies each step's clipped policy loss so that
every trained step contributes a gradient of similar size.
"""

import torch
from torch import Tensor

from videogrpo.core import sde
from videogrpo.core.schedule import validate_sigmas


def gradient_scales(
    rule: str, sigma_grid: Tensor, eta: float, sigma_clamp: float = sde.DEFAULT_SIGMA_CLAMP
) -> Tensor:
    """N_k = |J_k|/√Σ_k per step (float64, length T); +inf where Σ_k = 0 (no gradient defined)."""
    validate_sigmas(sigma_grid)
    coeffs = sde.coefficients(rule, sigma_grid[:-1], sigma_grid[1:], eta, sigma_clamp)
    return coeffs.velocity_coef.abs() / coeffs.variance.sqrt()


def factors(
    rule: str, sigma_grid: Tensor, eta: float, sigma_clamp: float = sde.DEFAULT_SIGMA_CLAMP
) -> Tensor:
    """S_k = median_j(N_j)/N_k per step (float32, length T), median over steps with Σ > 0.

    The median is the lower middle value for an even count, as in the SAGE reference. Steps with
    Σ = 0 or a non-finite / non-positive N_k get S_k = 1: they are not trained, and a factor must
    never turn a loss into NaN. S_k depends only on the schedule and η, so compute it once.
    """
    scales = gradient_scales(rule, sigma_grid, eta, sigma_clamp)
    valid = torch.isfinite(scales) & (scales > 0)
    result = torch.ones_like(scales)
    if valid.any():
        # torch.median returns the lower of the two middle values for an even count.
        reference_scale = scales[valid].median()
        result[valid] = reference_scale / scales[valid]
    return result.to(torch.float32)
