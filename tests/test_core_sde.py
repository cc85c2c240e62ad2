"""Step rules, variances and log-probabilities (ALGORITHMS §2–4)."""

import math

import numpy as np
import pytest
import torch

from videogrpo.core import schedule, sde

GRID = schedule.sigmas(20, shift=5.0)
ETA = 0.5
STOCHASTIC_RULES = ("dance", "flow", "sage", "cps")
TEMPLATE_RULES = ("dance", "flow", "sage")

# ALGORITHMS §2 reference table: std √Σ at step k of the T = 20, shift 5, η = 0.5 schedule.
REFERENCE_STD = {
    "dance": {0: 0.051, 1: 0.053, 2: 0.056, 10: 0.086, 19: 0.228},
    "flow": {0: 0.500, 1: 0.519, 2: 0.373, 10: 0.193, 19: 0.117},
    "cps": {0: 0.700, 1: 0.692, 2: 0.683, 10: 0.568, 19: 0.000},
    "sage": {0: 0.556, 1: 0.426, 2: 0.331, 10: 0.183, 19: 0.080},
    "ode": {0: 0.0, 1: 0.0, 2: 0.0, 10: 0.0, 19: 0.0},
}


def _latents(seed: int, shape=(3, 2, 4, 5)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)


@pytest.mark.parametrize("rule", sorted(REFERENCE_STD))
def test_reference_std_table(rule):
    stds = sde.std(rule, GRID[:-1], GRID[1:], ETA)
    for k, expected in REFERENCE_STD[rule].items():
        assert stds[k].item() == pytest.approx(expected, abs=1e-3), f"{rule} step {k}"


def test_sage_variance_is_the_integral_of_eta2_u_over_1_minus_u():
    nodes, weights = np.polynomial.legendre.leggauss(64)
    sigma, sigma_next = GRID[:-1].numpy(), GRID[1:].numpy()
    sage = sde.variance("sage", GRID[:-1], GRID[1:], ETA).numpy()
    flow = sde.variance("flow", GRID[:-1], GRID[1:], ETA).numpy()
    checked = 0
    for k in range(20):
        if sigma[k] >= 1 - sde.DEFAULT_SIGMA_CLAMP:
            continue
        half, middle = (sigma[k] - sigma_next[k]) / 2, (sigma[k] + sigma_next[k]) / 2
        u = middle + half * nodes
        integral = ETA**2 * half * np.sum(weights * u / (1 - u))
        assert abs(sage[k] - integral) / integral < 1e-6, f"step {k}"
        assert flow[k] >= sage[k], f"flow must overestimate the integral at step {k}"
        checked += 1
    assert checked == 19


@pytest.mark.parametrize("rule", TEMPLATE_RULES)
def test_eta_zero_is_the_ode_step(rule):
    velocity, sample = _latents(0)
    for k in (0, 7, 19):
        out = sde.step(rule, velocity, sample, GRID[k], GRID[k + 1], eta=0.0)
        ode = sde.step("ode", velocity, sample, GRID[k], GRID[k + 1], eta=ETA)
        assert torch.equal(out.prev_sample, ode.prev_sample)
        assert out.std.item() == 0.0 and out.log_prob is None
        torch.testing.assert_close(ode.mean, sample - (GRID[k] - GRID[k + 1]).item() * velocity)


def test_cps_eta_zero_is_ddim_transport():
    velocity, sample = _latents(1)
    sigma, sigma_next = GRID[5].item(), GRID[6].item()
    out = sde.step("cps", velocity, sample, sigma, sigma_next, eta=0.0)
    x0_hat, x1_hat = sample - sigma * velocity, sample + (1 - sigma) * velocity
    torch.testing.assert_close(out.mean, (1 - sigma_next) * x0_hat + sigma_next * x1_hat)
    torch.testing.assert_close(out.prev_sample, out.mean)


