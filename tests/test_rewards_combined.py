"""VideoAlign and CLIPScore in one run: each in its own chunks, one curriculum over both."""

from __future__ import annotations

import pytest
import torch
from conftest import make_trainer
from tiny_rewards import build_tiny_clip, build_tiny_videoreward

pytestmark = pytest.mark.usefixtures("one_thread")

BOUNDS = {"VQ": (-1.0, 1.0), "MQ": (0.0, 4.0), "clipscore": (0.0, 0.5)}


def test_two_learned_rewards_score_in_their_own_chunks_under_per_component_bounds(
    tiny_model_dir, tmp_path
):
    videoalign, base = build_tiny_videoreward(tmp_path / "videoreward", "lora")
    clip = build_tiny_clip(tmp_path / "clip")
    lo = {name: low for name, (low, _) in BOUNDS.items()}
    hi = {name: high for name, (_, high) in BOUNDS.items()}
    trainer = make_trainer(
        tiny_model_dir,
        tmp_path,
        "selfpaced",
        [
            "reward.type=videoalign",
            f"reward.options={{path: {videoalign}, base_model: {base}, video_fps: 8, device: cpu}}",
            "reward.batch_size=3",
            "reward.additional=[{type: clipscore, batch_size: 2, "
            f"options: {{path: {clip}, frames: 2, device: cpu}}}}]",
            "reward.order=[VQ, MQ, clipscore]",
            f"reward.lo={lo}",
            f"reward.hi={hi}",
        ],
    )
    assert trainer.reward.components == ("VQ", "MQ", "TA", "Overall", "clipscore")
    calls = {}
    for guard in trainer.reward.guards:
        reward = guard.reward

        def spy(videos, prompts, reward=reward):
            calls.setdefault(type(reward).__name__, []).append(len(prompts))
            return reward(videos, prompts)

        guard.reward = spy
    result = trainer.step()

    assert calls == {"VideoAlign": [3, 1], "ClipScore": [2, 2]}  # 4 samples per iteration
    for name, (low, high) in BOUNDS.items():
        normalised = ((result.rewards[name] - low) / (high - low)).clamp(0, 1)
        # The EMA competence starts at the first batch's mean normalised score.
        competence = result.metrics[f"curriculum/competence/{name}"]
        assert competence == pytest.approx(float(normalised.mean()), abs=1e-6)
    weights = [result.metrics[f"curriculum/weight_mean/{n}"] for n in ("VQ", "MQ", "clipscore")]
    assert sum(weights) == pytest.approx(1.0, abs=1e-6)
    assert torch.isfinite(result.advantages).all()
