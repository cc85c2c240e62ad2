"""Whatever the rewards do, every JSON file of a run is strict JSON: NaN becomes null, counted.

Python's json writes NaN and Infinity by default, which no other parser reads (issue 17 saw
`-Infinity` in summary.json). A reward that is NaN for a quarter of the samples must leave
finite weights, a completed run, and files any JSON parser reads.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import PRESETS_DIR, tiny_settings

from videogrpo.runs.checkpoint import load_state
from videogrpo.runs.tracking import NONFINITE_KEY, dumps_strict, strict_json
from videogrpo.runs.train import train

pytestmark = pytest.mark.usefixtures("one_thread")

QUARTER_NAN_REWARD = """
import torch
from videogrpo.rewards.world import WorldReward


class QuarterNaN(WorldReward):
    \"\"\"The world's rewards, NaN for every fourth sample (a scorer failing on some).\"\"\"

    def __call__(self, videos, prompts):
        scores = super().__call__(videos, prompts)
        failed = torch.arange(len(prompts)) % 4 == 0
        return {name: value.masked_fill(failed, float("nan")) for name, value in scores.items()}
"""


def strict_loads(text: str):
    def refuse(token: str):
        raise AssertionError(f"{token} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_strict_json_turns_every_non_finite_number_into_null_and_counts_them():
    value = {"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": "NaN", "e": 2}
    cleaned, count = strict_json(value)
    assert cleaned == {"a": None, "b": [1.0, None, {"c": None}], "d": "NaN", "e": 2}
    assert count == 3
    assert strict_loads(dumps_strict(value)) == cleaned


def test_a_quarter_of_nan_rewards_leaves_finite_weights_and_strict_json_files(
    tiny_model_dir, tmp_path
):
    reward_file = tmp_path / "quarter_nan.py"
    reward_file.write_text(QUARTER_NAN_REWARD)
    overrides = tiny_settings(tiny_model_dir, tmp_path) + [
        "run.name=nan",
        f"reward.type={reward_file}:QuarterNaN",
        "run.videos_every=1",  # rollouts/iter_N/rewards.json holds the NaN scores too
        "eval.samples_per_prompt=2",  # 4 eval samples: one NaN
    ]
    result = train(PRESETS_DIR / "sage.yaml", overrides, progress=False)
    run_dir = result.run_dir
    weights = load_state(run_dir / "checkpoint")["trainer"]["weights"]
    assert all(torch.isfinite(w).all() for w in weights.values())

    files = [p for p in run_dir.rglob("*.json*") if p.parent.name != "checkpoint"]
    assert {p.name for p in files} >= {"metrics.jsonl", "eval.jsonl", "summary.json"}
    assert any(p.name == "rewards.json" for p in files)
    for path in files:
        lines = path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]
        for line in lines:
            strict_loads(line)

    summary = strict_loads((run_dir / "summary.json").read_text())
    assert summary["eval_after"]["composite"] is None  # the mean over a NaN sample
    assert summary[NONFINITE_KEY] >= 2  # before and after
    evals = [strict_loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert all(row["composite"] is None and row[NONFINITE_KEY] >= 1 for row in evals)
    rollout = strict_loads((run_dir / "rollouts" / "iter_000001" / "rewards.json").read_text())
    assert rollout[0]["samples"][0]["rewards"]["vq"] is None
