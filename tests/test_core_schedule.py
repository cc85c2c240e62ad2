"""σ grids (ALGORITHMS §1)."""

import pytest
import torch

from videogrpo.core import schedule


def test_unshifted_grid_is_linspace_from_one_to_zero():
    torch.testing.assert_close(
        schedule.sigmas(4, shift=1.0),
        torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64),
    )


def test_shift_matches_formula_at_a_hand_point():
    # σ = 0.5 with s = 3: 1.5 / (1 + 2·0.5) = 0.75.
    grid = schedule.sigmas(2, shift=3.0)
    assert grid.tolist() == [1.0, 0.75, 0.0]


def test_shifted_grid_of_reference_table():
    grid = schedule.sigmas(20, shift=5.0)
    assert grid.shape == (21,)
    expected = {0: 1.0, 1: 0.9896, 2: 0.9783, 10: 0.8333, 19: 0.2083}
    for k, sigma in expected.items():
        assert grid[k].item() == pytest.approx(sigma, abs=1e-4)
    assert grid[-1].item() == 0.0


def test_model_timesteps_are_1000_sigma_of_step_starts():
    grid = schedule.sigmas(5, shift=3.0)
    timesteps = schedule.model_timesteps(grid)
    assert timesteps.dtype == torch.float32
    torch.testing.assert_close(timesteps, (1000 * grid[:-1]).float())


@pytest.mark.parametrize(
    ("grid", "named"),
    [
        ([1.0, 0.5, 0.5, 0.0], "0.5"),
        ([1.0, 0.3, 0.6, 0.0], "0.6"),
        ([1.2, 0.5, 0.0], "1.2"),
        ([1.0, 0.5, 0.1], "0.1"),
        ([1.0, float("nan"), 0.0], "nan"),
    ],
)
def test_bad_grids_raise_naming_the_value(grid, named):
    with pytest.raises(ValueError, match=named):
        schedule.validate_sigmas(torch.tensor(grid, dtype=torch.float64))


@pytest.mark.parametrize(("num_steps", "shift"), [(0, 1.0), (2.5, 1.0), (4, 0.0), (4, -1.0)])
def test_bad_grid_settings_raise(num_steps, shift):
    with pytest.raises(ValueError, match=str(num_steps if shift > 0 else shift)):
        schedule.sigmas(num_steps, shift)
