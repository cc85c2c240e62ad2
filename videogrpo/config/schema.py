"""Typed configuration machinery: dataclass fields that carry their help, choices and bounds.

Every setting is declared once, with `setting(...)`, so validation, `--help`-style listings and the
docs all come from the same place (the TRL `GRPOConfig` idea). Loading a nested dict into a
dataclass tree rejects unknown keys, wrong types and out-of-range values with one line that names
the key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from typing import Any

from videogrpo.errors import UserError

# PyYAML follows YAML 1.1, which reads `1e-4` (no dot) as a string; it is a number here.
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
# Integers reach torch (seeds, sizes, counters) as int64; floats become float32 tensors:
# torch.iinfo(torch.int64) and torch.finfo(torch.float32).max, spelled out to keep torch out of
# config validation (the CLI reports a config error before importing it).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38
MAX_QUOTED_CHARS = 80  # of a bad value quoted in an error


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple[Any, ...] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    allow_empty: bool = False,
) -> Any:
    """A dataclass field with its meaning and allowed values attached as metadata.

    Every number must be finite and fit its type (int64, float32) besides these bounds; a
    string must be non-empty unless `allow_empty`, and never holds a NUL character.
    """
    metadata = {
        "help": help,
        "choices": choices,
        "ge": ge,
        "gt": gt,
        "le": le,
        "allow_empty": allow_empty,
    }
    if isinstance(default, list | dict):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def section(cls: type) -> Any:
    """A nested dataclass field (a config section)."""
    return dataclasses.field(default_factory=cls)


def _type_name(annotation: Any) -> str:
    """`float`, `dict[str, float]`: generic aliases keep their arguments in the message."""
    if typing.get_origin(annotation) is not None:
        return str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", str(annotation))


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check `value` against `annotation`, converting int→float where a float is expected."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(key, value, option)
            except UserError:
                continue
        allowed = " or ".join("null" if o is type(None) else _type_name(o) for o in options)
        raise UserError(f"{key}: expected {allowed}, got {_short(value)}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise UserError(f"{key}: expected a list, got {_short(value)}")
        (item_type,) = typing.get_args(annotation) or (Any,)
        return [_coerce(f"{key}[{i}]", item, item_type) for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping, got {_short(value)}")
        key_type, value_type = typing.get_args(annotation) or (Any, Any)
        return {
            _coerce(f"{key}.{k}", k, key_type): _coerce(f"{key}.{k}", v, value_type)
            for k, v in value.items()
        }
    if annotation is Any:
        return value
    if annotation is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{key}: expected a number, got {_short(value)}")
        if isinstance(value, int) and abs(value) > FLOAT32_MAX:
            raise UserError(f"{key}: {value} is too large (at most {FLOAT32_MAX:.4g}, float32)")
        number = float(value)
        if not math.isfinite(number):
            raise UserError(f"{key}: expected a finite number, got {_short(value)}")
        if abs(number) > FLOAT32_MAX:
            raise UserError(
                f"{key}: {_short(value)} is too large (at most {FLOAT32_MAX:.4g}, float32)"
            )
        return number
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key}: expected an integer, got {_short(value)}")
        if not INT64_MIN <= value <= INT64_MAX:
            raise UserError(f"{key}: {_short(value)} does not fit a 64-bit integer")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise UserError(f"{key}: expected true or false, got {_short(value)}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise UserError(f"{key}: expected a string, got {_short(value)}")
        if "\0" in value:
            raise UserError(f"{key}: {_short(value)} holds a NUL character")
        return value
    raise TypeError(f"unsupported config annotation {annotation!r} for {key}")


def _short(value: Any) -> str:
    """`repr(value)`, cut short: a one-line error must stay readable whatever was given."""
    text = repr(value)
    return text if len(text) <= MAX_QUOTED_CHARS else text[: MAX_QUOTED_CHARS - 1] + "…"


def _check_bounds(key: str, value: Any, metadata: typing.Mapping[str, Any]) -> None:
    if value == "" and not metadata.get("allow_empty"):
        raise UserError(f"{key}: must not be empty")
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        allowed = ", ".join(map(str, choices))
        raise UserError(f"{key}: {_short(value)} is not allowed; choose one of: {allowed}")
    if value is None or not isinstance(value, int | float):
        return
    if metadata.get("ge") is not None and value < metadata["ge"]:
        raise UserError(f"{key}: {_short(value)} is out of range; it must be >= {metadata['ge']}")
    if metadata.get("gt") is not None and value <= metadata["gt"]:
        raise UserError(f"{key}: {_short(value)} is out of range; it must be > {metadata['gt']}")
    if metadata.get("le") is not None and value > metadata["le"]:
        raise UserError(f"{key}: {_short(value)} is out of range; it must be <= {metadata['le']}")


def from_dict(cls: type, data: dict[str, Any] | None, prefix: str = "") -> Any:
    """Build the dataclass tree `cls` from nested plain data, validating every key and value."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        where = prefix.rstrip(".") or "config"
        raise UserError(f"{where}: expected a mapping of settings, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in data:
        if name not in fields:
            key = f"{prefix}{name}"
            close = difflib.get_close_matches(str(name), fields, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else ""
            raise UserError(f"unknown config key {key!r}{hint} (allowed: {', '.join(fields)})")
    values = {}
    for name, field in fields.items():
        key = f"{prefix}{name}"
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            values[name] = from_dict(annotation, data.get(name), prefix=f"{key}.")
            continue
        if name not in data:
            continue
        value = _coerce(key, data[name], annotation)
        _check_bounds(key, value, field.metadata)
        values[name] = value
    try:
        config = cls(**values)
    except UserError:
        raise
    except (TypeError, ValueError) as error:
        raise UserError(f"{prefix.rstrip('.') or 'config'}: {error}") from error
    return config


def check_setting(cls: type, key: str, value: Any, label: str) -> Any:
    """`value` checked (and converted) as setting `key` of the tree `cls` would be, its errors
    naming `label`: a command-line flag gets the same rules as the setting it stands for."""
    *sections, name = key.split(".")
    for part in sections:
        cls = typing.get_type_hints(cls)[part]
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    try:
        value = _coerce(key, value, typing.get_type_hints(cls)[name])
        _check_bounds(key, value, field.metadata)
    except UserError as error:
        raise UserError(str(error).replace(key, label, 1)) from error
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """The config as nested plain data (what is printed and saved with a run)."""
    return dataclasses.asdict(config)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `--set a.b=value` to nested plain data; the value is parsed as YAML."""
    import yaml

    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set optim.lr=1e-4")
    dotted, raw = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {dotted}: {part!r} is a value, not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())
        raise UserError(f"--set {dotted}: value {raw!r} is not valid YAML ({reason})") from error


def _bound(value: float) -> str:
    """An integer bound exactly (2^63 − 1 must not read 9.22e18), a float one briefly."""
    return str(value) if isinstance(value, int) else f"{value:g}"


def describe(cls: type, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(key, default, help) for every setting, for docs and `videogrpo train --list-settings`."""
    rows = []
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for field in dataclasses.fields(cls):
        annotation = hints[field.name]
        key = f"{prefix}{field.name}"
        if dataclasses.is_dataclass(annotation):
            rows.extend(describe(annotation, prefix=f"{key}."))
            continue
        help_text = field.metadata.get("help", "")
        choices = field.metadata.get("choices")
        if choices:
            help_text += f" [choices: {', '.join(map(str, choices))}]"
        bounds = [
            f"{sign} {_bound(field.metadata[name])}"
            for name, sign in (("ge", ">="), ("gt", ">"), ("le", "<="))
            if field.metadata.get(name) is not None
        ]
        if bounds:
            help_text += f" [{', '.join(bounds)}]"
        rows.append((key, getattr(defaults, field.name), help_text))
    return rows