@pytest.mark.parametrize("rule", STOCHASTIC_RULES)
def test_mean_follows_the_written_formula(rule):
    velocity, sample = _latents(2)
    k = 3
    sigma, sigma_next = GRID[k].item(), GRID[k + 1].item()
    out = sde.step(rule, velocity, sample, sigma, sigma_next, eta=ETA)
    x1_hat = sample + (1 - sigma) * velocity
    if rule == "cps":
        s = sigma_next * math.sin(ETA * math.pi / 2)
        x0_hat = sample - sigma * velocity
        expected = (1 - sigma_next) * x0_hat + math.sqrt(sigma_next**2 - s**2) * x1_hat
    else:
        variance = sde.variance(rule, sigma, sigma_next, ETA).item()
        expected = sample - (sigma - sigma_next) * velocity - variance / (2 * sigma) * x1_hat
    torch.testing.assert_close(out.mean, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", STOCHASTIC_RULES)
def test_monte_carlo_mean_and_std_of_samples(rule):
    torch.manual_seed(3)
    draws = 4000
    velocity, sample = _latents(3, shape=(1, 6))
    out = sde.step(
        rule, velocity.expand(draws, -1), sample.expand(draws, -1), GRID[8], GRID[9], eta=ETA
    )
    std = out.std.item()
    # Sample mean within 4 standard errors, sample std within 5 % (≈ 4.5 standard errors).
    assert (out.prev_sample.mean(0) - out.mean[0]).abs().max() < 4 * std / math.sqrt(draws)
    assert out.prev_sample.std(0).div(std).sub(1).abs().max() < 0.05


def test_log_prob_equals_independent_gaussian_density_with_per_sample_sigma():
    velocity, sample = _latents(4)
    sigma, sigma_next = GRID[[0, 6, 18]], GRID[[1, 7, 19]]
    next_sample = torch.randn(sample.shape, generator=torch.Generator().manual_seed(5))
    for rule in STOCHASTIC_RULES:
        mean_out = sde.step(
            rule, velocity, sample, sigma, sigma_next, eta=ETA, prev_sample=next_sample
        )
        sum_out = sde.step(
            rule,
            velocity,
            sample,
            sigma,
            sigma_next,
            eta=ETA,
            prev_sample=next_sample,
            log_prob_reduction="sum",
        )
        std = sde.std(rule, sigma, sigma_next, ETA).reshape(-1, 1, 1, 1)
        density = torch.distributions.Normal(mean_out.mean.double(), std).log_prob(
            next_sample.double()
        )
        torch.testing.assert_close(
            mean_out.log_prob, density.mean((1, 2, 3)).float(), rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            sum_out.log_prob, density.sum((1, 2, 3)).float(), rtol=1e-5, atol=1e-3
        )
        assert mean_out.log_prob.shape == (3,) and mean_out.log_prob.dtype == torch.float32
        assert mean_out.prev_sample is next_sample


def test_cps_unnormalized_log_prob_is_minus_mean_squared_error():
    velocity, sample = _latents(6)
    next_sample = torch.randn_like(sample)
    out = sde.step(
        "cps",
        velocity,
        sample,
        GRID[4],
        GRID[5],
        eta=0.8,
        prev_sample=next_sample,
        log_prob_reduction="cps_unnormalized",
    )
    torch.testing.assert_close(out.log_prob, -((next_sample - out.mean) ** 2).mean((1, 2, 3)))


def test_per_sample_sigma_equals_scalar_steps_row_by_row():
    velocity, sample = _latents(7)
    noise = torch.randn_like(sample)
    sigma, sigma_next = GRID[[2, 9, 15]], GRID[[3, 10, 16]]
    batched = sde.step("sage", velocity, sample, sigma, sigma_next, eta=ETA, noise=noise)
    for i in range(3):
        single = sde.step(
            "sage",
            velocity[i : i + 1],
            sample[i : i + 1],
            sigma[i].item(),
            sigma_next[i].item(),
            eta=ETA,
            noise=noise[i : i + 1],
        )
        torch.testing.assert_close(batched.prev_sample[i : i + 1], single.prev_sample)
        torch.testing.assert_close(batched.log_prob[i : i + 1], single.log_prob)


@pytest.mark.parametrize("rule", STOCHASTIC_RULES)
def test_autograd_log_prob_gradient_matches_analytic(rule):
    velocity, sample = _latents(8)
    k = 11
    rollout = sde.step(rule, velocity, sample, GRID[k], GRID[k + 1], eta=ETA)
    velocity.requires_grad_(True)
    replay = sde.step(
        rule, velocity, sample, GRID[k], GRID[k + 1], eta=ETA, prev_sample=rollout.prev_sample
    )
    replay.log_prob.sum().backward()
    jacobian = sde.mean_jacobian(rule, GRID[k], GRID[k + 1], ETA).item()
    variance = sde.variance(rule, GRID[k], GRID[k + 1], ETA).item()
    elements_per_sample = sample[0].numel()  # the mean reduction divides by this
    analytic = (
        (rollout.prev_sample - replay.mean.detach()) * jacobian / variance / elements_per_sample
    )
    torch.testing.assert_close(velocity.grad, analytic, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("rule", STOCHASTIC_RULES)
def test_mean_jacobian_is_d_mean_d_velocity(rule):
    velocity, sample = _latents(9)
    velocity.requires_grad_(True)
    out = sde.step(rule, velocity, sample, GRID[4], GRID[5], eta=ETA)
    out.mean.sum().backward()
    jacobian = sde.mean_jacobian(rule, GRID[4], GRID[5], ETA).item()
    torch.testing.assert_close(velocity.grad, torch.full_like(velocity, jacobian))


def test_bf16_inputs_give_float32_log_probs_and_replay_ratio_exactly_one():
    velocity, sample = (t.to(torch.bfloat16) for t in _latents(10))
    rollout = sde.step("sage", velocity, sample, GRID[1], GRID[2], eta=ETA)
    stored = rollout.prev_sample.clone()
    assert stored.dtype == torch.float32 and rollout.log_prob.dtype == torch.float32
    replays = [
        sde.step("sage", velocity, sample, GRID[1], GRID[2], eta=ETA, prev_sample=stored).log_prob
        for _ in range(2)
    ]
    for log_prob in (rollout.log_prob, *replays):
        assert log_prob.dtype == torch.float32 and torch.isfinite(log_prob).all()
    assert torch.equal(torch.exp(replays[0] - rollout.log_prob), torch.ones(3))
    assert torch.equal(torch.exp(replays[1] - replays[0]), torch.ones(3))


def test_zero_variance_steps_have_no_log_prob_and_refuse_replay():
    velocity, sample = _latents(11)
    ode = sde.step("ode", velocity, sample, GRID[3], GRID[4], eta=ETA)
    assert ode.log_prob is None and torch.equal(ode.prev_sample, ode.mean)
    last_cps = sde.step("cps", velocity, sample, GRID[19], GRID[20], eta=ETA)
    assert last_cps.log_prob is None and last_cps.std.item() == 0.0
    for rule, k in (("ode", 3), ("cps", 19), ("sage", 3)):
        eta = 0.0 if rule == "sage" else ETA
        with pytest.raises(ValueError, match="deterministic"):
            sde.step(rule, velocity, sample, GRID[k], GRID[k + 1], eta=eta, prev_sample=sample)


def test_flow_uses_next_sigma_at_sigma_one():
    # Σ = η²·σ/(1 − σ̄)·Δ with σ̄ = σ' at σ = 1: here η²·1/(1 − 0.9)·0.1 = η².
    assert sde.variance("flow", 1.0, 0.9, ETA).item() == pytest.approx(ETA**2)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"rule": "euler"}, "euler"),
        ({"rule": "sdee"}, "allowed: \\['cps', 'dance', 'flow', 'ode', 'sage'\\]"),
        ({"rule": "cps", "eta": 1.5}, "1.5"),
        ({"eta": -0.1}, "-0.1"),
        ({"sigma": 0.4, "sigma_next": 0.5}, "0.5"),
        ({"sigma": 1.2}, "1.2"),
        ({"sigma": 0.0, "sigma_next": 0.0}, "sigma must be in"),
        ({"log_prob_reduction": "max"}, "max"),
        ({"sigma": 1.0, "sigma_next": 0.999}, "0.999"),
        ({"sigma": torch.tensor([0.5, 0.4]), "sigma_next": 0.1}, "2 values"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_value(kwargs, named):
    velocity, sample = _latents(12)
    call = {"rule": "sage", "sigma": 0.5, "sigma_next": 0.4, "eta": ETA, **kwargs}
    with pytest.raises(ValueError, match=named):
        sde.step(
            call.pop("rule"), velocity, sample, call.pop("sigma"), call.pop("sigma_next"), **call
        )


def test_mismatched_shapes_raise():
    velocity, sample = _latents(13)
    with pytest.raises(ValueError, match="same shape"):
        sde.step("sage", velocity[:2], sample, 0.5, 0.4, eta=ETA)
    with pytest.raises(ValueError, match="noise"):
        sde.step("sage", velocity, sample, 0.5, 0.4, eta=ETA, noise=sample[:1])
