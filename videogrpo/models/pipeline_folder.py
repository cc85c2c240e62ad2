"""Reading a diffusers pipeline folder by path, with one-line errors that name the fix.

Every built-in backbone is loaded from a local folder that stock `<Pipeline>.from_pretrained`
reads (offline: nothing is fetched). Before diffusers sees it, the folder is checked here, so a
wrong folder fails with a sentence instead of a stack trace from deep inside diffusers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from videogrpo.errors import UserError

MODEL_INDEX = "model_index.json"
# Optional per-folder defaults (video size, backbone options), ignored by diffusers.
DEFAULTS_FILE = "videogrpo.json"


def read_pipeline_folder(
    path: Path, classes: tuple[str, ...], components: tuple[str, ...]
) -> dict[str, Any]:
    """model_index.json of a diffusers pipeline folder, checked: a one-line error names the fix."""
    index_file = path / MODEL_INDEX
    if not path.is_dir():
        raise UserError(f"model.path: {str(path)!r} is not a folder")
    if not index_file.is_file():
        raise UserError(f"model.path: {str(path)!r} has no {MODEL_INDEX}; not a diffusers pipeline")
    try:
        index = json.loads(index_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"model.path: {index_file} is not readable JSON ({error})") from error
    if not isinstance(index, dict) or index.get("_class_name") not in classes:
        found = index.get("_class_name") if isinstance(index, dict) else None
        raise UserError(
            f"model.path: {index_file} names pipeline {found!r}; this model.type loads "
            f"{' or '.join(classes)}"
        )
    missing = [name for name in components if not component_present(path, index, name)]
    if missing:
        raise UserError(
            f"model.path: {str(path)!r} lacks the pipeline component(s) {', '.join(missing)} "
            f"({MODEL_INDEX} must list each and its folder must exist)"
        )
    return index


def component_present(path: Path, index: Mapping[str, Any], name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, list) and entry[0] is not None and (path / name).is_dir()


def read_folder_defaults(path: Path, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The folder's videogrpo.json (empty without one); unknown keys are an error."""
    file = path / DEFAULTS_FILE
    if not file.is_file():
        return {}
    try:
        defaults = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"model.path: {file} is not readable JSON ({error})") from error
    unknown = sorted(set(defaults) - set(allowed)) if isinstance(defaults, dict) else ["?"]
    if unknown:
        raise UserError(f"{file}: unknown keys {unknown}; allowed: {', '.join(allowed)}")
    return defaults


def load_pipeline(pipeline_class: type, path: Path, dtypes: Mapping[str, torch.dtype]) -> Any:
    """Stock `from_pretrained` with a dtype per component; a load failure is one line."""
    try:
        pipeline = pipeline_class.from_pretrained(path, dtype=dict(dtypes))
    except (OSError, ValueError, RuntimeError, TypeError, KeyError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(f"model.path: cannot load {str(path)!r} ({reason})") from error
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def check_video_size(
    family: str,
    num_frames: int,
    height: int,
    width: int,
    *,
    frame_step: int,
    side_multiple: int,
) -> None:
    """The VAE takes 1 + k·frame_step frames, and sides that patchify after it."""
    if num_frames < 1 or (num_frames - 1) % frame_step:
        suggestion = num_frames // frame_step * frame_step + 1
        raise UserError(
            f"sampling.num_frames: {num_frames} does not fit this {family} VAE; use "
            f"1 + {frame_step}·k frames, e.g. {suggestion}"
        )
    if height % side_multiple or width % side_multiple:
        raise UserError(
            f"sampling.height/width: {height}×{width} does not fit this {family} model; both "
            f"must be multiples of {side_multiple}"
        )
