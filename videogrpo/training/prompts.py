"""Prompt sets: a split of the synthetic world by name, or a text file with one prompt per line."""

from __future__ import annotations

from pathlib import Path

from videogrpo.embedded.world import grammar
from videogrpo.errors import UserError

WORLD_SPLITS = ("train", "heldout", "all")


def load_prompts(spec: str) -> list[str]:
    """`spec` is a world split name (train, heldout, all) or the path of a UTF-8 text file."""
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
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise UserError(f"prompt file {spec!r} holds no prompts (one per line, # for comments)")
    return prompts
