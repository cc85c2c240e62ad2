"""Where a run's numbers go: metrics.jsonl (the record), TensorBoard (the live view).

metrics.jsonl is append-only, one object per iteration; on resume the lines after the checkpoint's
iteration are dropped, so the file always describes exactly one uninterrupted history.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from videogrpo.runs.checkpoint import write_text_atomically


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


class MetricsLog:
    """Append per-iteration (or per-eval) records to a JSONL file and mirror them to TensorBoard."""

    def __init__(self, path: Path, tensorboard_dir: Path | None = None) -> None:
        self.path = path
        self._writer = None
        if tensorboard_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(tensorboard_dir))

    def truncate_after(self, iteration: int) -> None:
        """Forget records of iterations after `iteration` (they will be redone after a resume)."""
        if not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line)["iteration"] <= iteration
        ]
        write_text_atomically(self.path, "".join(line + "\n" for line in kept))

    def write(self, iteration: int, values: dict[str, Any], tensorboard_prefix: str = "") -> None:
        record = {"iteration": iteration}
        for key, value in values.items():
            record[key] = _finite_or_none(float(value)) if isinstance(value, int | float) else value
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._writer is not None:
            for key, value in record.items():
                if key != "iteration" and isinstance(value, int | float):
                    self._writer.add_scalar(tensorboard_prefix + key, value, iteration)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
