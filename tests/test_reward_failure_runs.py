"""Issue 17's reward-failure acceptance, end to end through `videogrpo train`.

The reward layer (issue 15: rewards/guarded.py, training/trainer.py) makes a failed call NaN for
its samples, gives those samples no advantage and counts them; these tests check what a user of
the CLI sees: a quarter of NaN scores (counted, finite weights, the run completes), one raised
exception (counted, the run goes on), and a reward that never scores (the run stops with one
line and a loadable checkpoint, exit status non-zero). tests/test_strict_json.py checks the
files stay strict JSON when scores are NaN.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import PRESETS_DIR, tiny_settings

from videogrpo.cli import main
from videogrpo.runs.checkpoint import find_checkpoint, load_state

pytestmark = pytest.mark.usefixtures("one_thread")

# A scorer of the clips as a plain function (reward.type=python), one video per call. MODE is set
# per test: "quarter_nan" (calls 3, 7, 11, …: after the 2 calls of the first eval, the first of
# each iteration's 4 samples), "raise_once" (call 4: iteration 1's second sample), "always_nan".
SCORER = """
import math

import torch

MODE = {mode!r}
calls = 0


def brightness(videos, prompts):
    global calls
    calls += 1
    if MODE == "raise_once" and calls == 4:
        raise RuntimeError("scorer crashed on call 4")
    score = videos.mean(dim=(1, 2, 3, 4))
    if MODE == "always_nan":
        score = torch.full_like(score, math.nan)
    if MODE == "quarter_nan" and calls % 4 == 3:
        score = torch.full_like(score, math.nan)
    if MODE == "three_quarters_nan" and calls % 4 != 3:
        score = torch.full_like(score, math.nan)
    return {{"brightness": score}}


brightness.components = ["brightness"]
"""


def run_with(mode: str, model_dir, tmp_path, capsys, extra=()) -> tuple[int, list[str], object]:
    scorer = tmp_path / f"scorer_{mode}.py"
    scorer.write_text(SCORER.format(mode=mode))
    settings = tiny_settings(model_dir, tmp_path) + [
        "run.name=run",
        "run.checkpoint_every=1",
        "reward.type=python",
        f"reward.options.function={scorer}:brightness",
        "reward.weights={brightness: 1.0}",
        "reward.batch_size=1",  # one video per call: a raised call costs one sample
        *extra,
    ]
    args = ["train", str(PRESETS_DIR / "sage.yaml"), "--quiet"]
    for setting in settings:
        args += ["--set", setting]
    code = main(args)
    return code, capsys.readouterr().err.strip().splitlines(), tmp_path / "run"


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def finite_weights(run_dir) -> bool:
    weights = load_state(run_dir / "checkpoint")["trainer"]["weights"]
    return all(bool(torch.isfinite(w).all()) for w in weights.values())


def test_a_quarter_of_nan_scores_is_counted_and_the_run_completes(tiny_model_dir, tmp_path, capsys):
    code, err, run_dir = run_with("quarter_nan", tiny_model_dir, tmp_path, capsys)
    assert code == 0, err
    rows = metrics(run_dir)
    # 2 prompts × 2 samples per iteration, one call each: one of each iteration's 4 is NaN.
    assert [row["reward/failed_samples"] for row in rows] == [1, 1]
    assert [row["reward/failed_calls"] for row in rows] == [0, 0]  # NaN is a score, not a crash
    assert finite_weights(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["reward_failed_samples"] == 2


def test_one_raised_exception_is_counted_and_the_run_goes_on(tiny_model_dir, tmp_path, capsys):
    code, err, run_dir = run_with("raise_once", tiny_model_dir, tmp_path, capsys)
    assert code == 0, err
    rows = metrics(run_dir)
    assert [row["reward/failed_calls"] for row in rows] == [1, 0]
    assert [row["reward/failed_samples"] for row in rows] == [1, 0]
    assert all(math.isfinite(row["reward/brightness_mean"]) for row in rows)
    assert finite_weights(run_dir)
    assert json.loads((run_dir / "summary.json").read_text())["iterations"] == 2


def test_a_reward_that_never_scores_stops_the_run_with_a_loadable_checkpoint(
    tiny_model_dir, tmp_path, capsys
):
    code, err, run_dir = run_with("always_nan", tiny_model_dir, tmp_path, capsys)
    assert code not in (0, 1, 2) and code == 4, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert "iteration 1: the reward failed for every sample" in err[0]
    assert "iteration 0 checkpointed" in err[0] and f"--resume {run_dir}" in err[0]
    found = find_checkpoint(run_dir / "checkpoint")
    assert found.step == 0
    assert load_state(found.path)["trainer"]["iteration"] == 0 and finite_weights(run_dir)
    assert not (run_dir / "summary.json").exists()
    # The held-out eval before training was NaN: written as null and counted, never a number.
    (before,) = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert before["brightness"] is None and before["nonfinite_count"] >= 1


def test_most_samples_failing_for_k_iterations_in_a_row_stops_the_run_after_a_checkpoint(
    tiny_model_dir, tmp_path, capsys
):
    """3 of each iteration's 4 samples NaN (75 % > 50 %) with K = 2: iteration 1 trains on its
    one scored sample, iteration 2 makes it two in a row, the run stops with iteration 2
    checkpointed, exit 4, one line; the default K = 3 would have let it go on longer."""
    extra = ["run.iterations=4", "reward.max_failed_fraction=0.5", "reward.max_failed_iterations=2"]
    code, err, run_dir = run_with("three_quarters_nan", tiny_model_dir, tmp_path, capsys, extra)
    assert code == 4 and len(err) == 1, err
    assert "iterations 1-2: the reward failed for more than 50% of the samples 2 times" in err[0]
    assert [row["reward/failed_fraction"] for row in metrics(run_dir)] == [0.75, 0.75]
    found = find_checkpoint(run_dir / "checkpoint")
    assert found.step == 2 and finite_weights(run_dir)
    assert not (run_dir / "summary.json").exists()
