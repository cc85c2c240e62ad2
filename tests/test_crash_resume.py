"""Runs killed for real (SIGKILL, SIGTERM, SIGINT, in child processes) resume to the weights and
metrics of a run never stopped, with no manual repair; two processes never share a run.

Issue 17's acceptance: a kill at each named point (videogrpo/faults.py) and at 20 random
instants; after every kill the newest complete checkpoint is at least the last one the run
finished (none is lost) and loads whole (none is half-read). Children fork from a server that
imported videogrpo once (tests/killable.py), so each run costs the tiny model's ~2 s, not the
seconds of importing torch.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import killable
import pytest
import torch
from conftest import PRESETS_DIR, tiny_settings
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from videogrpo.runs.checkpoint import find_checkpoint, load_state

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

# selfpaced exercises every piece of resumable state: optimizer (2 steps per rollout), moving
# anchor (refreshed every step), adaptive KL controller, curriculum EMA, data/selection RNGs.
PRESET = PRESETS_DIR / "selfpaced.yaml"
ITERATIONS = 3
# The acceptance's 20 random kills take about 2 minutes on 2 busy cores; the suite runs 8 and
# `VIDEOGRPO_RANDOM_KILLS=20 python -m pytest tests/test_crash_resume.py -k random` all 20
# (docs/reliability.md records the result).
RANDOM_KILLS = int(os.environ.get("VIDEOGRPO_RANDOM_KILLS", "8"))
RANDOM_SEED = 17
POLL_SECONDS = 0.01
EXIT_SIGTERM, EXIT_SIGINT = 128 + signal.SIGTERM, 128 + signal.SIGINT


def train_args(model_dir: Path, output_dir: Path, name: str) -> list[str]:
    settings = tiny_settings(model_dir, output_dir, iterations=ITERATIONS) + [
        f"run.name={name}",
        "run.checkpoint_every=1",
        "kl.anchor_every=1",
        "optim.minibatches=2",
    ]
    args = ["train", PRESET, "--quiet"]
    for setting in settings:
        args += ["--set", setting]
    return args


def resume_args(run_dir: Path) -> list[str]:
    return ["train", "--resume", run_dir, "--quiet"]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def assert_same_results(run_dir: Path, reference: Path) -> None:
    """Bitwise the uninterrupted run's: every non-timing metric, every eval, the final weights
    (checkpoint and exported model) and the summary's held-out numbers."""
    assert without_timings(read_jsonl(run_dir / "metrics.jsonl")) == without_timings(
        read_jsonl(reference / "metrics.jsonl")
    )
    assert read_jsonl(run_dir / "eval.jsonl") == read_jsonl(reference / "eval.jsonl")
    final, expected = (load_state(d / "checkpoint")["trainer"] for d in (run_dir, reference))
    assert final["iteration"] == expected["iteration"] == ITERATIONS
    for name, weight in expected["weights"].items():
        assert torch.equal(final["weights"][name], weight), name
    export = "model"  # selfpaced fine-tunes every weight and exports the model folder
    files = sorted(p.name for p in (reference / export).iterdir())
    assert sorted(p.name for p in (run_dir / export).iterdir()) == files and files
    for name in files:
        if name.endswith(".safetensors"):
            exported = load_file(run_dir / export / name)
            for key, weight in load_file(reference / export / name).items():
                assert torch.equal(exported[key], weight), key
        else:
            assert (run_dir / export / name).read_bytes() == (
                reference / export / name
            ).read_bytes()
    summary, want = (json.loads((d / "summary.json").read_text()) for d in (run_dir, reference))
    assert (summary["eval_before"], summary["eval_after"]) == (
        want["eval_before"],
        want["eval_after"],
    )
    assert (run_dir / "report.html").is_file()
    leftovers = [p.name for p in run_dir.iterdir() if p.name.endswith((".tmp", ".old"))]
    assert not leftovers


