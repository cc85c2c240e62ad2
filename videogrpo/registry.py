"""Find a backbone or a reward by the name the config gives: built-in, `module:attr`, file, plugin.

A backbone or reward that lives outside the package is one file. The config names it as
`package.module:Class` (importable), `path/to/file.py:Class`, or by a short name that an installed
package declares under the entry-point group (`videogrpo.models`, `videogrpo.rewards`). Built-ins
are imported only when named, so listing them never pulls in diffusers or transformers.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from videogrpo.errors import UserError


def import_object(spec: str, what: str) -> Any:
    """`module:name` or `file.py:name` (name may be dotted: `module:Class.load`) → the object."""
    module_name, separator, attribute = spec.rpartition(":")
    if not separator or not module_name or not attribute:
        raise UserError(f"{what} {spec!r}: expected MODULE:NAME, e.g. my_package.rewards:MyReward")
    if module_name.endswith(".py"):
        module = _import_file(Path(module_name), what, spec)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            raise UserError(
                f"{what} {spec!r}: cannot import {module_name!r} ({error}); put it on PYTHONPATH "
                "or name a file, e.g. path/to/module.py:NAME"
            ) from error
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as error:
            raise UserError(f"{what} {spec!r}: {module_name!r} has no {attribute!r}") from error
    return target


def _import_file(path: Path, what: str, spec: str) -> Any:
    if not path.is_file():
        raise UserError(f"{what} {spec!r}: file {str(path)!r} not found")
    name = f"videogrpo_plugin_{path.stem}_{abs(hash(str(path.resolve())))}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise UserError(f"{what} {spec!r}: {str(path)!r} is not a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling-free tools look modules up by name
    try:
        module_spec.loader.exec_module(module)
    except ImportError as error:
        del sys.modules[name]
        raise UserError(f"{what} {spec!r}: importing {str(path)!r} failed ({error})") from error
    return module


class Registry:
    """Built-in names (→ `module:attr`, imported lazily), `module:attr` specs and entry points."""

    def __init__(self, key: str, builtins: Mapping[str, str], entry_point_group: str) -> None:
        self.key = key  # the config key, for messages: "model.type"
        self.builtins = dict(builtins)
        self.entry_point_group = entry_point_group

    def names(self) -> list[str]:
        """Built-in names and the names installed packages declare."""
        plugins = importlib.metadata.entry_points(group=self.entry_point_group)
        return [*self.builtins, *sorted(ep.name for ep in plugins if ep.name not in self.builtins)]

    def resolve(self, name: str) -> Any:
        if name in self.builtins:
            return import_object(self.builtins[name], self.key)
        if ":" in name:
            return import_object(name, self.key)
        for entry_point in importlib.metadata.entry_points(group=self.entry_point_group):
            if entry_point.name == name:
                return entry_point.load()
        raise UserError(
            f"{self.key}: {name!r} is not known; choose one of {', '.join(self.names())} or name "
            "your own as MODULE:CLASS"
        )
