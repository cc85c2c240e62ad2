"""Presets built on a learned reward, run end to end with a tiny stand-in of its weights."""

from __future__ import annotations

import json
import math

import pytest
from conftest import PRESETS_DIR, WEIGHTED_REWARD_PRESETS, tiny_settings
from tiny_rewards import build_tiny_videoreward

from videogrpo.config import load_config
from videogrpo.runs.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_weighted_reward_preset_is_tested_here():
    assert WEIGHTED_REWARD_PRESETS == ("selfpaced_videoalign",)


def test_selfpaced_videoalign_runs_two_iterations_on_the_tiny_videoalign(tiny_model_dir, tmp_path):
    """The paper's staged curriculum over VideoAlign's VQ → MQ → TA: the weights are logged per
    component every iteration and the held-out eval scores all four VideoAlign numbers."""
    reward_dir, base_dir = build_tiny_videoreward(tmp_path / "videoreward", "full")
    preset = PRESETS_DIR / "selfpaced_videoalign.yaml"
    overrides = tiny_settings(tiny_model_dir, tmp_path / "runs") + [
        "run.name=run",
        f"reward.options.path={reward_dir}",
        f"reward.options.base_model={base_dir}",
        "reward.options.video_fps=8",  # the world's 8-frame clips: 2 frames per second → 2 frames
        "reward.options.device=cpu",
    ]
    config = load_config(preset, overrides)
    assert config.reward.order == ["VQ", "MQ", "TA"] and config.reward.curriculum == "staged"

    result = train(str(preset), overrides, progress=False)
    metrics = [
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["iteration"] for m in metrics] == [1, 2]
    for m in metrics:
        weights = [m[f"curriculum/weight_mean/{name}"] for name in ("VQ", "MQ", "TA")]
        assert math.isclose(sum(weights), 1.0, abs_tol=1e-6)
        assert all(math.isfinite(m[f"reward/{name}_mean"]) for name in ("VQ", "MQ", "TA"))
    assert set(result.summary["eval_after"]) >= {"VQ", "MQ", "TA", "Overall"}
