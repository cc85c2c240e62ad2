"""Prompt sets and the order a run draws them in.

A prompt set is a split of the synthetic world by name (train, heldout, all) or a file: `.txt`
(one prompt per line, `#` comments), `.jsonl` (one object per line with a `prompt`, `caption` or
`text` key, the first found) or `.csv` (a header row with one of those columns). Prompts longer
than a text encoder takes are kept whole here; the backbone truncates them as its diffusers
pipeline does, and says so.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch

from videogrpo.embedded.world import grammar
from videogrpo.errors import UserError

WORLD_SPLITS = ("train", "heldout", "all")
# Where a jsonl object or a csv header holds the prompt, in order of preference (the names the
# common video prompt sets use: VidProM and VBench `prompt`, captioned data `caption`/`text`).
PROMPT_KEYS = ("prompt", "caption", "text")


def load_prompts(spec: str) -> list[str]:
    """`spec` is a world split name or the path of a .txt, .jsonl or .csv prompt file."""
    if spec in WORLD_SPLITS:
        return list(grammar.prompts(spec))
    path = Path(spec)
    try:
        is_file = path.is_file()
    except OSError:  # e.g. a name too long for the file system
        is_file = False
    if not is_file:
        raise UserError(
            f"prompts {spec!r} is neither a world split ({', '.join(WORLD_SPLITS)}) nor a file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise UserError(f"prompt file {spec!r} cannot be read ({reason})") from error
    if "\0" in text:
        raise UserError(f"prompt file {spec!r} holds a NUL byte; it is not a text file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        prompts = _jsonl_prompts(text, spec)
    elif suffix == ".csv":
        prompts = _csv_prompts(text, spec)
    else:
        prompts = [line.strip() for line in text.splitlines()]
        prompts = [p for p in prompts if p and not p.startswith("#")]
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise UserError(
            f"prompt file {spec!r} holds no prompts (.txt: one per line, # for comments; "
            f".jsonl / .csv: a {'/'.join(PROMPT_KEYS)} field)"
        )
    return prompts


def _jsonl_prompts(text: str, spec: str) -> list[str]:
    prompts = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"prompt file {spec!r}, line {number}: not JSON ({error})") from error
        key = next((k for k in PROMPT_KEYS if isinstance(record, dict) and k in record), None)
        if key is None or not isinstance(record[key], str):
            raise UserError(
                f"prompt file {spec!r}, line {number}: expected an object with a string "
                f"{' / '.join(PROMPT_KEYS)} field"
            )
        prompts.append(record[key])
    return prompts


def _csv_prompts(text: str, spec: str) -> list[str]:
    reader = csv.DictReader(text.splitlines())
    columns = [name.strip().lower() for name in reader.fieldnames or []]
    key = next((k for k in PROMPT_KEYS if k in columns), None)
    if key is None:
        raise UserError(
            f"prompt file {spec!r}: no {' / '.join(PROMPT_KEYS)} column in its header "
            f"(found: {', '.join(columns) or 'none'})"
        )
    original = (reader.fieldnames or [])[columns.index(key)]
    return [row[original] or "" for row in reader]


class PromptOrder:
    """Which prompt each draw takes: `random` (independent draws from the run's data stream) or
    `shuffle` (every prompt once per epoch, in an order seeded by the run seed and the epoch).

    `shuffle` needs only its position to resume: the permutation of epoch e is a function of
    (seed, e), so `state_dict` is one number and a resumed run continues mid-epoch exactly.
    """

    def __init__(self, mode: str, num_prompts: int, seed: int) -> None:
        self.mode, self.num_prompts, self.seed = mode, num_prompts, seed
        self.position = 0  # draws taken so far (shuffle)
        self._epoch: int | None = None
        self._permutation = np.empty(0, dtype=np.int64)

    def draw(self, count: int, generator: torch.Generator) -> list[int]:
        """Indices of the next `count` prompts; `random` draws them from `generator`."""
        if self.mode == "random":
            return torch.randint(self.num_prompts, (count,), generator=generator).tolist()
        picks = []
        for _ in range(count):
            epoch, index = divmod(self.position, self.num_prompts)
            picks.append(int(self._epoch_permutation(epoch)[index]))
            self.position += 1
        return picks

    def _epoch_permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:  # numpy derives an independent stream from (seed, epoch)
            self._permutation = np.random.default_rng([self.seed, epoch]).permutation(
                self.num_prompts
            )
            self._epoch = epoch
        return self._permutation

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = int(state["position"])
