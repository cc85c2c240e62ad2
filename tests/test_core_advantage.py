"""Group advantages and composite rewards (ALGORITHMS §5)."""

import math

import pytest
import torch

from videogrpo.core import advantage


def test_group_advantage_hand_values():
    # Group (1, 2, 3, 4): mean 2.5, population std √1.25.
    result = advantage.group_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0]), group_size=4)
    expected = torch.tensor([-1.5, -0.5, 0.5, 1.5]) / math.sqrt(1.25)
    torch.testing.assert_close(result, expected)
    assert result.dtype == torch.float32


def test_ties_give_zero():
    rewards = torch.tensor([0.3, 0.3, 0.3, 0.3, 2.0, 2.0, 2.0, 2.0])
    result = advantage.group_advantages(rewards, group_size=4)
    torch.testing.assert_close(result, torch.zeros(8), rtol=0, atol=1e-6)


def test_nan_rewards_get_zero_and_do_not_poison_their_group():
    rewards = torch.tensor([1.0, float("nan"), 3.0, 5.0, 0.0, 1.0, 0.0, 1.0])
    result = advantage.group_advantages(rewards, group_size=4)
    valid = advantage.group_advantages(torch.tensor([1.0, 3.0, 5.0]), group_size=3)
    assert result[1].item() == 0.0
    torch.testing.assert_close(result[[0, 2, 3]], valid)
    torch.testing.assert_close(result[4:], torch.tensor([-1.0, 1.0, -1.0, 1.0]))
    all_failed = advantage.group_advantages(torch.full((4,), float("nan")), group_size=4)
    assert torch.equal(all_failed, torch.zeros(4))


def test_clipping_holds():
    rewards = torch.zeros(100)
    rewards[0] = 1.0  # unclipped advantage (1 − 0.01)/√(0.0099) ≈ 9.95
    assert advantage.group_advantages(rewards, group_size=100)[0].item() == pytest.approx(5.0)
    assert advantage.group_advantages(rewards, group_size=100, clip=2.0).max().item() == 2.0
    unclipped = advantage.group_advantages(rewards, group_size=100, clip=None)[0].item()
    assert unclipped == pytest.approx(0.99 / math.sqrt(0.0099), rel=1e-5)


def test_batch_std_mode_centres_per_group_and_scales_by_batch_std():
    rewards = torch.tensor([0.0, 2.0, 10.0, 14.0])
    batch_std = rewards.std(correction=0)
    by_batch = advantage.group_advantages(rewards, group_size=2, std_mode="batch")
    torch.testing.assert_close(by_batch, torch.tensor([-1.0, 1.0, -2.0, 2.0]) / batch_std)
    by_group = advantage.group_advantages(rewards, group_size=2, std_mode="group")
    torch.testing.assert_close(by_group, torch.tensor([-1.0, 1.0, -1.0, 1.0]))
    centred = advantage.group_advantages(rewards, group_size=2, std_mode="none")
    torch.testing.assert_close(centred, torch.tensor([-1.0, 1.0, -2.0, 2.0]))


def test_composite_and_normalize_then_sum_match_hand_computation():
    components = {
        "vq": torch.tensor([1.0, 3.0, 0.0, 0.0]),
        "ta": torch.tensor([0.0, 4.0, 2.0, 0.0]),
        "logged_only": torch.tensor([9.0, 9.0, 9.0, 9.0]),
    }
    weights = {"vq": 0.5, "ta": 1.0}
    composite = advantage.composite_reward(components, weights)
    torch.testing.assert_close(composite, torch.tensor([0.5, 5.5, 2.0, 0.0], dtype=torch.float64))
    summed = advantage.advantages(components, weights, group_size=2)
    torch.testing.assert_close(summed, torch.tensor([-1.0, 1.0, 1.0, -1.0]))
    # Per group: vq → (−1, 1), (0, 0); ta → (−1, 1), (1, −1); then 0.5·vq + 1.0·ta.
    normalised = advantage.advantages(components, weights, 2, aggregation="normalize_then_sum")
    torch.testing.assert_close(normalised, torch.tensor([-1.5, 1.5, 1.0, -1.0]))


def test_per_group_weights_set_each_standardised_components_share():
    # a per group: (0, 1) → (−1, 1), (2, 2) → tie (0, 0); b: (1, 0) → (1, −1), (0, 4) → (−1, 1).
    scores = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0], [2.0, 4.0]])
    weights = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    result = advantage.weighted_group_advantages(scores, weights, group_size=2)
    torch.testing.assert_close(result, torch.tensor([-1.0, 1.0, -0.75, 0.75]))
    # b's spread is 4× a's in group 2, yet its share is the weight alone: scaling b changes nothing.
    scaled = scores * torch.tensor([1.0, 100.0])
    torch.testing.assert_close(advantage.weighted_group_advantages(scaled, weights, 2), result)
    shared = advantage.weighted_group_advantages(scores, torch.tensor([0.5, 1.0]), group_size=2)
    torch.testing.assert_close(shared, torch.tensor([0.5, -0.5, -1.0, 1.0]))
    with pytest.raises(ValueError, match=r"weights must be \(2,\) or \(2, 2\), got \(4, 2\)"):
        advantage.weighted_group_advantages(scores, torch.ones(4, 2), group_size=2)


def test_extremes_mask_keeps_each_groups_best_and_worst():
    advantages = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    # group 1 ascending: −1 (#1), 0 (#3), 0.5 (#0), 2 (#2); a tie group falls back to position.
    mask = advantage.extremes_mask(advantages, group_size=4, count=1)
    assert mask.tolist() == [False, True, True, False, True, False, False, True]
    assert advantage.extremes_mask(advantages, group_size=4, count=2).all()
    with pytest.raises(ValueError, match="count must be >= 0"):
        advantage.extremes_mask(advantages, group_size=4, count=-1)


def test_zero_std_group_fraction():
    rewards = torch.tensor([1.0, 1.0, 0.0, 1.0, 2.0, float("nan"), 5.0, 5.0])
    assert advantage.zero_std_group_fraction(rewards, group_size=2) == 0.75


def test_mean_group_std_is_within_group_not_batch_spread():
    # Groups (1, 3), (5, 5), (7, NaN): stds 1, 0, 0 (one valid score) → mean 1/3, although
    # the batch std of the same scores is about 2.
    rewards = torch.tensor([1.0, 3.0, 5.0, 5.0, 7.0, float("nan")])
    assert advantage.mean_group_std(rewards, group_size=2) == pytest.approx(1 / 3, abs=1e-12)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: advantage.group_advantages(torch.zeros(6), group_size=4), "group_size 4"),
        (lambda: advantage.group_advantages(torch.zeros(4), 2, std_mode="global"), "global"),
        (lambda: advantage.group_advantages(torch.zeros(4), 2, eps=0.0), "eps"),
        (lambda: advantage.group_advantages(torch.zeros(2, 2), 2), r"\(2, 2\)"),
        (lambda: advantage.advantages({"vq": torch.zeros(2)}, {"mq": 1.0}, 2), "mq"),
        (
            lambda: advantage.advantages({"vq": torch.zeros(2)}, {"vq": 1.0}, 2, aggregation="x"),
            "x",
        ),
    ],
)
def test_bad_inputs_raise_naming_the_value(call, named):
    with pytest.raises(ValueError, match=named):
        call()
