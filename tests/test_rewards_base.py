"""The reward protocol's composite: a weighted mean by default, a raw weighted sum on request."""

import pytest
import torch

from videogrpo.errors import UserError
from videogrpo.rewards.base import RewardModel, composite

SCORES = {
    "vq": torch.tensor([1.0, 0.0]),
    "mq": torch.tensor([0.5, 0.0]),
    "ta": torch.tensor([0.0, 1.0]),
}


def test_no_weights_is_the_mean_of_all_components():
    torch.testing.assert_close(composite(SCORES), torch.tensor([0.5, 1 / 3]))


def test_normalised_weights_give_a_weighted_mean():
    alignment_focused = {"vq": 0.5, "mq": 0.5, "ta": 1.0}
    torch.testing.assert_close(composite(SCORES, alignment_focused), torch.tensor([0.375, 0.5]))


def test_unnormalised_weights_give_the_raw_sum():
    weights = {"vq": 0.5, "mq": 0.5, "ta": 1.0}
    torch.testing.assert_close(
        composite(SCORES, weights, normalise=False), torch.tensor([0.75, 1.0])
    )


def test_components_without_weight_are_left_out_and_nan_propagates():
    torch.testing.assert_close(composite(SCORES, {"ta": 2.0}), SCORES["ta"])
    with_nan = {**SCORES, "vq": torch.tensor([float("nan"), 0.0])}
    result = composite(with_nan)
    assert result[0].isnan() and not result[1].isnan()


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({"clip": 1.0}, "does not produce"),
        ({}, "empty"),
        ({"vq": 0.0}, "more than 0"),
    ],
)
def test_bad_weights_are_user_errors(weights, message):
    with pytest.raises(UserError, match=message):
        composite(SCORES, weights)


def test_a_plain_callable_class_satisfies_the_protocol():
    class Constant:
        components = ("score",)

        def __call__(self, videos, prompts):
            return {"score": torch.ones(len(prompts))}

    assert isinstance(Constant(), RewardModel)
