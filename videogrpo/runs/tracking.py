"""Where a run's numbers go: metrics.jsonl (the record), TensorBoard (the live view).

metrics.jsonl and eval.jsonl are append-only, one object per iteration, and strict JSON: a
non-finite number (a NaN reward, an infinite KL) is written as null and the row says how many it
holds (`nonfinite_count`). On resume the lines after the checkpoint's iteration are dropped, so a
file always describes one uninterrupted history; a half-written last line is what a kill during
an append leaves and is dropped too, while a damaged line anywhere else is a UserError naming it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from videogrpo.errors import UserError
from videogrpo.runs.checkpoint import write_text_atomically

NONFINITE_KEY = "nonfinite_count"


def strict_json(value: Any) -> tuple[Any, int]:
    """`value` with every non-finite float replaced by None, and how many were replaced."""
    if isinstance(value, float) and not math.isfinite(value):
        return None, 1
    if isinstance(value, dict):
        pairs = [(key, strict_json(item)) for key, item in value.items()]
        return {key: item for key, (item, _) in pairs}, sum(count for _, (_, count) in pairs)
    if isinstance(value, list | tuple):
        items = [strict_json(item) for item in value]
        return [item for item, _ in items], sum(count for _, count in items)
    return value, 0


def dumps_strict(value: Any, **options: Any) -> str:
    """JSON text that any parser reads: non-finite numbers become null (see `strict_json`)."""
    return json.dumps(strict_json(value)[0], allow_nan=False, **options)


def records_through(path: Path, iteration: int) -> list[str]:
    """The lines of JSONL log `path` recording iterations up to `iteration` (none if missing).

    Reads only, so a resume can check every file before it changes any.
    """
    if not path.is_file():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {path} ({error}); fix or delete the file") from error
    lines = text.split("\n")
    lines.pop()  # after the last newline: "" or a line a kill cut short
    kept = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or type(record.get("iteration")) is not int:
            raise UserError(
                f"{path} line {number} is not a JSON object with an integer 'iteration'; "
                "fix or delete that line"
            )
        if record["iteration"] <= iteration:
            kept.append(line)
    return kept


class MetricsLog:
    """Append per-iteration (or per-eval) records to a JSONL file and mirror them to TensorBoard.

    `purge_step`: on resume, TensorBoard hides the steps from there on that the stopped process
    had logged, so the resumed ones do not show twice.
    """

    def __init__(
        self, path: Path, tensorboard_dir: Path | None = None, purge_step: int | None = None
    ) -> None:
        self.path = path
        self._writer = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(tensorboard_dir), purge_step=purge_step)

    def keep_only(self, lines: list[str]) -> None:
        """Rewrite the file to `lines` (from `records_through`), dropping every later record."""
        if self.path.exists() or lines:
            write_text_atomically(self.path, "".join(line + "\n" for line in lines))

    def write(self, iteration: int, values: dict[str, Any], tensorboard_prefix: str = "") -> None:
        record: dict[str, Any] = {"iteration": iteration}
        for key, value in values.items():
            record[key] = float(value) if isinstance(value, int | float) else value
        record, nonfinite = strict_json(record)
        if nonfinite:
            record[NONFINITE_KEY] = nonfinite
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, allow_nan=False) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if key not in ("iteration", NONFINITE_KEY) and isinstance(value, int | float):
                    self._writer.add_scalar(tensorboard_prefix + key, value, iteration)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
