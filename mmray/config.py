"""Turning plain data (YAML, CLI flags, Tune configs) into typed dataclasses, with errors a person understands."""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from mmray.errors import UserError


def read_yaml(path: Path) -> Any:
    """A YAML file's data; a file that cannot be read or parsed is one line naming it (and the line at fault)."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: malformed YAML{where} ({getattr(e, 'problem', None) or e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None


def check_keys(raw: Any, allowed: tuple[str, ...], required: tuple[str, ...], where: str) -> None:
    """A YAML file's top level: a mapping with only `allowed` keys and every `required` one."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping of settings at the top level")
    for key in raw:
        if key not in allowed:
            raise UserError(f"{where}: unknown key {key!r} (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in raw:
            raise UserError(f"{where}: missing required key {key!r}")


def field_types(cls) -> dict[str, Any]:
    """Field name -> resolved annotation of a dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check `value` against a simple annotation (int, float, bool, str, Literal, X | None)."""
    origin = get_origin(annotation)
    if origin is Literal:
        if value not in get_args(annotation):
            raise UserError(f"{where}: {value!r} is not one of {list(get_args(annotation))}")
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        options = [a for a in get_args(annotation) if a is not type(None)]
        if value is None and len(options) < len(get_args(annotation)):
            return None
        return coerce(value, options[0], where)
    if annotation is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: {value!r} is not true/false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise UserError(f"{where}: {value!r} is not an integer")
        return int(value)
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: {value!r} is not a number")
        if not math.isfinite(value):  # no setting means anything by NaN or inf; they would reach Ray
            raise UserError(f"{where}: {value!r} is not a finite number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: {value!r} is not a string")
        return value
    return value


def require(ok: bool, key: str, value, rule: str) -> None:
    """Refuse a setting in a dataclass's `__post_init__` with a message naming it, e.g.
    `require(k >= 1, "k", k, "must be at least 1")`; `build` adds where the key was given."""
    if not ok:
        raise UserError(f"{key}: {value!r} {rule}")


def build(cls, values: dict, where: str, flags: bool = False):
    """Build dataclass `cls` from a dict, refusing unknown keys and ill-typed values.

    Errors name a key as `where.key`; with `flags` (values from a command line) as its flag, `--the-key`.
    """
    if not isinstance(values, dict):
        raise UserError(f"{where}: expected a mapping, got {type(values).__name__}")
    name = (lambda key: "--" + key.replace("_", "-")) if flags else (lambda key: f"{where}.{key}")
    types = field_types(cls)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise UserError(f"{name(unknown[0])}: unknown key (allowed: {', '.join(types)})")
    values = {k: coerce(v, types[k], name(k)) for k, v in values.items()}
    try:
        return cls(**values)
    except UserError as e:  # a range check in __post_init__ (`require`), which names the key but not the place
        key, sep, rule = str(e).partition(": ")
        raise UserError(f"{name(key)}{sep}{rule}") from None


def parse_assignment(item: str) -> tuple[str, Any]:
    """`KEY=VALUE` from the command line (`--set lr=0.003`); the value is read as YAML (numbers, booleans)."""
    import yaml

    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UserError(f"--set {item!r}: expected KEY=VALUE")
    return key, yaml.safe_load(value)
