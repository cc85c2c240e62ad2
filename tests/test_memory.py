"""The memory contract and the conditioning bundle: chunks never change numbers, eval keeps only
final states, and conditioning rows follow the latents they condition."""

from __future__ import annotations

import pytest
import torch

from videogrpo.core import schedule
from videogrpo.embedded.tiny_wan import TinyWan
from videogrpo.embedded.world.grammar import HELDOUT_PROMPTS, TRAIN_PROMPTS
from videogrpo.models.base import Conditioning, guided_velocity
from videogrpo.rewards.registry import Member, RewardSet
from videogrpo.rewards.world import WorldReward
from videogrpo.runs.evaluation import evaluate
from videogrpo.training import rollout
from videogrpo.training.build import eval_step_settings
from videogrpo.training.rollout import sample_final, sample_trajectories
from videogrpo.training.scoring import decode_and_score
from videogrpo.training.step import StepSettings

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = [*TRAIN_PROMPTS[:5], *HELDOUT_PROMPTS[:2]]


@pytest.fixture(scope="module")
def model(tiny_model_dir) -> TinyWan:
    return TinyWan.from_pretrained(tiny_model_dir)


def latents_for(model: TinyWan) -> torch.Tensor:
    """Partly denoised latents, so the decoded clips are not all noise (rewards vary)."""
    settings = StepSettings("ode", 0.0, schedule.sigmas(3, 3.0))
    mask = torch.zeros(3, dtype=torch.bool)
    return sample_final(
        model, settings, model.encode(PROMPTS), list(range(len(PROMPTS))), sde_mask=mask
    )


def test_chunked_decode_and_reward_give_the_rewards_of_one_big_call(model):
    """The world reward and the tiny model's decode are per-clip arithmetic, so chunk sizes
    change nothing, bitwise; the kept videos are exactly the first K decoded clips."""
    latents = latents_for(model)
    whole = WorldReward()(model.decode(latents), PROMPTS)
    for decode_batch, reward_batch in [(3, 0), (100, 2), (1, 1), (4, 3)]:
        reward = RewardSet([Member("world", WorldReward(), reward_batch)])
        scored = decode_and_score(
            model, reward, latents, PROMPTS, decode_batch_size=decode_batch, keep_videos=4
        )
        assert scored.rewards.keys() == whole.keys()
        for name in whole:
            assert torch.equal(scored.rewards[name], whole[name]), (decode_batch, name)
        assert torch.equal(scored.videos, model.decode(latents[:4]))
    assert whole["vq"].std() > 0  # the clips differ, so a misplaced chunk would show


def test_sample_final_is_the_trajectorys_final_state_without_the_trajectory(model, monkeypatch):
    settings = StepSettings("sage", 0.5, schedule.sigmas(4, 3.0))
    mask = torch.tensor([True, True, True, False])
    conditioning, seeds = model.encode(PROMPTS), list(range(len(PROMPTS)))
    full = sample_trajectories(model, settings, conditioning, seeds, sde_mask=mask)
    kept_steps = []
    denoise = rollout._denoise

    def spy(*args, **kwargs):
        result = denoise(*args, **kwargs)
        kept_steps.append(result.states.shape[0])
        return result

    monkeypatch.setattr(rollout, "_denoise", spy)
    final = sample_final(model, settings, conditioning, seeds, sde_mask=mask)
    assert torch.equal(final, full.final) and kept_steps == [1]
    assert full.states.shape[0] == 5

    evaluate(model, WorldReward(), PROMPTS[:2], eval_step_settings(4, 3.0, 1.0))
    assert kept_steps == [1, 1]  # eval, too, holds one state per sample, not T + 1


def test_conditioning_rows_follow_select_and_concatenate():
    text = torch.arange(12.0).reshape(3, 4)
    bundle = Conditioning({"text": text, "negative_text": -text})
    picked = bundle.select(torch.tensor([2, 0]))
    assert torch.equal(picked["text"], text[[2, 0]]) and torch.equal(
        picked["negative_text"], -text[[2, 0]]
    )
    joined = Conditioning.concatenate([bundle.select([0]), bundle.select([1, 2])])
    assert torch.equal(joined["text"], text) and len(joined) == 3
    assert bundle.positive().keys() == {"text"}
    assert torch.equal(bundle.negative()["text"], -text)
    with pytest.raises(ValueError, match="batch size"):
        Conditioning({"text": text, "mask": torch.ones(2, 4)})
    with pytest.raises(ValueError, match="different fields"):
        Conditioning.concatenate([bundle, Conditioning({"text": text})])


def test_guidance_needs_the_negative_branch_and_is_identity_at_one():
    def forward(latents, timesteps, fields):
        return latents + fields["text"]

    latents = torch.zeros(2, 3)
    positive_only = Conditioning({"text": torch.ones(2, 3)})
    assert torch.equal(
        guided_velocity(forward, latents, torch.zeros(2), positive_only, 1.0), torch.ones(2, 3)
    )
    with pytest.raises(ValueError, match="negative prompt"):
        guided_velocity(forward, latents, torch.zeros(2), positive_only, 2.0)
    both = Conditioning({"text": torch.ones(2, 3), "negative_text": torch.zeros(2, 3)})
    assert torch.equal(
        guided_velocity(forward, latents, torch.zeros(2), both, 3.0), torch.full((2, 3), 3.0)
    )
