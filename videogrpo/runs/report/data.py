"""Reading a run directory for the report: file names, parsed metrics, eval results and config.

This is the report's only contact with the disk layout described in docs/report.md, kept apart
from drawing and page assembly so that a change to the run-directory contract touches one module.
Everything here is tolerant of partial runs: missing files read as empty, unreadable lines and
files are skipped and described in `Run.notes`, and null or NaN metric values become NaN (a gap in
a chart) rather than errors. Only a missing run directory or a missing metrics.jsonl is fatal.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from videogrpo.errors import UserError

REPORT_FILE = "report.html"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.yaml"
EVAL_VIDEOS_DIR = "eval_videos"
ROLLOUTS_DIR = "rollouts"
PROMPTS_FILE = "prompts.json"
ITERATION_KEY = "iteration"
COMPOSITE = "composite"
# The eval axes shown in the before → after table (higher is better for each), in this order.
EVAL_AXES = ("vq", "mq", "ta", COMPOSITE)

Row = dict[str, float]


@dataclass
class Run:
    """Everything the report reads from a run directory, already parsed and tolerant of gaps."""

    path: Path
    config: dict[str, Any]
    config_text: str
    metrics: list[Row]
    evals: list[Row]
    summary: dict[str, Any]
    notes: list[str]


def metric_value(value: Any) -> float | None:
    """A metric value as float (None and NaN become NaN: a gap); non-numbers are not metrics."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _read_jsonl(path: Path, notes: list[str]) -> list[Row]:
    """Numeric rows of a JSONL log; unreadable lines (e.g. a half-written last line) are noted."""
    if not path.is_file():
        return []
    rows: list[Row] = []
    skipped = 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if not isinstance(record, dict):
            skipped += 1
            continue
        row = {key: number for key, v in record.items() if (number := metric_value(v)) is not None}
        row.setdefault(ITERATION_KEY, float(len(rows)))
        rows.append(row)
    if skipped:
        notes.append(f"{path.name}: skipped {skipped} unreadable line(s)")
    return rows


def _read_json(path: Path, notes: list[str]) -> Any:
    """A JSON file, or None when it is missing or unreadable (noted: the report still renders)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        notes.append(f"{path.name}: unreadable ({error})")
        return None


def load_run(run_dir: Path) -> Run:
    """Parse RUN_DIR; a `UserError` when it is not a run directory (no metrics.jsonl)."""
    if not run_dir.is_dir():
        problem = "is not a directory" if run_dir.exists() else "not found"
        raise UserError(
            f"run directory {str(run_dir)!r} {problem}; expected a folder written by "
            f"`videogrpo train` containing {METRICS_FILE}"
        )
    metrics_path = run_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise UserError(
            f"{str(run_dir)!r} has no {METRICS_FILE}; expected a run directory written by "
            f"`videogrpo train` ({CONFIG_FILE}, {METRICS_FILE}, {EVAL_FILE}, {EVAL_VIDEOS_DIR}/)"
        )
    notes: list[str] = []
    summary = _read_json(run_dir / SUMMARY_FILE, notes)
    summary = summary if isinstance(summary, dict) else {}
    config_text = ""
    config: Any = None
    if (run_dir / CONFIG_FILE).is_file():
        config_text = (run_dir / CONFIG_FILE).read_text(encoding="utf-8", errors="replace")
        try:
            config = yaml.safe_load(config_text)
        except yaml.YAMLError:
            notes.append(f"{CONFIG_FILE}: not valid YAML; settings are not shown in the header")
    if not isinstance(config, dict) and isinstance(summary.get("config"), dict):
        config = summary["config"]
        config_text = yaml.safe_dump(config, sort_keys=False)
    return Run(
        path=run_dir,
        config=config if isinstance(config, dict) else {},
        config_text=config_text,
        metrics=_read_jsonl(metrics_path, notes),
        evals=_read_jsonl(run_dir / EVAL_FILE, notes),
        summary=summary,
        notes=notes,
    )


def setting(config: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted path such as `sampling.rule`, or None when any part is missing."""
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def iteration_of(folder: Path) -> tuple[int, str]:
    """Sort key of `iter_000040`-style folders: by number, then by name."""
    match = re.search(r"(\d+)$", folder.name)
    return (int(match.group(1)) if match else -1, folder.name)


def iteration_folders(path: Path) -> list[Path]:
    """The `iter_*` folders under `path` (eval videos, rollouts) in iteration order."""
    return sorted((p for p in path.glob("iter_*") if p.is_dir()), key=iteration_of)


def read_prompts(folder: Path, notes: list[str]) -> dict[str, dict[str, Any]]:
    """A folder's prompts.json as {clip file name: its entry (prompt, seed, rewards)}."""
    entries = _read_json(folder / PROMPTS_FILE, notes)
    if not isinstance(entries, list):
        return {}
    return {e["file"]: e for e in entries if isinstance(e, dict) and isinstance(e.get("file"), str)}
