"""Declarative configuration models: one per actor, next to the actor.

An actor declares its keys as a `Config` subclass, written like a dataclass::

    class Config(edgeflow.Config):
        path: str = field(doc="file to write")
        max_bytes: Size = field(10 * 2**20, doc="rotate when the file grows past this")
        flush: Duration = field(1.0, doc="how often to flush")

`build_config` turns a TOML table into an instance, collecting *every* problem (unknown keys with a
suggestion, wrong types, missing keys, bad expressions, unreadable secrets) as `ConfigProblem`s that
carry the file, the line and the key path. The annotation decides how a value is read: `Duration`
("250ms", "10s"), `Size` ("256MiB"), `Expr`/`Predicate`/`Template` (compiled once, here),
`SecretFile`/`SecretEnv` (read here, never logged), `Literal[...]` (choices), nested `Config`
subclasses (tables), `list[...]`, `dict[str, ...]` and `X | None`.

Dataclasses rather than pydantic or msgspec: on a small device validation runs once at start, and
dataclasses cost nothing to import (pydantic measured ~140 ms and +20 MB here).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_origin

from .errors import ConfigProblem, ExpressionError

__all__ = [
    "Config",
    "ConnectionRef",
    "Duration",
    "Expr",
    "Predicate",
    "Problems",
    "Secret",
    "SecretEnv",
    "SecretFile",
    "Size",
    "Template",
    "build_config",
    "describe_config",
    "field",
    "suggest",
]


class _Kind:
    """A marker inside `Annotated[...]` that says how a TOML value is read."""

    def __init__(self, name: str, doc: str) -> None:
        self.name = name
        self.doc = doc

    def __repr__(self) -> str:
        return self.name


DURATION = _Kind("duration", "a duration such as '250ms', '10s', '5m', '7d'")
SIZE = _Kind("size", "a size such as '512KiB', '256MiB'")
EXPR = _Kind("expression", "an expression")
PREDICATE = _Kind("predicate", "a boolean expression")
TEMPLATE = _Kind("template", "a template such as 'cloud/{device}/avg'")
SECRET_FILE = _Kind("secret file", "a path to a file holding a secret")
SECRET_ENV = _Kind("secret env", "the name of an environment variable holding a secret")
CONNECTION = _Kind("connection", "the name of a [connections.NAME] table")


class Secret(str):
    """A string that never shows itself in logs, reprs or replies."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')"


Duration = Annotated[float, DURATION]
Size = Annotated[int, SIZE]
# Compiled expression objects are typed as Any here so that importing the schema does not import the
# expression compiler; `edgeflow.expr` is loaded only when a topology uses an expression.
Expr = Annotated[Any, EXPR]
Predicate = Annotated[Any, PREDICATE]
Template = Annotated[Any, TEMPLATE]
SecretFile = Annotated[Secret | None, SECRET_FILE]
SecretEnv = Annotated[Secret | None, SECRET_ENV]
ConnectionRef = Annotated[str, CONNECTION]


def field(
    default: Any = dataclasses.MISSING,
    *,
    doc: str = "",
    default_factory: Callable[[], Any] | None = None,
    ge: float | None = None,
    le: float | None = None,
    example: str | None = None,
) -> Any:
    """Declare a key: its default (none means required), a one-line doc, and optional bounds."""
    meta = {"doc": doc, "ge": ge, "le": le, "example": example}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Config:
    """Base of every declared configuration; subclasses become keyword-only dataclasses."""

    if TYPE_CHECKING:
        # `field(default, doc=...)` passes the default positionally, which dataclass_transform cannot
        # express; so type checkers see a keyword constructor and the annotated attributes.
        def __init__(self, **values: Any) -> None: ...

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(kw_only=True)(cls)


