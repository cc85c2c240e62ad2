"""Step selection and SDE masks (ALGORITHMS §6, §10)."""

import pytest
import torch

from videogrpo.core import schedule, sde
from videogrpo.core.selection import make_selection


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_trained_steps_use_the_sde(selection):
    assert selection.sde_mask[selection.trained_steps].all()


@pytest.mark.parametrize("num_steps", [16, 20])
def test_random_fraction_never_trains_the_last_step(num_steps):
    selection = make_selection("random_fraction").select(num_steps, 8, generator=_generator())
    assert selection.trained_steps.shape == (8, round(0.6 * num_steps))
    assert (selection.trained_steps < num_steps - 1).all()
    for row in selection.trained_steps:
        assert row.unique().numel() == row.numel()
    assert not all(torch.equal(row, selection.trained_steps[0]) for row in selection.trained_steps)
    assert selection.sde_mask.all()
    _assert_trained_steps_use_the_sde(selection)


def test_window_moves_by_stride_every_n_iterations_and_is_the_sde_mask():
    strategy = make_selection("window", size=4, stride=2, shift_every=25)
    # T = 20 leaves starts 0, 2, …, 16 for a window of 4; the 9th move wraps back to 0.
    expected_starts = {0: 0, 24: 0, 25: 2, 49: 2, 50: 4, 200: 16, 225: 0}
    for iteration, start in expected_starts.items():
        selection = strategy.select(20, 3, iteration=iteration)
        window = torch.arange(start, start + 4)
        assert torch.equal(selection.trained_steps, window.expand(3, -1))
        assert torch.equal(selection.sde_mask.nonzero().squeeze(1), window)


def test_all_covers_every_sde_step_once_in_per_sample_random_order():
    grid = schedule.sigmas(10, shift=3.0)
    stochastic = sde.stochastic_steps("cps", grid, 0.8)  # last cps step has Σ = 0
    selection = make_selection("all").select(10, 6, generator=_generator(), stochastic=stochastic)
    assert torch.equal(selection.sde_mask, stochastic)
    for row in selection.trained_steps:
        assert torch.equal(row.sort().values, torch.arange(9))
    orders = {tuple(row.tolist()) for row in selection.trained_steps}
    assert len(orders) > 1
    _assert_trained_steps_use_the_sde(selection)


def test_first_k_trains_the_first_floor_099_t_steps_in_order():
    for num_steps, k in ((20, 19), (10, 9), (100, 99)):
        selection = make_selection("first_k").select(num_steps, 2)
        assert torch.equal(selection.trained_steps, torch.arange(k).expand(2, -1))
        _assert_trained_steps_use_the_sde(selection)


@pytest.mark.parametrize("name", ["all", "first_k", "random_fraction", "window"])
def test_deterministic_last_step_keeps_the_last_step_ode(name):
    settings = {"size": 19} if name == "window" else {}
    strategy = make_selection(name, deterministic_last_step=True, **settings)
    selection = strategy.select(20, 4, generator=_generator())
    assert not selection.sde_mask[-1] and selection.sde_mask[:-1].all()
    assert (selection.trained_steps < 19).all()


@pytest.mark.parametrize("name", ["all", "random_fraction"])
def test_same_seed_same_selection(name):
    strategy = make_selection(name)
    first = strategy.select(20, 4, generator=_generator(7)).trained_steps
    again = strategy.select(20, 4, generator=_generator(7)).trained_steps
    other = strategy.select(20, 4, generator=_generator(8)).trained_steps
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: make_selection("every_other"), "every_other"),
        (lambda: make_selection("random_fraction", fraction=1.5), "1.5"),
        (lambda: make_selection("window", size=0), "size"),
        (lambda: make_selection("window", width=4), "width"),
        (lambda: make_selection("window", size=30).select(20, 1), "30"),
        (lambda: make_selection("random_fraction", fraction=1.0).select(20, 1), "20 of 20"),
        (
            lambda: make_selection("all").select(4, 1, stochastic=torch.zeros(4, dtype=torch.bool)),
            "no SDE",
        ),
        (
            lambda: make_selection("all").select(4, 1, stochastic=torch.ones(3, dtype=torch.bool)),
            "(4,)",
        ),
        (lambda: make_selection("all").select(4, 1, iteration=-1), "-1"),
    ],
)
def test_bad_inputs_raise_naming_the_value(call, named):
    with pytest.raises(ValueError, match=named):
        call()
