"""KL terms and KL-coefficient schedules (ALGORITHMS §7)."""

import json

import pytest
import torch

from videogrpo.core import kl


def test_identical_means_give_zero_kl():
    mean = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(kl.gaussian_kl(mean, mean.clone(), 0.01), torch.zeros(3))


def test_gaussian_kl_matches_torch_distributions_with_per_sample_variance():
    generator = torch.Generator().manual_seed(1)
    mean, ref_mean = torch.randn(2, 6, generator=generator), torch.randn(2, 6, generator=generator)
    variance = torch.tensor([0.04, 0.2])
    std = variance.sqrt().unsqueeze(1)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mean, std), torch.distributions.Normal(ref_mean, std)
    ).mean(1)
    torch.testing.assert_close(
        kl.gaussian_kl(mean, ref_mean, variance), expected, rtol=1e-4, atol=0
    )
    # The ε = 1e-6 in the denominator, by hand for one element.
    one = kl.gaussian_kl(torch.tensor([[0.3]]), torch.tensor([[0.1]]), 0.02)
    assert one.item() == pytest.approx(0.04 / (2 * (0.02 + 1e-6)), rel=1e-6)


def test_k1_and_dual_kl():
    log_prob, old_log_prob = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert kl.k1_kl(log_prob, old_log_prob).tolist() == [-0.5, 1.0]  # per sample; mean 0.25
    assert kl.dual_kl(torch.tensor(2.0), torch.tensor(3.0)).item() == pytest.approx(2.3)


def _run(schedule: kl.KLSchedule, kl_values) -> list[float]:
    return [schedule.update(value) for value in kl_values]


def test_simple_schedules():
    constant = kl.make_kl_schedule("constant", value=0.01)
    assert _run(constant, [None] * 3) == [0.01] * 3
    two_stage = kl.make_kl_schedule("two_stage", first=1e-7, second=1e-5, switch_at=2)
    assert [two_stage.value(), *_run(two_stage, [None] * 3)] == [1e-7, 1e-7, 1e-5, 1e-5]
    ramp = kl.make_kl_schedule("linear_ramp", start=0.0, end=1.0, ramp_steps=4)
    assert [ramp.value(), *_run(ramp, [None] * 5)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]


def test_adaptive_controller_ramps_then_tracks_its_target_within_bounds():
    controller = kl.AdaptiveKL(lambda_min=1e-7, lambda_max=1e-5, target=1e-3, ramp_steps=10)
    assert controller.value() == 1e-7
    ramp = _run(controller, [1.0] * 10)  # KL far above target: ignored while ramping
    assert ramp[4] == pytest.approx(1e-7 + 0.5 * (1e-5 - 1e-7))
    assert ramp[-1] == pytest.approx(1e-5)
    high = _run(controller, [1.0] * 3)  # above 1.5·target: ×0.9 per update
    assert high == pytest.approx([0.9e-5, 0.81e-5, 0.729e-5])
    falling = _run(controller, [1.0] * 100)
    assert min(falling) >= 1e-7 and falling[-1] == pytest.approx(1e-7)
    rising = _run(controller, [0.0] * 100)  # below 0.5·target: ×1.1 up to λ_max
    assert max(rising) <= 1e-5 and rising[-1] == pytest.approx(1e-5)
    assert rising[0] < rising[20]


def test_adaptive_controller_holds_inside_the_band_and_averages_its_window():
    controller = kl.AdaptiveKL(lambda_min=1e-7, lambda_max=1e-5, target=1.0, ramp_steps=0, window=2)
    assert controller.value() == 1e-5
    assert _run(controller, [2.0, 2.0]) == pytest.approx([0.9e-5, 0.81e-5])
    # Window means 1.25 and 0.7 lie inside [0.5, 1.5]·target: λ stays.
    assert _run(controller, [0.5, 0.9]) == pytest.approx([0.81e-5, 0.81e-5])
    # Window mean (0.9 + 0) / 2 = 0.45 < 0.5: ×1.1.
    assert controller.update(0.0) == pytest.approx(0.891e-5)


def test_adaptive_state_round_trip_reproduces_the_future_exactly():
    kl_values = torch.rand(60, generator=torch.Generator().manual_seed(2)).mul(3e-3).tolist()
    original = kl.AdaptiveKL(target=1e-3, ramp_steps=20)
    _run(original, kl_values[:30])
    state = json.loads(json.dumps(original.state_dict()))
    restored = kl.make_kl_schedule("adaptive", target=1e-3, ramp_steps=20)
    restored.load_state_dict(state)
    assert restored.value() == original.value()
    assert _run(restored, kl_values[30:]) == _run(original, kl_values[30:])


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: kl.make_kl_schedule("cosine"), "cosine"),
        (lambda: kl.make_kl_schedule("constant", valeu=1.0), "valeu"),
        (lambda: kl.make_kl_schedule("constant", value=-1.0), "-1.0"),
        (lambda: kl.AdaptiveKL(lambda_min=1e-3, lambda_max=1e-5), "0.001"),
        (lambda: kl.AdaptiveKL(target=0.0), "target"),
        (lambda: kl.AdaptiveKL().update(None), "None"),
        (lambda: kl.AdaptiveKL().update(float("nan")), "nan"),
        (lambda: kl.AdaptiveKL().load_state_dict({"name": "constant", "updates": 1}), "constant"),
        (lambda: kl.gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 4), 0.1), r"\(2, 4\)"),
        (lambda: kl.dual_kl(torch.tensor(1.0), torch.tensor(1.0), beta_velocity=-0.1), "-0.1"),
    ],
)
def test_bad_inputs_raise_naming_the_value(call, named):
    with pytest.raises(ValueError, match=named):
        call()
