"""Pickle-free checkpoints that survive a kill at any instant.

A checkpoint is a folder: `tensors.safetensors` (every tensor of the state), `state.json` (the
rest, with placeholders for the tensors, so loading never unpickles anything) and, written last,
`manifest.json`: the checkpoint's step and each file's size and SHA-256. A folder is complete
exactly when its manifest parses and every file matches it.

`save_checkpoint(path, state, step)` writes `path.tmp/`, then swaps it in: `path/` → `path.old/`,
`path.tmp/` → `path/`, remove `path.old/`. A kill at any instant leaves at least one complete
folder among the three names, and `find_checkpoint(path)` returns the newest complete one (the
highest step; on a tie `path/`, then `.tmp`, then `.old`). `promote_checkpoint` moves it back to
`path/` and removes the leftovers; `save_checkpoint` does the same before it writes, so a run
that resumed from `path.tmp/` never deletes its only checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from videogrpo import faults
from videogrpo.errors import UserError

TENSORS_FILE = "tensors.safetensors"
SKELETON_FILE = "state.json"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
_HASH_CHUNK_BYTES = 1 << 20
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
    (directory / SKELETON_FILE).write_text(json.dumps(skeleton), encoding="utf-8")


def load_state(directory: Path) -> dict[str, Any]:
    """Read what `save_state` wrote; a missing or damaged file is a UserError naming it."""
    tensors_path, skeleton_path = directory / TENSORS_FILE, directory / SKELETON_FILE
    for path in (tensors_path, skeleton_path):
        if not path.is_file():
            raise UserError(f"checkpoint file {path} is missing; the checkpoint is incomplete")
    try:
        tensors = load_file(str(tensors_path))
        return _unflatten(json.loads(skeleton_path.read_text(encoding="utf-8")), tensors)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as error:
        reason = " ".join(str(error).split())
        raise UserError(f"checkpoint in {directory} is damaged ({reason})") from error


def write_atomically(directory: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` on a fresh temporary folder, then swap it into `directory`.

    For folders other than checkpoints (the exported LoRA or model): a kill leaves the previous
    folder or the new one, possibly under the `.old` name, and the resumed run writes it again.
    """
    directory = Path(directory)
    tmp, _ = _siblings(directory)
    _fresh_folder(tmp)
    write(tmp)
    _swap_in(tmp, directory, fault_step=None)


