"""Reward failures inside an iteration: counted, left out of their group, or stopping it cleanly."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
from conftest import make_trainer

from videogrpo.core.advantage import DEFAULT_ADV_CLIP
from videogrpo.training.trainer import RewardsFailed

pytestmark = pytest.mark.usefixtures("one_thread")

SCRIPTED_REWARD = textwrap.dedent(
    """
    import math

    import torch

    # The test sets these: calls (1-based) that raise, and (call, component) pairs that are NaN.
    script = {"raise": set(), "nan": set(), "calls": 0}

    def scores(videos, prompts):
        script["calls"] += 1
        call = script["calls"]
        if call in script["raise"] or "all" in script["raise"]:
            raise RuntimeError(f"scorer down on call {call}")
        out = {
            "bright": videos.mean(dim=(1, 2, 3, 4)),
            "red": videos[..., 0].mean(dim=(1, 2, 3)),
        }
        for name in out:
            if (call, name) in script["nan"]:
                out[name] = torch.full_like(out[name], math.nan)
        return out

    scores.components = ["bright", "red"]
    """
)


# Advantages are computed in float64 and stored as float32: |A| <= 5 rounds by at most 5 · 2^-24.
CLOSE = {"rtol": 0, "atol": 1e-6}


@pytest.fixture
def scripted(tmp_path):
    path = tmp_path / "scripted.py"
    path.write_text(SCRIPTED_REWARD)
    return path


def trainer_with(scripted, tiny_model_dir, tmp_path, *overrides):
    """Groups of 4 (2 prompts), one video per reward call, so call k scores sample k - 1."""
    trainer = make_trainer(
        tiny_model_dir,
        tmp_path,
        "sage",
        [
            "reward.type=python",
            f"reward.options.function={scripted}:scores",
            "reward.weights={bright: 1.0, red: 1.0}",
            "reward.batch_size=1",
            "data.group_size=4",
            *overrides,
        ],
    )
    script = trainer.reward.members[0].reward.function.__globals__["script"]
    return trainer, script


def standardised(values: torch.Tensor) -> torch.Tensor:
    """(r − mean) / population std over the given (valid) rewards, clipped as the trainer does."""
    standard = (values - values.mean()) / values.std(correction=0)
    return standard.clamp(-DEFAULT_ADV_CLIP, DEFAULT_ADV_CLIP)


def test_a_failed_call_costs_its_sample_only_and_its_group_is_normalised_without_it(
    scripted, tiny_model_dir, tmp_path
):
    trainer, script = trainer_with(scripted, tiny_model_dir, tmp_path)
    script["raise"] = {2}  # sample 1, in group 0
    result = trainer.step()
    rewards, advantages = result.rewards, result.advantages
    assert rewards["bright"][1].isnan() and rewards["bright"][[0, 2, 3, 4]].isfinite().all()
    assert result.metrics["reward/failed_samples"] == 1
    assert result.metrics["reward/failed_calls"] == 1
    assert advantages[1] == 0
    composite = (rewards["bright"] + rewards["red"]).double()
    valid = torch.tensor([0, 2, 3])
    torch.testing.assert_close(advantages[valid].double(), standardised(composite[valid]), **CLOSE)
    torch.testing.assert_close(advantages[4:].double(), standardised(composite[4:]), **CLOSE)


def test_a_non_finite_component_removes_the_sample_from_every_component_normalised_first(
    scripted, tiny_model_dir, tmp_path
):
    trainer, script = trainer_with(
        scripted, tiny_model_dir, tmp_path, "reward.aggregation=normalize_then_sum"
    )
    script["nan"] = {(1, "red")}  # sample 0: bright is fine, red is not
    result = trainer.step()
    rewards, advantages = result.rewards, result.advantages
    assert math.isfinite(rewards["bright"][0]) and rewards["red"][0].isnan()
    assert result.metrics["reward/failed_samples"] == 1
    assert result.metrics["reward/failed_calls"] == 0  # a NaN score is not a failed call
    assert advantages[0] == 0
    valid = torch.tensor([1, 2, 3])
    expected = sum(standardised(rewards[name][valid].double()) for name in ("bright", "red"))
    expected = expected.clamp(-DEFAULT_ADV_CLIP, DEFAULT_ADV_CLIP)
    torch.testing.assert_close(advantages[valid].double(), expected, **CLOSE)


def test_an_iteration_without_one_score_raises_before_anything_moved(
    scripted, tiny_model_dir, tmp_path
):
    trainer, script = trainer_with(scripted, tiny_model_dir, tmp_path)
    fresh, _ = trainer_with(scripted, tiny_model_dir, tmp_path)
    weights = {k: v.clone() for k, v in trainer.model.trainable_state_dict().items()}
    script["raise"] = {"all"}
    with pytest.raises(RewardsFailed, match="scorer down") as caught:
        trainer.step()
    assert caught.value.iteration == 1
    reasons = caught.value.reasons  # one per call (8 samples, one per call), named by reward
    assert reasons == [f"python: RuntimeError: scorer down on call {k}" for k in range(1, 9)]
    assert trainer.iteration == 0 and trainer.optimizer_steps == 0
    for name, value in trainer.model.trainable_state_dict().items():
        assert torch.equal(value, weights[name])
    assert trainer.next_prompts() == fresh.next_prompts()  # the same iteration is redone
