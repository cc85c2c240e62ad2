"""Noise-level grids for rectified-flow sampling (ALGORITHMS §1).

A grid runs σ_0 = 1 > σ_1 > … > σ_T = 0; step k goes from σ_k to σ_{k+1}. Grids are float64 so
that the per-step coefficients derived from them (sde.py, equalizer.py) are exact; the step math
itself casts to float32.
"""

import torch
from torch import Tensor

# The model's timestep input is 1000·σ unless the backbone says otherwise (ALGORITHMS §1).
MODEL_TIMESTEP_SCALE = 1000.0


def sigmas(num_steps: int, shift: float = 1.0) -> Tensor:
    """σ grid of length T+1: linspace(1, 0, T+1), then σ ← s·σ / (1 + (s − 1)·σ) (§1).

    A shift s > 1 spends more steps at high noise, where video layout is decided.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift!r}")
    grid = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    shifted = shift * grid / (1.0 + (shift - 1.0) * grid)
    validate_sigmas(shifted)
    return shifted


def model_timesteps(sigma_grid: Tensor) -> Tensor:
    """Model timestep inputs 1000·σ_k for the T step starts (σ_T = 0 is never a step start)."""
    validate_sigmas(sigma_grid)
    return (MODEL_TIMESTEP_SCALE * sigma_grid[:-1]).to(torch.float32)


def validate_sigmas(sigma_grid: Tensor) -> None:
    """Raise ValueError unless the grid is 1-D, finite, strictly decreasing from ≤ 1 to exactly 0.

    Every step rule divides by σ or 1 − σ and assumes Δ = σ − σ' > 0, so a bad grid must fail here,
    naming the offending value, rather than produce NaN log-probs later.
    """
    if not isinstance(sigma_grid, Tensor) or sigma_grid.ndim != 1 or sigma_grid.numel() < 2:
        shape = tuple(sigma_grid.shape) if isinstance(sigma_grid, Tensor) else type(sigma_grid)
        raise ValueError(f"a σ grid must be a 1-D tensor of length T+1 >= 2, got {shape}")
    values = sigma_grid.detach().to(torch.float64).cpu()
    if not torch.isfinite(values).all():
        bad = values[~torch.isfinite(values)][0].item()
        raise ValueError(f"a σ grid must be finite, got σ = {bad}")
    if values[0] > 1.0:
        raise ValueError(f"a σ grid must start at σ_0 <= 1, got σ_0 = {values[0].item()}")
    if values[-1] != 0.0:
        raise ValueError(f"a σ grid must end at σ_T = 0, got σ_T = {values[-1].item()}")
    steps = values[:-1] - values[1:]
    if (steps <= 0).any():
        k = int(torch.nonzero(steps <= 0)[0])
        raise ValueError(
            "a σ grid must be strictly decreasing, got "
            f"σ_{k} = {values[k].item()} followed by σ_{k + 1} = {values[k + 1].item()}"
        )