def write_text_atomically(path: Path, text: str) -> None:
    """Write a small text file (JSON summary, config) so readers never see half of it."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


@dataclass(frozen=True)
class FoundCheckpoint:
    """A complete checkpoint folder and the step its manifest records."""

    path: Path
    step: int


def save_checkpoint(
    directory: Path,
    state: dict[str, Any],
    step: int,
    write_more: Callable[[Path], None] | None = None,
) -> None:
    """Write `state` as checkpoint `step` of `directory` (see the module docstring).

    `write_more(folder)` adds files to the checkpoint before its manifest is written (the other
    ranks' shards of a torchrun job, which they write into `temporary_folder(directory)`).
    """
    directory = Path(directory)
    tmp, old = _siblings(directory)
    if tmp.exists() or old.exists():  # left by a kill: keep the newest complete one
        try:
            found = find_checkpoint(directory)
        except UserError:  # nothing complete to keep; the new checkpoint replaces it
            found = None
        if found is not None:
            promote_checkpoint(found, directory)
    _fresh_folder(tmp)
    save_state(tmp, state)
    if write_more is not None:
        write_more(tmp)
    faults.reached("checkpoint_write", step)
    write_manifest(tmp, step)
    _swap_in(tmp, directory, fault_step=step)


def load_checkpoint(directory: Path) -> tuple[dict[str, Any], FoundCheckpoint] | None:
    """The state of the newest complete checkpoint of `directory` and where it was; None if
    there is none. Reads only: the folders are left as they are (see `promote_checkpoint`)."""
    found = find_checkpoint(Path(directory))
    if found is None:
        return None
    return load_state(found.path), found


def find_checkpoint(directory: Path) -> FoundCheckpoint | None:
    """The newest complete checkpoint among `directory`, `.tmp` and `.old`, or None if none.

    An unfinished `.tmp` (killed while writing) or a half-removed `.old` is what a kill leaves
    and is passed over. A damaged `directory` with no complete folder beside it is a UserError
    naming the problem; `directory` is only ever a complete folder renamed into place.
    """
    directory = Path(directory)
    order = (directory, *_siblings(directory))
    steps = {path: _manifest_step(path) for path in order if path.is_dir()}
    ranked = sorted(
        (path for path, step in steps.items() if step is not None),
        key=lambda path: (-steps[path], order.index(path)),
    )
    for path in ranked:
        if checkpoint_problem(path) is None:
            return FoundCheckpoint(path, steps[path])
    if directory.is_dir():
        raise UserError(
            f"checkpoint {directory} is damaged ({checkpoint_problem(directory)}) and no "
            "complete copy is beside it"
        )
    return None


def promote_checkpoint(found: FoundCheckpoint, directory: Path) -> None:
    """Make `found` the folder `directory` and remove the leftovers of the other two names.

    Every intermediate state keeps `found` complete under one of the three names, so a kill
    during the promotion loses nothing either.
    """
    directory = Path(directory)
    tmp, old = _siblings(directory)
    if found.path == tmp:
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            os.replace(directory, old)
        os.replace(tmp, directory)
    elif found.path == old:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(old, directory)
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    _fsync_directory(directory.parent)


def write_manifest(directory: Path, step: int) -> None:
    """Record `step` and every file's size and hash, after making the files durable; last."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        if name == MANIFEST_FILE:
            continue
        _fsync_file(path)
        files[name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {"format": MANIFEST_FORMAT, "step": step, "files": files}
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    _fsync_file(path)
    _fsync_directory(directory)


def checkpoint_problem(directory: Path) -> str | None:
    """Why `directory` is not a complete checkpoint (one phrase), or None if it is."""
    manifest = _read_manifest(directory)
    if isinstance(manifest, str):
        return manifest
    for name, expected in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{name} has {size} bytes, the manifest {expected['bytes']}"
        if _sha256(path) != expected["sha256"]:
            return f"{name} does not match its hash in the manifest"
    return None


def _read_manifest(directory: Path) -> dict[str, Any] | str:
    """The parsed manifest, or why there is none usable."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return f"no {MANIFEST_FILE}: it was not finished"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        step = manifest["step"]
        files = manifest["files"]
        valid = (
            manifest["format"] == MANIFEST_FORMAT
            and isinstance(step, int)
            and isinstance(files, dict)
            and all(
                isinstance(entry, dict)
                and isinstance(entry.get("bytes"), int)
                and isinstance(entry.get("sha256"), str)
                for entry in files.values()
            )
        )
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        valid = False
    return manifest if valid else f"{MANIFEST_FILE} is unreadable"


def _manifest_step(directory: Path) -> int | None:
    manifest = _read_manifest(directory)
    return None if isinstance(manifest, str) else manifest["step"]


def temporary_folder(directory: Path) -> Path:
    """Where `save_checkpoint` writes checkpoint `directory` before swapping it in."""
    return _siblings(Path(directory))[0]


def _siblings(directory: Path) -> tuple[Path, Path]:
    """The temporary and the previous folder of `directory`: `name.tmp`, `name.old`."""
    return (
        directory.with_name(directory.name + ".tmp"),
        directory.with_name(directory.name + ".old"),
    )


def _fresh_folder(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _swap_in(tmp: Path, directory: Path, fault_step: int | None) -> None:
    """`directory` → `.old`, `tmp` → `directory`, remove `.old`: each step one rename."""
    _match_umask(tmp)
    old = _siblings(directory)[1]
    if directory.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(directory, old)
        if fault_step is not None:
            faults.reached("checkpoint_swap", fault_step)
    os.replace(tmp, directory)
    _fsync_directory(directory.parent)
    if fault_step is not None:
        faults.reached("checkpoint_cleanup", fault_step)
    shutil.rmtree(old, ignore_errors=True)


def _match_umask(folder: Path) -> None:
    """safetensors writes 0600; give every file the mode the rest of the run gets (0644 with
    the usual umask 022), so whoever may read the run may read its weights too."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(path: Path) -> None:
    """Make renames inside `path` durable (a power cut, not a kill, could otherwise undo them)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


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
