"""Resume and restart at the edges: what a kill or a user leaves in a run directory.

Issue 17 item 1: a half-written last log line is expected after a kill, not an error; a damaged
log or state file is one line naming the file; a refused resume changes nothing in the run
directory (no config.yaml rewrite, no TensorBoard file); a run stopped before its first
checkpoint can be resumed (from the start) or restarted, and the two messages agree.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import stat

import pytest
import torch
from conftest import PRESETS_DIR, tiny_settings

from videogrpo.cli import main
from videogrpo.runs.checkpoint import write_manifest

pytestmark = pytest.mark.usefixtures("one_thread")


def train_args(model_dir, output_dir, name: str, iterations: int) -> list[str]:
    args = ["train", PRESETS_DIR / "sage.yaml", "--quiet"]
    lora = ["model.finetune=lora"]  # (sage fine-tunes every weight; a LoRA is what users resume)
    for setting in [*tiny_settings(model_dir, output_dir, iterations), *lora, f"run.name={name}"]:
        args += ["--set", setting]
    return [str(a) for a in args]


def cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def resume(capsys, run_dir, *overrides: str) -> tuple[int, str]:
    args = ["train", "--resume", run_dir, "--quiet"]
    for setting in overrides:
        args += ["--set", setting]
    return cli(capsys, *args)


def snapshot(run_dir) -> dict:
    """Every path under the run directory, with the bytes of each file."""
    return {p: (p.read_bytes() if p.is_file() else None) for p in run_dir.rglob("*")}


def non_time_metrics(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def assert_one_line(code: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory):
    """A finished 2-iteration sage run, and one of 3 iterations to compare continuations with."""
    root = tmp_path_factory.mktemp("finished")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (module fixtures run before the one_thread fixture)
    try:
        for name, iterations in (("two", 2), ("three", 3)):
            assert main(train_args(tiny_model_dir, root, name, iterations)) == 0
    finally:
        torch.set_num_threads(threads)
    return root / "two", root / "three"


@pytest.fixture
def run_dir(finished, tmp_path):
    """A private copy of the finished 2-iteration run."""
    return shutil.copytree(finished[0], tmp_path / "run")


def test_a_half_written_last_line_is_dropped_and_the_run_continues_exactly(
    run_dir, finished, capsys
):
    """What a kill during an append leaves: the last line cut short, no newline."""
    for name in ("metrics.jsonl", "eval.jsonl"):
        with (run_dir / name).open("a") as handle:
            handle.write('{"iteration": 3, "reward/compos')
    code, err = resume(capsys, run_dir, "run.iterations=3")
    assert code == 0, err
    assert non_time_metrics(run_dir) == non_time_metrics(finished[1])
    evals, reference = ([json.loads(r) for r in (d / "eval.jsonl").read_text().splitlines()]
                        for d in (run_dir, finished[1]))  # fmt: skip
    # The first run's final eval (iteration 2) stays: one line per evaluated iteration.
    assert [row["iteration"] for row in evals] == [0, 2, 3]
    assert [evals[0], evals[2]] == reference


@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        ("eval_garbage", ["eval.jsonl line 2", "integer 'iteration'"]),
        ("metrics_without_iteration", ["metrics.jsonl line 1"]),
        ("metrics_not_utf8", ["metrics.jsonl", "cannot read"]),
        ("state_empty_object", ["lacks trainer", "--restart"]),
        ("state_empty_list", ["lacks trainer", "--restart"]),
        ("state_edited", ["state.json has 2 bytes, the manifest", "--restart"]),
        ("tensors_truncated", ["tensors.safetensors has", "--restart"]),
        ("summary_garbage", ["summary.json is damaged"]),
    ],
)
def test_a_damaged_file_is_one_line_naming_it_and_changes_nothing(run_dir, capsys, damage, needles):
    checkpoint = run_dir / "checkpoint"
    if damage == "eval_garbage":
        lines = (run_dir / "eval.jsonl").read_text().splitlines()
        (run_dir / "eval.jsonl").write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    elif damage == "metrics_without_iteration":
        text = (run_dir / "metrics.jsonl").read_text()
        (run_dir / "metrics.jsonl").write_text('{"reward/composite_mean": 0.5}\n' + text)
    elif damage == "metrics_not_utf8":
        (run_dir / "metrics.jsonl").write_bytes(b"\xff\xfe\n")
    elif damage in ("state_empty_object", "state_empty_list"):
        # A hand-made checkpoint, consistent with its manifest but not a run's state.
        (checkpoint / "state.json").write_text("{}" if damage == "state_empty_object" else "[]")
        write_manifest(checkpoint, step=2)
    elif damage == "state_edited":
        (checkpoint / "state.json").write_text("{}")
    elif damage == "tensors_truncated":
        tensors = checkpoint / "tensors.safetensors"
        tensors.write_bytes(tensors.read_bytes()[:100])
    else:
        (run_dir / "summary.json").write_text("{not json")
    before = snapshot(run_dir)
    code, err = resume(capsys, run_dir, "run.iterations=3")
    assert_one_line(code, err, str(run_dir), *needles)
    assert snapshot(run_dir) == before  # not even config.yaml or a TensorBoard file


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("model.finetune=full", "this run was trained with model.finetune='lora'"),
        ("model.lora_rank=8", "this run was trained with model.lora_rank=4"),
    ],
)
def test_overrides_that_change_the_weights_are_refused_and_not_saved(
    run_dir, capsys, override, needle
):
    before = snapshot(run_dir)
    code, err = resume(capsys, run_dir, "run.iterations=3", override)
    assert_one_line(code, err, needle)
    assert snapshot(run_dir) == before
    code, err = resume(capsys, run_dir, "run.iterations=3")  # config.yaml was not changed
    assert code == 0, err


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_the_start(
    run_dir, finished, tiny_model_dir, capsys
):
    """Killed during the first eval: logs and TensorBoard from the killed process may remain,
    but there is no checkpoint. A new run of that name says what --resume will do; --resume
    starts it over with its saved config, ending where an uninterrupted run ends."""
    for name in ("checkpoint", "lora"):
        shutil.rmtree(run_dir / name)
    for name in ("summary.json", "report.html"):
        (run_dir / name).unlink()
    new_run = train_args(tiny_model_dir, run_dir.parent, run_dir.name, iterations=2)
    before = snapshot(run_dir)
    code, err = cli(capsys, *new_run)
    assert_one_line(
        code, err, "stopped before its first checkpoint", f"--resume {run_dir}", "--restart"
    )
    assert snapshot(run_dir) == before
    code, err = resume(capsys, run_dir)
    assert code == 0, err
    assert "starting it over" in err
    assert non_time_metrics(run_dir) == non_time_metrics(finished[0])
    assert (run_dir / "eval.jsonl").read_text() == (finished[0] / "eval.jsonl").read_text()


def test_restart_empties_the_run_and_starts_it_over_with_its_saved_config(
    run_dir, finished, capsys, tmp_path
):
    stale = run_dir / "rollouts" / "iter_000099"
    stale.mkdir(parents=True)
    (stale / "old.gif").write_bytes(b"GIF89a")
    code, err = cli(capsys, "train", "--restart", run_dir, "--quiet")
    assert code == 0, err
    assert not stale.exists()
    assert non_time_metrics(run_dir) == non_time_metrics(finished[0])

    not_a_run = tmp_path / "photos"
    not_a_run.mkdir()
    (not_a_run / "keep.jpg").write_bytes(b"mine")
    code, err = cli(capsys, "train", "--restart", not_a_run, "--quiet")
    assert_one_line(code, err, str(not_a_run), "config.yaml")
    assert sorted(p.name for p in not_a_run.iterdir()) == ["keep.jpg"]


def test_a_kill_between_the_summary_and_the_report_is_finished_by_resume(run_dir, capsys):
    """summary.json is written before report.html: a resume writes the missing report only."""
    (run_dir / "report.html").unlink()
    before = snapshot(run_dir)
    code, err = resume(capsys, run_dir)
    assert code == 0, err
    after = snapshot(run_dir)
    assert after.pop(run_dir / "report.html") and after == before
    code, err = resume(capsys, run_dir)  # now it is finished: refused, nothing changed
    assert_one_line(code, err, "already finished 2 iterations", "run.iterations=4")


def test_weights_that_overflow_stop_the_run_with_the_last_good_checkpoint(
    tiny_model_dir, tmp_path, finished, capsys, monkeypatch
):
    """NaN-safety: an optimizer step that leaves a non-finite weight (what an overflow does)
    stops the run at once with exit 3 and one line; the checkpoint and logs hold only the
    iterations before it, so a resume ends where a run that never overflowed ends."""
    original_step = torch.optim.AdamW.step
    steps = []

    def overflowing_step(self, *args, **kwargs):
        loss = original_step(self, *args, **kwargs)
        steps.append(1)
        if len(steps) == 3:  # iteration 2's first step (2 minibatches per iteration)
            self.param_groups[0]["params"][0].data[0] = math.inf
        return loss

    run_dir = tmp_path / "two"
    args = train_args(tiny_model_dir, tmp_path, "two", iterations=2)
    with monkeypatch.context() as patch:
        patch.setattr(torch.optim.AdamW, "step", overflowing_step)
        code, err = cli(capsys, *args, "--set", "run.checkpoint_every=1")
    lines = err.strip().splitlines()
    assert code == 3 and len(lines) == 1 and "Traceback" not in err, err
    assert "iteration 2 diverged" in lines[0] and "checkpoint of iteration 1 kept" in lines[0]
    assert [row["iteration"] for row in non_time_metrics(run_dir)] == [1]
    code, err = resume(capsys, run_dir)
    assert code == 0, err
    assert non_time_metrics(run_dir) == non_time_metrics(finished[0])


def test_every_file_of_a_run_gets_the_mode_the_umask_gives(finished):
    """safetensors and mkstemp write 0600; weights, videos and the report of a run should be
    readable by whoever may read the rest of it (issue 17 saw 0600 beside 0644)."""
    umask = os.umask(0)
    os.umask(umask)
    files = [p for p in finished[0].rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files) and any(p.suffix == ".gif" for p in files)
    modes = {p.relative_to(finished[0]): stat.S_IMODE(p.stat().st_mode) for p in files}
    assert modes == dict.fromkeys(modes, 0o666 & ~umask)
