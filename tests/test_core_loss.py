"""Clipped policy loss (ALGORITHMS §6)."""

import math

import pytest
import torch

from videogrpo.core.loss import clipped_policy_loss

# Five hand cases at clip range 0.1 (ℓ = max(−A·ρ, −A·clip(ρ, 0.9, 1.1))):
# inside the trust region; A > 0 clipped above; A < 0 clipped below; A < 0 above (unclipped,
# pessimistic); A > 0 below (unclipped).
RATIOS = [1.05, 1.2, 0.8, 1.2, 0.8]
ADVANTAGES = [2.0, 1.0, -1.0, -2.0, 1.0]
PER_ELEMENT = [-2.1, -1.1, 0.9, 2.4, -0.8]
CLIP = 0.1


def _inputs():
    log_prob = torch.tensor([math.log(r) for r in RATIOS], requires_grad=True)
    return log_prob, torch.zeros(5), torch.tensor(ADVANTAGES)


def test_loss_equals_hand_value_with_clipping_on_both_signs():
    log_prob, old_log_prob, advantages = _inputs()
    loss, stats = clipped_policy_loss(log_prob, old_log_prob, advantages, CLIP)
    assert loss.item() == pytest.approx(sum(PER_ELEMENT) / 5, abs=1e-6)
    loss.backward()
    # Clipped elements (1, 2) carry no gradient; the others have ∂ℓ/∂log π = −A·ρ / N.
    expected = [-a * r / 5 for a, r in zip(ADVANTAGES, RATIOS, strict=True)]
    expected[1] = expected[2] = 0.0
    torch.testing.assert_close(log_prob.grad, torch.tensor(expected))
    assert stats.clip_frac.item() == pytest.approx(0.8)
    assert stats.clip_frac_pos.item() == pytest.approx(0.2)
    assert stats.clip_frac_neg.item() == pytest.approx(0.2)
    assert stats.ratio_max.item() == pytest.approx(1.2)
    assert stats.ratio_min.item() == pytest.approx(0.8)
    assert stats.ratio_mean.item() == pytest.approx(sum(RATIOS) / 5)
    approx_kl = sum(r - 1 - math.log(r) for r in RATIOS) / 5
    assert stats.approx_kl.item() == pytest.approx(approx_kl, abs=1e-6)
    assert not stats.approx_kl.requires_grad


def test_weights_multiply_each_element():
    log_prob, old_log_prob, advantages = _inputs()
    weights = torch.tensor([1.0, 2.0, 1.0, 0.5, 1.0])
    loss, _ = clipped_policy_loss(log_prob, old_log_prob, advantages, CLIP, weights=weights)
    expected = sum(w * ell for w, ell in zip(weights.tolist(), PER_ELEMENT, strict=True)) / 5
    assert loss.item() == pytest.approx(expected, abs=1e-6)


def test_ratio_one_gives_minus_mean_advantage_and_no_clipping():
    advantages = torch.tensor([0.5, -1.5, 2.0])
    loss, stats = clipped_policy_loss(
        torch.full((3,), -7.0), torch.full((3,), -7.0), advantages, 1e-4
    )
    assert loss.item() == pytest.approx(-advantages.mean().item())
    assert stats.clip_frac.item() == 0.0 and stats.approx_kl.item() == 0.0


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"clip_range": 0.0}, "clip_range"),
        ({"advantages": torch.zeros(4)}, r"\(4,\)"),
        ({"weights": torch.ones(2)}, "weights"),
    ],
)
def test_bad_inputs_raise(kwargs, named):
    log_prob, old_log_prob, advantages = _inputs()
    call = {"advantages": advantages, "clip_range": CLIP, **kwargs}
    with pytest.raises(ValueError, match=named):
        clipped_policy_loss(log_prob, old_log_prob, **call)