def assert_checkpoint_kept(run_dir: Path) -> int | None:
    """After a kill: the newest complete checkpoint loads whole and is not older than the last
    checkpoint the run had finished (metrics line i is written after checkpoint i − 1, as
    checkpoints are every iteration). Returns its iteration (None: none finished yet)."""
    metrics = run_dir / "metrics.jsonl"
    complete = metrics.read_text().split("\n")[:-1] if metrics.is_file() else []
    found = find_checkpoint(run_dir / "checkpoint")
    if found is None:
        assert not complete, "a metrics line exists, so checkpoint 0 had been written"
        return None
    state = load_state(found.path)
    assert state["trainer"]["iteration"] == found.step
    assert found.step >= len(complete) - 1
    return found.step


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory) -> tuple[Path, float]:
    """An uninterrupted run, and how long it trained (from its run directory's creation)."""
    root = tmp_path_factory.mktemp("reference")
    child = killable.start(train_args(tiny_model_dir, root, "straight"), root / "logs")
    config = root / "straight" / "config.yaml"
    while not config.exists() and child.process.is_alive():
        time.sleep(POLL_SECONDS)
    started = time.monotonic()
    assert child.wait() == 0, child.stderr()
    return root / "straight", time.monotonic() - started


# Each kill happens in the process that resumed from the previous one, so the chain also
# resumes runs that were themselves resumed. Per point: the checkpoint folders a kill there
# leaves, and the metrics lines logged (the killed iteration's is not).
NAMED_KILLS = [
    ("eval_before:0", set(), 0),
    ("after_rollout:1", {"checkpoint"}, 0),
    ("mid_update:2", {"checkpoint"}, 1),
    ("checkpoint_write:2", {"checkpoint", "checkpoint.tmp"}, 2),  # .tmp has no manifest yet
    # The instant that used to lose runs: checkpoint/ moved aside, checkpoint.tmp/ not in place.
    ("checkpoint_swap:2", {"checkpoint.old", "checkpoint.tmp"}, 2),
    ("checkpoint_cleanup:3", {"checkpoint", "checkpoint.old"}, 3),  # resumed at 2, from .tmp
    ("final_writes:3", {"checkpoint"}, 3),  # the LoRA is exported, summary.json not written
]


def test_a_kill_at_each_named_point_resumes_to_the_uninterrupted_result(
    tiny_model_dir, tmp_path, reference
):
    run_dir = tmp_path / "killed"
    args = train_args(tiny_model_dir, tmp_path, "killed")
    for fault, folders, logged in NAMED_KILLS:
        code, err = killable.run(args, tmp_path / "logs", fault=fault)
        assert code == -signal.SIGKILL, (fault, err)
        assert {p.name for p in run_dir.glob("checkpoint*")} == folders, fault
        metrics = run_dir / "metrics.jsonl"
        assert len(read_jsonl(metrics) if metrics.exists() else []) == logged, fault
        assert_checkpoint_kept(run_dir)
        args = resume_args(run_dir)
    code, err = killable.run(args, tmp_path / "logs")
    assert code == 0, err
    assert_same_results(run_dir, reference[0])
    # TensorBoard: the steps a killed process logged after its checkpoint are purged on resume,
    # so each iteration shows once (kills at checkpoint_write:2 and mid_update:2 left a step 2).
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    steps = [event.step for event in events.Scalars("reward/composite_mean")]
    assert steps == [1, 2, 3]


def test_kills_at_random_instants_resume_to_the_uninterrupted_result(
    tiny_model_dir, tmp_path, reference
):
    """RANDOM_KILLS runs, each SIGKILLed at a uniformly random instant of its training (timed
    from its run directory's creation), then resumed once."""
    draw = random.Random(RANDOM_SEED)
    reference_dir, duration = reference
    landed = []
    for i in range(RANDOM_KILLS):
        run_dir = tmp_path / f"run{i}"
        child = killable.start(
            train_args(tiny_model_dir, tmp_path, run_dir.name), tmp_path / "logs"
        )
        while not run_dir.exists() and child.process.is_alive():
            time.sleep(POLL_SECONDS)
        time.sleep(draw.uniform(0, duration))
        child.process.kill()
        if child.wait() == 0:  # finished before the kill: nothing to resume
            landed.append("finished")
        else:
            landed.append(assert_checkpoint_kept(run_dir))
            code, err = killable.run(resume_args(run_dir), tmp_path / "logs")
            assert code == 0, err
        assert_same_results(run_dir, reference_dir)
    # The instants spread over the run: before the first checkpoint and at several others.
    assert len(set(landed)) >= 3, landed


