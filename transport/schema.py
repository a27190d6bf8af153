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

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class SchemaError(ValueError):
    """A body that does not match its schema; the message names the key."""


class _Mismatch(Exception):
    """Raised inside the checkers; each level adds its key on the way up (paths are built only
    on failure, so a valid body costs no string work)."""

    def __init__(self, problem: str, path: list[str | int]) -> None:
        self.problem = problem  # "must be an integer, got str" / "is missing"
        self.path = path


def _format_path(path: list[str | int]) -> str:
    out = ""
    for part in reversed(path):  # built innermost first
        out += f"[{part}]" if type(part) is int else (f".{part}" if out else part)
    return out


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
    if isinstance(spec, Opt | Default):
        return _type_name(spec.spec)
    return _TYPE_NAMES.get(spec, str(spec))


def _mismatch(value: Any, spec: Any, key: str | int | None = None) -> _Mismatch:
    got = "nil" if value is None else type(value).__name__
    return _Mismatch(f"must be {_type_name(spec)}, got {got}", [] if key is None else [key])


# A compiled check: value -> None, raising _Mismatch.
Check = Callable[[Any], None]


def _exact(kind: type, spec: Any) -> Check:
    def check(value: Any) -> None:
        if type(value) is not kind:  # `type is`: bool (an int subclass) is not an integer
            raise _mismatch(value, spec)

    return check


def _number(value: Any) -> None:
    if type(value) is not float and type(value) is not int:
        raise _mismatch(value, float)


def _list_of(item: Check, spec: Any) -> Check:
    def check(value: Any) -> None:
        if type(value) is not list:
            raise _mismatch(value, spec)
        i = 0
        try:
            for v in value:
                item(v)
                i += 1
        except _Mismatch as m:
            m.path.append(i)
            raise

    return check


def _optional(inner: Check) -> Check:
    def check(value: Any) -> None:
        if value is not None:
            inner(value)

    return check


def _str_map(value: Any) -> None:
    if type(value) is not dict:
        raise _mismatch(value, StrMap())
    for k, v in value.items():
        if type(v) is not str:
            raise _mismatch(v, str, str(k))


_MISSING = object()


def _map(schema: dict[str, Any]) -> Check:
    # (key, check, fill): fill is _MISSING for a required key, else the default to fill in
    fields: list[tuple[str, Check, Any]] = []
    for key, spec in schema.items():
        if isinstance(spec, Default):
            fields.append((key, _compile(spec.spec), spec.value))
        elif isinstance(spec, Opt):
            fields.append((key, _compile(spec), None))
        else:
            fields.append((key, _compile(spec), _MISSING))
    whole = dict(schema)

    def check(body: Any) -> None:
        if type(body) is not dict:
            raise _mismatch(body, whole)
        get = body.get
        for key, chk, fill in fields:
            value = get(key, _MISSING)
            if value is _MISSING:
                if fill is _MISSING:
                    raise _Mismatch("is missing", [key])
                # copy containers: a default must never be shared between bodies
                t = type(fill)
                body[key] = list(fill) if t is list else dict(fill) if t is dict else fill
            else:
                try:
                    chk(value)
                except _Mismatch as m:
                    m.path.append(key)
                    raise

    return check


def _compile(spec: Any) -> Check:
    if spec is int or spec is str or spec is bool or spec is bytes or spec is dict:
        return _exact(spec, spec)
    if spec is float:
        return _number
    if isinstance(spec, dict):
        return _map(spec)
    if isinstance(spec, ListOf):
        return _list_of(_compile(spec.item), spec)
    if isinstance(spec, Opt):
        return _optional(_compile(spec.spec))
    if isinstance(spec, Default):
        return _compile(spec.spec)
    if isinstance(spec, StrMap):
        return _str_map
    raise TypeError(f"bad schema spec {spec!r}")  # a schema bug, not bad input


_compiled: dict[int, tuple[dict[str, Any], Check]] = {}


def compile_schema(schema: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    """A fast validator for a top-level schema: body -> None, raising `SchemaError`."""
    hit = _compiled.get(id(schema))
    if hit is None or hit[0] is not schema:
        hit = (schema, _map(schema))
        _compiled[id(schema)] = hit
    check = hit[1]

    def validate_body(body: dict[str, Any]) -> None:
        try:
            check(body)
        except _Mismatch as m:
            if m.problem == "is missing":
                raise SchemaError(f"required key '{_format_path(m.path)}' is missing") from None
            raise SchemaError(f"key '{_format_path(m.path)}' {m.problem}") from None

    return validate_body


def validate(body: dict[str, Any], schema: dict[str, Any]) -> None:
    """Check `body` against `schema` (filling defaults in place); raise `SchemaError`."""
    compile_schema(schema)(body)
