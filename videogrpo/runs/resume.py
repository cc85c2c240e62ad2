"""Starting, resuming and restarting a run directory: everything read and checked first.

A resume reads the saved config (plus `--set` overrides that may not change what the weights
are), the newest complete checkpoint and the logs up to its iteration, and refuses with one line
naming the file if any is damaged; it writes nothing, so a refused resume leaves the run
directory exactly as it was. A run killed before its first checkpoint resumes from the start.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from videogrpo.config import TrainConfig, load_config
from videogrpo.errors import UserError
from videogrpo.runs.checkpoint import (
    FoundCheckpoint,
    find_checkpoint,
    load_checkpoint,
    restore_rng_state,
)
from videogrpo.runs.rundir import check_new_location, check_writable
from videogrpo.runs.tracking import records_through
from videogrpo.training.trainer import GRPOTrainer

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
SUMMARY_FILE = "summary.json"
CHECKPOINT_KEYS = ("trainer", "rng", "wall_seconds", "eval_before")
# What the saved weights are: a resume may not change these (the weights would not fit, or
# would mean something else).
WEIGHT_DEFINING_SETTINGS = (
    "model.type",
    "model.finetune",
    "model.lora_rank",
    "model.lora_alpha",
    "model.lora_targets",
)
MAX_REASON_CHARS = 200  # of an exception's text quoted in a one-line error

logger = logging.getLogger(__name__)


def default_run_name(config_path: str | None, seed: int) -> str:
    preset = Path(config_path).stem if config_path else "default"
    return f"{preset}-seed{seed}-{datetime.now():%Y%m%d-%H%M%S}"


@dataclass
class ResumePoint:
    """What a resumed run continues from, all read and checked before anything is written."""

    state: dict[str, Any] | None  # None: stopped before its first checkpoint, starts over
    found: FoundCheckpoint | None
    metrics_lines: list[str]  # the log lines the checkpoint's iteration covers
    eval_lines: list[str]


def prepare_run(config_path: str | None, overrides: list[str]) -> tuple[TrainConfig, Path]:
    """The validated config and the run directory a new run will create (refused if taken)."""
    config = load_config(config_path, overrides)
    name = config.run.name or default_run_name(config_path, config.run.seed)
    run_dir = Path(config.run.output_dir) / name
    check_new_location(run_dir)
    if run_dir.is_dir() and any(run_dir.iterdir()):
        refuse_existing_run(run_dir)
    return config, run_dir


def refuse_existing_run(run_dir: Path) -> None:
    """The one message for a taken run directory; it agrees with what --resume will do."""
    try:
        started = find_checkpoint(run_dir / CHECKPOINT_DIR) is not None
    except UserError:
        started = True
    what = "" if started else " (it stopped before its first checkpoint: --resume starts it over)"
    raise UserError(
        f"run directory {run_dir} already exists{what}; continue it with --resume {run_dir}, or "
        f"start it over from its saved config with --restart {run_dir}"
    )


def saved_config(run_dir: Path, overrides: list[str], flag: str) -> TrainConfig:
    """The config a run directory was started with, plus `--set` overrides."""
    if not run_dir.is_dir():
        raise UserError(f"cannot {flag} {run_dir}: not a directory; pass a run directory")
    if not (run_dir / CONFIG_FILE).is_file():
        raise UserError(f"cannot {flag} {run_dir}: no {CONFIG_FILE} there; pass a run directory")
    check_writable(run_dir, f"cannot {flag} {run_dir}")
    return load_config(run_dir / CONFIG_FILE, overrides)


def check_resumable(run_dir: Path, config: TrainConfig) -> None:
    """Overrides may not change what the saved weights are: "this run was trained with …"."""
    saved = load_config(run_dir / CONFIG_FILE)
    for key in WEIGHT_DEFINING_SETTINGS:
        section, name = key.split(".")
        before, after = (
            getattr(getattr(saved, section), name),
            getattr(getattr(config, section), name),
        )
        if before != after:
            raise UserError(
                f"cannot resume {run_dir} with {key}={after!r}: this run was trained with "
                f"{key}={before!r}; resume without that --set, or start a new run"
            )


def finished_iterations(run_dir: Path) -> int | None:
    """How many iterations summary.json says the run finished, or None without a summary."""
    summary_file = run_dir / SUMMARY_FILE
    if not summary_file.is_file():
        return None
    try:
        done = json.loads(summary_file.read_text(encoding="utf-8"))["iterations"]
        if type(done) is not int:
            raise TypeError("iterations is not an integer")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"{summary_file} is damaged ({error}); delete it to redo the run's final eval"
        ) from error
    return done


def refuse_finished_run(run_dir: Path, done: int, iterations: int) -> None:
    """A finished run resumed without more iterations would only redo its final eval."""
    raise UserError(
        f"run {run_dir} already finished {done} iterations; to continue it, raise the total: "
        f"--resume {run_dir} --set run.iterations={done + iterations}"
    )


def read_resume_point(run_dir: Path) -> ResumePoint:
    """The newest complete checkpoint and the log lines it covers; reads, never writes."""
    try:
        loaded = load_checkpoint(run_dir / CHECKPOINT_DIR)
    except UserError as error:
        raise UserError(
            f"cannot resume {run_dir}: {error}; start it over with --restart {run_dir}"
        ) from error
    if loaded is None:
        logger.warning(
            "%s stopped before its first checkpoint; starting it over with its saved config",
            run_dir,
        )
        return ResumePoint(None, None, [], [])
    state, found = loaded
    if not isinstance(state, dict) or not all(key in state for key in CHECKPOINT_KEYS):
        raise UserError(
            f"cannot resume {run_dir}: the checkpoint in {found.path} lacks "
            f"{', '.join(CHECKPOINT_KEYS)}; start it over with --restart {run_dir}"
        )
    iteration = found.step
    return ResumePoint(
        state,
        found,
        records_through(run_dir / METRICS_FILE, iteration),
        records_through(run_dir / EVAL_FILE, iteration),
    )


def restore(trainer: GRPOTrainer, run_dir: Path, state: dict[str, Any]) -> None:
    """Load a checkpoint into the freshly built trainer; a misfit is a one-line error."""
    try:
        trainer.load_state_dict(state["trainer"])
        restore_rng_state(state["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as error:
        reason = " ".join(str(error).split())[:MAX_REASON_CHARS]
        raise UserError(
            f"cannot resume {run_dir}: its checkpoint does not fit the run's settings ({reason}); "
            "resume without --set for the model or method, or start a new run"
        ) from error