def test_sigterm_stops_after_the_iteration_with_a_checkpoint_and_resumes_exactly(
    tiny_model_dir, tmp_path, reference
):
    """SIGTERM mid-update (sent by the run to itself, at a fixed instant): the iteration
    finishes, is checkpointed, and the run exits 143 saying how to resume."""
    run_dir = tmp_path / "termed"
    args = train_args(tiny_model_dir, tmp_path, "termed")
    code, err = killable.run(args, tmp_path / "logs", fault="mid_update:2:term")
    assert code == EXIT_SIGTERM, err
    assert f"stopped by SIGTERM after iteration 2 of {ITERATIONS}" in err
    assert f"--resume {run_dir}" in err.strip().splitlines()[-1]
    assert "Traceback" not in err
    assert find_checkpoint(run_dir / "checkpoint").step == 2
    assert len(read_jsonl(run_dir / "metrics.jsonl")) == 2
    code, err = killable.run(resume_args(run_dir), tmp_path / "logs")
    assert code == 0, err
    assert_same_results(run_dir, reference[0])


def test_ctrl_c_from_outside_stops_cleanly_and_resumes_exactly(tiny_model_dir, tmp_path, reference):
    """SIGINT sent by another process once the first iteration is logged (wherever the run is
    then): exit 130, a checkpoint of the last finished iteration, an exact resume."""
    run_dir = tmp_path / "interrupted"
    child = killable.start(train_args(tiny_model_dir, tmp_path, "interrupted"), tmp_path / "logs")
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.is_file() and metrics.read_text()) and child.process.is_alive():
        time.sleep(POLL_SECONDS)
    os.kill(child.pid, signal.SIGINT)  # two iterations, an eval and the writes are still ahead
    code = child.wait()
    assert code == EXIT_SIGINT, child.stderr()
    stopped_at = find_checkpoint(run_dir / "checkpoint").step
    assert stopped_at == len(read_jsonl(metrics)) >= 1
    assert f"--resume {run_dir}" in child.stderr()
    code, err = killable.run(resume_args(run_dir), tmp_path / "logs")
    assert code == 0, err
    assert_same_results(run_dir, reference[0])


def test_a_second_process_on_a_run_directory_is_refused_and_changes_nothing(
    tiny_model_dir, tmp_path, reference
):
    """The first process is frozen (SIGSTOP) mid-run, holding the lock; a resume, a restart and
    a fresh run of the same name each get one line and exit 2, and the directory is unchanged.
    Killed, the first process's lock goes with it, and the run resumes exactly."""
    run_dir = tmp_path / "shared"
    args = train_args(tiny_model_dir, tmp_path, "shared")
    first = killable.start(args, tmp_path / "logs", fault="after_rollout:2:stop")
    while not _is_stopped(first.pid) and first.process.is_alive():
        time.sleep(POLL_SECONDS)
    files = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    for second in (resume_args(run_dir), ["train", "--restart", run_dir, "--quiet"], args):
        code, err = killable.run(second, tmp_path / "logs")
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, err
        assert str(run_dir) in lines[0] and ("in use" in lines[0] or "already exists" in lines[0])
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == files
    first.process.kill()
    assert first.wait() == -signal.SIGKILL
    code, err = killable.run(resume_args(run_dir), tmp_path / "logs")
    assert code == 0, err
    assert_same_results(run_dir, reference[0])


def _is_stopped(pid: int) -> bool:
    """Whether `pid` is frozen by SIGSTOP: state T in /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return fields[0] == "T"
