"""The run directory as a resource: checked before a run starts, made whole or not at all, and
used by one process at a time; and the same early checks for the files `sample` and `eval` write.

The lock is `flock` on the directory itself: it creates no file, and the kernel releases it when
the process ends however it ends (a SIGKILL included), so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

from videogrpo.errors import UserError

logger = logging.getLogger(__name__)

# POSIX limits, used when the file system does not say (os.pathconf): bytes per name and path.
DEFAULT_NAME_MAX = 255
DEFAULT_PATH_MAX = 4096


class RunLock:
    """An exclusive lock on a run directory, held from `acquire` until `release`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._descriptor: int | None = None

    @property
    def held(self) -> bool:
        return self._descriptor is not None

    def acquire(self) -> None:
        try:
            descriptor = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as error:
            raise UserError(
                f"cannot open run directory {self.directory} ({error.strerror})"
            ) from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise UserError(
                f"run directory {self.directory} is in use by another videogrpo process; wait for "
                "it to end (or stop it) before starting or resuming this run"
            ) from None
        except OSError as error:  # a file system without locks (some network mounts)
            logger.warning(
                "cannot lock %s (%s); make sure no other process uses this run directory",
                self.directory,
                error.strerror,
            )
        self._descriptor = descriptor

    def release(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)  # closing the last descriptor releases the flock
            self._descriptor = None


def check_new_location(run_dir: Path) -> None:
    """Fail now, before any work, if `run_dir` could not be created: a name too long for the
    file system, a file in the way, or a parent that is read-only or not a folder."""
    ancestor = nearest_existing(run_dir)
    if not ancestor.is_dir():
        raise UserError(
            f"cannot create run directory {run_dir}: {ancestor} is a file, not a folder"
        )
    name_max = _path_limit(ancestor, "PC_NAME_MAX", DEFAULT_NAME_MAX)
    path_max = _path_limit(ancestor, "PC_PATH_MAX", DEFAULT_PATH_MAX)
    for name in run_dir.parts:
        if len(os.fsencode(name)) > name_max:
            raise UserError(
                f"cannot create run directory {run_dir}: the name {name[:40]}… is longer than "
                f"the {name_max} bytes the file system allows; choose a shorter run.name"
            )
    if len(os.fsencode(run_dir.absolute())) >= path_max:
        raise UserError(
            f"cannot create run directory {run_dir}: the path is longer than the {path_max} "
            "bytes the file system allows"
        )
    check_writable(ancestor, f"cannot create run directory {run_dir}")


def check_output_file(path: Path, flag: str) -> None:
    """Fail before any work if `path` cannot be written: a folder in its place, a missing or
    read-only folder around it, a name too long."""
    _check_names(path, nearest_existing(path.parent), flag)
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file name")
    if not path.parent.is_dir():
        raise UserError(f"{flag} {path}: folder {path.parent} does not exist")
    check_writable(path.parent, f"{flag} {path}")


def check_output_folder(path: Path, flag: str) -> None:
    """Fail before any work if folder `path` could not be created or written into."""
    ancestor = nearest_existing(path)
    if not ancestor.is_dir():
        raise UserError(f"{flag} {path}: {ancestor} is a file, not a folder")
    _check_names(path, ancestor, flag)
    check_writable(ancestor, f"{flag} {path}")


def check_writable(folder: Path, context: str) -> None:
    """A folder a run can write into; root passes permission checks, so a read-only mount is
    also checked by its flags."""
    read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    if read_only or not os.access(folder, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if read_only else "is not writable"
        raise UserError(f"{context}: {folder} {why}")


def check_input_path(value: str | None, key: str) -> None:
    """A path setting that the file system cannot even look up (a name too long, a loop of
    links) is a one-line error; a missing one is left to whoever reads it to explain."""
    if value is None:
        return
    try:
        os.stat(value)
    except (FileNotFoundError, NotADirectoryError):
        return
    except OSError as error:
        raise UserError(f"{key}: cannot use {value[:80]!r} ({error.strerror})") from error


def nearest_existing(path: Path) -> Path:
    """`path` or its closest ancestor that exists (`.` for a relative path with none)."""
    for candidate in (path, *path.parents):
        try:
            if candidate.exists():
                return candidate
        except OSError:  # e.g. a name too long for the file system: it does not exist
            continue
    return Path(".")


def create_run_dir(run_dir: Path) -> None:
    """`mkdir -p run_dir` that removes the folders it made if a later one fails."""
    missing = []
    for candidate in (run_dir, *run_dir.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    created: list[Path] = []
    try:
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
    except OSError as error:
        for folder in reversed(created):
            folder.rmdir()
        raise UserError(f"cannot create run directory {run_dir} ({error.strerror})") from error


def clear_run_dir(run_dir: Path, marker: str) -> None:
    """Remove everything inside `run_dir` (kept, with its lock) for `--restart`; refused unless
    it holds `marker` (a run's config file), so a mistyped path never empties a folder."""
    entries = list(run_dir.iterdir())
    if entries and not (run_dir / marker).is_file():
        raise UserError(
            f"--restart: {run_dir} is not a run directory (it has no {marker}); nothing removed"
        )
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _check_names(path: Path, ancestor: Path, context: str) -> None:
    """Each name and the whole path within the limits of the file system holding `ancestor`."""
    name_max = _path_limit(ancestor, "PC_NAME_MAX", DEFAULT_NAME_MAX)
    path_max = _path_limit(ancestor, "PC_PATH_MAX", DEFAULT_PATH_MAX)
    for name in path.parts:
        if len(os.fsencode(name)) > name_max:
            raise UserError(
                f"{context}: the name {name[:40]}… is longer than the {name_max} bytes the file "
                "system allows"
            )
    if len(os.fsencode(path.absolute())) >= path_max:
        raise UserError(
            f"{context}: the path is longer than the {path_max} bytes the file system allows"
        )


def _path_limit(folder: Path, name: str, default: int) -> int:
    try:
        limit = os.pathconf(folder, name)
    except (OSError, ValueError):  # the file system does not say
        return default
    return limit if limit > 0 else default
