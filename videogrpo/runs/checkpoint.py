"""Atomic, pickle-free checkpoints: nested state → one safetensors file + one JSON skeleton.

Optimizer and RNG states are nested dicts/lists of tensors and plain values. `save_state` stores
every tensor in safetensors and the rest as JSON with placeholders, so loading never unpickles
anything. A checkpoint folder is written under a temporary name and renamed into place, so an
interrupted save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from videogrpo.errors import UserError

TENSORS_FILE = "tensors.safetensors"
SKELETON_FILE = "state.json"
_TENSOR_KEY = "__tensor__"


def _tensor_identity(tensor: torch.Tensor) -> tuple:
    """Views of one storage (tied embeddings) are stored once: safetensors refuses aliases."""
    return (
        tensor.device.type,
        tensor.untyped_storage().data_ptr(),
        tensor.storage_offset(),
        tuple(tensor.shape),
        tuple(tensor.stride()),
        tensor.dtype,
    )


def _flatten(value: Any, tensors: dict[str, torch.Tensor], seen: dict[tuple, str]) -> Any:
    if isinstance(value, torch.Tensor):
        identity = _tensor_identity(value)
        if identity not in seen:
            seen[identity] = str(len(tensors))
            tensors[seen[identity]] = value.detach().cpu().contiguous().clone()
        return {_TENSOR_KEY: seen[identity]}
    if isinstance(value, dict):
        if not all(isinstance(k, str | int) for k in value):
            raise TypeError(f"checkpoint dict keys must be str or int, got {list(value)[:3]}")
        # JSON keys are strings: remember which were ints (optimizer state is keyed by int).
        return {"__dict__": [[k, _flatten(v, tensors, seen)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        items = [_flatten(v, tensors, seen) for v in value]
        return {"__list__": items, "tuple": isinstance(value, tuple)}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot checkpoint a {type(value).__name__}")


def _unflatten(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if _TENSOR_KEY in value:
            return tensors[value[_TENSOR_KEY]]
        if "__dict__" in value:
            return {k: _unflatten(v, tensors) for k, v in value["__dict__"]}
        if "__list__" in value:
            items = [_unflatten(v, tensors) for v in value["__list__"]]
            return tuple(items) if value["tuple"] else items
    return value


def save_state(directory: Path, state: dict[str, Any]) -> None:
    """Write `state` into `directory` (which must already exist): tensors + JSON skeleton."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, tensors, {})
    save_file(tensors, str(directory / TENSORS_FILE))
    (directory / SKELETON_FILE).write_text(json.dumps(skeleton))


def load_state(directory: Path) -> dict[str, Any]:
    """Read what `save_state` wrote; a missing or damaged file is a UserError naming it."""
    tensors_path, skeleton_path = directory / TENSORS_FILE, directory / SKELETON_FILE
    for path in (tensors_path, skeleton_path):
        if not path.is_file():
            raise UserError(f"checkpoint file {path} is missing; the checkpoint is incomplete")
    try:
        tensors = load_file(str(tensors_path))
        skeleton = json.loads(skeleton_path.read_text())
    except (SafetensorError, OSError, json.JSONDecodeError) as error:
        raise UserError(f"checkpoint in {directory} is damaged ({error})") from error
    return _unflatten(skeleton, tensors)


def temporary_folder(directory: Path) -> Path:
    """Where `write_atomically` writes `directory` before swapping it in."""
    return directory.with_name(directory.name + ".tmp")


def write_atomically(directory: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` on a fresh temporary folder, then swap it into `directory`."""
    directory = Path(directory)
    tmp = temporary_folder(directory)
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
    os.replace(tmp, directory)
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomically(path: Path, text: str) -> None:
    """Write a small text file (JSON summary, config) so readers never see half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """The global torch RNG (CPU and, when present, CUDA) — all the trainer draws from."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
