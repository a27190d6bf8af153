"""A tiny declarative schema language for msgpack request bodies.

A schema is a dict of key → spec; a spec is a Python type (`int`, `str`, `bool`, `bytes`,
`float`, `dict`), a nested schema dict, `ListOf(spec)`, `Opt(spec)` (may be None),
`Default(spec, value)` (may be absent: the value is filled in), or `StrMap()` (str → str).
`validate(body, schema)` checks required keys and types and fills defaults in place; the
first problem raises `SchemaError` whose message names the key path
(`topics[0].partitions[2].partition`). Unknown keys are ignored (forward compatibility).
Validation walks topics and partitions, never records: its cost is per request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class SchemaError(ValueError):
    """A body that does not match its schema; the message names the key."""


@dataclass(frozen=True, slots=True)
class ListOf:
    item: Any


@dataclass(frozen=True, slots=True)
class Opt:
    spec: Any


@dataclass(frozen=True, slots=True)
class Default:
    spec: Any
    value: Any


@dataclass(frozen=True, slots=True)
class StrMap:
    """A map of str → str (topic configs)."""


_TYPE_NAMES = {
    int: "an integer",
    str: "a string",
    bool: "a boolean",
    bytes: "bytes",
    float: "a number",
    dict: "a map",
}


def _type_name(spec: Any) -> str:
    if isinstance(spec, dict):
        return "a map"
    if isinstance(spec, ListOf):
        return "a list"
    if isinstance(spec, StrMap):
        return "a map of strings"
    return _TYPE_NAMES.get(spec, str(spec))


def _fail(path: str, value: Any, spec: Any) -> SchemaError:
    got = "nil" if value is None else type(value).__name__
    return SchemaError(f"key '{path}' must be {_type_name(spec)}, got {got}")


def _check(value: Any, spec: Any, path: str) -> None:
    t = type(value)
    if spec is int:
        if t is not int:  # bool is an int subclass: `type is` keeps True out
            raise _fail(path, value, spec)
    elif spec is str or spec is bool or spec is dict:
        if t is not spec:
            raise _fail(path, value, spec)
    elif spec is bytes:
        if t is not bytes:
            raise _fail(path, value, spec)
    elif spec is float:
        if t is not float and t is not int:
            raise _fail(path, value, spec)
    elif isinstance(spec, dict):
        if t is not dict:
            raise _fail(path, value, spec)
        _check_map(value, spec, path + ".")
    elif isinstance(spec, ListOf):
        if t is not list:
            raise _fail(path, value, spec)
        item = spec.item
        for i, v in enumerate(value):
            _check(v, item, f"{path}[{i}]")
    elif isinstance(spec, Opt):
        if value is not None:
            _check(value, spec.spec, path)
    elif isinstance(spec, Default):
        _check(value, spec.spec, path)
    elif isinstance(spec, StrMap):
        if t is not dict:
            raise _fail(path, value, spec)
        for k, v in value.items():
            if type(v) is not str:
                raise SchemaError(f"key '{path}.{k}' must be a string, got {type(v).__name__}")
    else:  # pragma: no cover - a schema bug, not bad input
        raise TypeError(f"bad schema spec {spec!r} at {path}")


def _check_map(body: dict[str, Any], schema: dict[str, Any], prefix: str) -> None:
    for key, spec in schema.items():
        if key in body:
            _check(body[key], spec, prefix + key)
        elif isinstance(spec, Default):
            v = spec.value  # copy containers: a default must never be shared between bodies
            body[key] = list(v) if type(v) is list else dict(v) if type(v) is dict else v
        elif isinstance(spec, Opt):
            body[key] = None
        else:
            raise SchemaError(f"required key '{prefix}{key}' is missing")


def validate(body: dict[str, Any], schema: dict[str, Any]) -> None:
    """Check `body` against `schema` (filling defaults in place); raise `SchemaError`."""
    _check_map(body, schema, "")
