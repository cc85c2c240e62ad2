"""Prompt embeddings computed once and reused: in memory, and optionally on disk across runs.

A frozen text encoder gives every RL step the same embeddings for a prompt, so they are computed
once. The big cost is storage: pipelines pad every prompt to a fixed length (Wan 512 tokens,
HunyuanVideo 1.5 1,000), and a 4,096-wide bfloat16 row per padding token makes one Wan prompt
4 MB. Only the rows up to the last real token are kept; the padding is restored as zeros.

That is exact for the padding each pipeline produces or ignores: Wan zero-pads its embeddings
itself, and where a pipeline leaves the encoder's output in the padding (LTX, HunyuanVideo 1.5)
an attention mask excludes those rows, so zeros there change no output. Fresh embeddings go
through the same trimming and padding, so a cached prompt is bitwise the fresh one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from videogrpo.errors import UserError

PROMPT_KEY = "prompt"
LENGTHS_KEY = "lengths"


@dataclass(frozen=True)
class PaddedField:
    """A (length, …) field padded to a fixed length; `mask` names its 0/1 mask field, if any."""

    name: str
    mask: str | None = None


@dataclass
class Entry:
    """One prompt's fields, trimmed; `lengths` holds each trimmed field's full length."""

    fields: dict[str, Tensor]
    lengths: dict[str, int]

    def padded(self) -> dict[str, Tensor]:
        return {
            name: _pad(value, self.lengths[name]) if name in self.lengths else value
            for name, value in self.fields.items()
        }


def trim(fields: Mapping[str, Tensor], padded: tuple[PaddedField, ...]) -> Entry:
    """Drop the rows after the last real token of each padded field (and of its mask)."""
    kept = dict(fields)
    lengths: dict[str, int] = {}
    for spec in padded:
        value = fields[spec.name]
        if spec.mask is not None:
            real = fields[spec.mask].nonzero()
        else:  # no mask: the pipeline zero-padded, so trailing all-zero rows are padding
            real = value.flatten(1).abs().sum(dim=1).nonzero()
        stop = int(real.max()) + 1 if real.numel() else 0
        for name in (spec.name, spec.mask):
            if name is not None:
                lengths[name] = fields[name].shape[0]
                kept[name] = fields[name][:stop].clone()
    return Entry(kept, lengths)


def _pad(value: Tensor, length: int) -> Tensor:
    if value.shape[0] == length:
        return value
    padding = value.new_zeros(length - value.shape[0], *value.shape[1:])
    return torch.cat([value, padding])


class TextCache:
    """Prompt → trimmed fields, in memory; with a `directory`, also one safetensors file per
    prompt under a folder named by `fingerprint` (what produced the embeddings)."""

    def __init__(self, directory: str | Path | None, fingerprint: str) -> None:
        self.memory: dict[str, Entry] = {}
        self.folder = None if directory is None else Path(directory) / fingerprint

    def __contains__(self, prompt: str) -> bool:
        return prompt in self.memory or (self.folder is not None and self._file(prompt).is_file())

    def clear(self) -> None:
        """Forget the in-memory entries (the disk copies are keyed by weights and stay valid)."""
        self.memory.clear()

    def get(self, prompt: str) -> Entry | None:
        entry = self.memory.get(prompt)
        if entry is None and self.folder is not None:
            entry = self._read(prompt)
        return entry

    def put(self, prompt: str, entry: Entry, keep_in_memory: bool = True) -> None:
        if keep_in_memory:
            self.memory[prompt] = entry
        if self.folder is not None and not self._file(prompt).is_file():
            self._write(prompt, entry)

    def _file(self, prompt: str) -> Path:
        assert self.folder is not None
        digest = hashlib.sha256(prompt.encode("utf-8")).hexdigest()
        return self.folder / digest[:2] / f"{digest}.safetensors"

    def _read(self, prompt: str) -> Entry | None:
        file = self._file(prompt)
        if not file.is_file():
            return None
        try:
            with safe_open(file, "pt") as handle:
                metadata = handle.metadata() or {}
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
        except (OSError, SafetensorError, ValueError) as error:
            raise UserError(
                f"memory.text_cache_dir: {file} is unreadable ({error}); delete it to re-encode"
            ) from error
        if metadata.get(PROMPT_KEY) != prompt:
            return None  # a hash collision: encode afresh rather than use another prompt's
        return Entry(tensors, {k: int(v) for k, v in json.loads(metadata[LENGTHS_KEY]).items()})

    def _write(self, prompt: str, entry: Entry) -> None:
        """Atomic: a crash leaves no half-written file that a later run would trust."""
        file = self._file(prompt)
        file.parent.mkdir(parents=True, exist_ok=True)
        partial = file.with_suffix(".partial")
        metadata = {PROMPT_KEY: prompt, LENGTHS_KEY: json.dumps(entry.lengths)}
        tensors = {name: value.contiguous() for name, value in entry.fields.items()}
        save_file(tensors, partial, metadata=metadata)
        partial.replace(file)


def fingerprint(parts: Mapping[str, object], folder: Path, subfolders: tuple[str, ...]) -> str:
    """Identify what produced embeddings: the settings and the text components' files (name,
    size, modification time; hashing many GB of weights would cost more than encoding)."""
    described: dict[str, object] = {key: str(value) for key, value in parts.items()}
    for subfolder in subfolders:
        root = folder / subfolder
        if root.is_dir():
            described[subfolder] = sorted(
                (str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns)
                for f in root.rglob("*")
                if f.is_file()
            )
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()[:16]