@dataclass
class Problems:
    """Where problems go while a topology is checked: the file, a line finder, the list."""

    file: str
    line_of: Callable[[Sequence[str]], int | None]
    items: list[ConfigProblem] = dataclasses.field(default_factory=list)
    connections: Mapping[str, str] = dataclasses.field(default_factory=dict)  # name -> type

    def add(self, path: Sequence[str], message: str) -> None:
        self.items.append(ConfigProblem(self.file, self.line_of(path), ".".join(path), message))


def suggest(word: str, options: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


_hints_cache: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _hints_cache.get(cls)
    if hints is None:
        module = __import__(cls.__module__, fromlist=["_"])
        ns = dict(vars(module))
        ns.update({"Duration": Duration, "Size": Size, "Expr": Expr, "Predicate": Predicate})
        hints = typing.get_type_hints(cls, globalns=ns, include_extras=True)
        _hints_cache[cls] = hints
    return hints


def build_config(
    cls: type[Config],
    table: Mapping[str, Any],
    path: tuple[str, ...],
    problems: Problems,
    *,
    ignore: Sequence[str] = (),
) -> Config | None:
    """Read `table` into `cls`, adding a problem for each thing wrong; None when anything was wrong.

    A Config may check keys that only make sense together in `__post_init__`: a `ValueError` it raises
    becomes one more problem, located at the table (its message should name the keys).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = _hints(cls)
    before = len(problems.items)
    values: dict[str, Any] = {}
    for key, raw in table.items():
        if key in ignore:
            continue
        f = fields.get(key)
        if f is None:
            problems.add((*path, key), f"unknown key{suggest(key, [*fields, *ignore])}")
            continue
        ok, value = _convert(hints[key], raw, (*path, key), problems, f.metadata)
        if ok:
            values[key] = value
    for name, f in fields.items():
        if name in table:
            continue
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.add((*path, name), "missing required key")
    if len(problems.items) != before:
        return None
    try:
        return cls(**values)
    except ValueError as exc:  # a `__post_init__` refusing a combination of keys, in words for the user
        problems.add(path, str(exc))
        return None


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Annotated:
        return str(get_args(tp)[1])
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"table of {_type_name(get_args(tp)[1])}"
    if isinstance(tp, type) and issubclass(tp, Config):
        return "table"
    if tp is Any:
        return "any value"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(tp: Any, raw: Any, path: tuple[str, ...], problems: Problems, meta: Mapping[str, Any]) -> tuple[bool, Any]:
    origin = get_origin(tp)
    if origin is Annotated:
        base, kind = get_args(tp)[:2]
        return _convert_kind(kind, base, raw, path, problems)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _convert(args[0], raw, path, problems, meta)
        for a in args:  # first alternative that takes the value cleanly
            trial = Problems(problems.file, problems.line_of, connections=problems.connections)
            ok, value = _convert(a, raw, path, trial, meta)
            if ok:
                return True, value
        problems.add(path, f"expected {_type_name(tp)}, got {_show(raw)}")
        return False, None
    if origin is Literal:
        choices = get_args(tp)
        if raw not in choices:
            hint = suggest(str(raw), [str(c) for c in choices])
            problems.add(path, f"expected one of {', '.join(repr(c) for c in choices)}, got {_show(raw)}{hint}")
            return False, None
        return True, raw
    if origin is list:
        (item,) = get_args(tp)
        if not isinstance(raw, list):
            problems.add(path, f"expected a list, got {_show(raw)}")
            return False, None
        out, good = [], True
        for i, v in enumerate(raw):
            ok, value = _convert(item, v, (*path, str(i)), problems, {})
            good &= ok
            out.append(value)
        return good, out
    if origin is dict:
        _, item = get_args(tp)
        if not isinstance(raw, dict):
            problems.add(path, f"expected a table, got {_show(raw)}")
            return False, None
        result, good = {}, True
        for k, v in raw.items():
            ok, value = _convert(item, v, (*path, k), problems, {})
            good &= ok
            result[k] = value
        return good, result
    if isinstance(tp, type) and issubclass(tp, Config):
        if not isinstance(raw, dict):
            problems.add(path, f"expected a table, got {_show(raw)}")
            return False, None
        built = build_config(tp, raw, path, problems)
        return built is not None, built
    if tp is Any:
        return True, raw
    if tp is float and isinstance(raw, int) and not isinstance(raw, bool):
        raw = float(raw)
    if (tp is int and isinstance(raw, bool)) or not isinstance(raw, tp):
        problems.add(path, f"expected {_type_name(tp)}, got {_show(raw)}")
        return False, None
    return _check_bounds(raw, path, problems, meta)


def _check_bounds(value: Any, path: tuple[str, ...], problems: Problems, meta: Mapping[str, Any]) -> tuple[bool, Any]:
    ge, le = meta.get("ge"), meta.get("le")
    if ge is not None and value < ge:
        problems.add(path, f"must be at least {ge:g}, got {value!r}")
        return False, None
    if le is not None and value > le:
        problems.add(path, f"must be at most {le:g}, got {value!r}")
        return False, None
    return True, value


def _convert_kind(kind: _Kind, base: Any, raw: Any, path: tuple[str, ...], problems: Problems) -> tuple[bool, Any]:
    from . import units

    try:
        if kind is DURATION:
            return True, units.parse_duration(raw)
        if kind is SIZE:
            return True, units.parse_size(raw)
    except (ValueError, TypeError) as exc:
        problems.add(path, str(exc))
        return False, None
    if kind in (EXPR, PREDICATE, TEMPLATE):
        if not isinstance(raw, str):
            problems.add(path, f"expected {kind.doc} in a string, got {_show(raw)}")
            return False, None
        from . import expr

        try:
            if kind is EXPR:
                return True, expr.compile_expr(raw)
            if kind is PREDICATE:
                return True, expr.compile_predicate(raw)
            return True, expr.compile_template(raw)
        except ExpressionError as exc:
            problems.add(path, f"bad {kind.name}: {exc}")
            return False, None
    if not isinstance(raw, str):
        problems.add(path, f"expected {kind.doc}, got {_show(raw)}")
        return False, None
    if kind is SECRET_FILE:
        try:
            with open(raw, encoding="utf-8") as fh:
                return True, Secret(fh.read().strip())
        except OSError as exc:
            problems.add(path, f"cannot read secret file {raw!r}: {exc.strerror or exc}")
            return False, None
    if kind is SECRET_ENV:
        value = os.environ.get(raw)
        if value is None:
            problems.add(path, f"environment variable {raw!r} is not set")
            return False, None
        return True, Secret(value)
    if kind is CONNECTION:
        if raw not in problems.connections:
            problems.add(path, f"unknown connection {raw!r}{suggest(raw, list(problems.connections))}")
            return False, None
        return True, raw
    raise AssertionError(kind)


def _show(raw: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}
    return f"{kind.get(type(raw), type(raw).__name__)} {raw!r}" if not isinstance(raw, dict) else "a table"


def describe_config(cls: type[Config]) -> list[dict[str, Any]]:
    """Each key with its type, default and doc: for `edgeflow actors` and the README reference."""
    from . import units

    hints = _hints(cls)
    rows = []
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        tp = hints[f.name]
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
            kind = get_args(tp)[1] if get_origin(tp) is Annotated else None
            if kind is DURATION and isinstance(default, int | float):
                default = units.format_duration(default)
            elif kind is SIZE and isinstance(default, int):
                default = units.format_size(default)
            elif isinstance(default, Config):
                default = "{...}"
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        rows.append(
            {
                "key": f.name,
                "type": _type_name(tp),
                "default": default,
                "required": required,
                "doc": f.metadata.get("doc", ""),
            }
        )
        if isinstance(tp, type) and issubclass(tp, Config):
            for sub in describe_config(tp):
                rows.append({**sub, "key": f"{f.name}.{sub['key']}"})
    return rows
