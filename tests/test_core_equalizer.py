"""Gradient Norm Equalizer (ALGORITHMS §4)."""

import pytest
import torch

from videogrpo.core import equalizer, schedule, sde

ETA = 0.5


@pytest.mark.parametrize("rule", ["dance", "flow", "sage", "cps"])
def test_factors_have_median_one_and_equalise_the_scales(rule):
    grid = schedule.sigmas(20, shift=5.0)
    factors = equalizer.factors(rule, grid, ETA)
    scales = equalizer.gradient_scales(rule, grid, ETA)
    trained = torch.isfinite(scales)
    assert factors.shape == (20,) and factors.dtype == torch.float32
    # S_k·N_k is the lower-middle median of N on every step with Σ > 0.
    median = scales[trained].sort().values[(int(trained.sum()) - 1) // 2]
    torch.testing.assert_close(
        (factors.double() * scales)[trained], median.expand(int(trained.sum()))
    )
    assert (factors[trained] == 1.0).sum() == 1


def test_odd_count_median_of_factors_is_exactly_one():
    factors = equalizer.factors("sage", schedule.sigmas(21, shift=5.0), ETA)
    assert factors.median().item() == 1.0


def test_zero_variance_steps_get_factor_one():
    grid = schedule.sigmas(20, shift=5.0)
    assert equalizer.factors("cps", grid, ETA)[-1].item() == 1.0
    assert torch.equal(equalizer.factors("ode", grid, ETA), torch.ones(20))
    assert torch.equal(equalizer.factors("sage", grid, 0.0), torch.ones(20))


def test_factors_flatten_autograd_gradient_norms_across_steps():
    grid = schedule.sigmas(20, shift=5.0)
    factors = equalizer.factors("sage", grid, ETA)
    generator = torch.Generator().manual_seed(0)
    raw_norms, equalised_norms = [], []
    for k in range(20):
        sample = torch.randn(1, 4096, generator=generator)
        velocity = torch.randn(1, 4096, generator=generator)
        noise = torch.randn(1, 4096, generator=generator)
        rollout = sde.step("sage", velocity, sample, grid[k], grid[k + 1], eta=ETA, noise=noise)
        velocity.requires_grad_(True)
        replay = sde.step(
            "sage", velocity, sample, grid[k], grid[k + 1], eta=ETA, prev_sample=rollout.prev_sample
        )
        (gradient,) = torch.autograd.grad(replay.log_prob.sum(), velocity)
        raw_norms.append(gradient.norm().item())
        equalised_norms.append(factors[k].item() * gradient.norm().item())
    assert max(raw_norms) / min(raw_norms) >= 50
    assert max(equalised_norms) / min(equalised_norms) <= 3


def test_bad_rule_and_grid_raise():
    with pytest.raises(ValueError, match="heun"):
        equalizer.factors("heun", schedule.sigmas(4), ETA)
    with pytest.raises(ValueError, match="0.5"):
        equalizer.factors("sage", torch.tensor([1.0, 0.5, 0.5, 0.0]), ETA)
