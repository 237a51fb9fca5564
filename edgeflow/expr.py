"""The safe expression language of topologies: `where`, `set`, `aggregates` and `{...}` templates.

An expression is parsed ONCE, when the topology loads, with Python's own parser (`ast`, eval mode).
Every node is checked against a small whitelist and translated into Python source that can only index
mappings, read five attributes of the Message and call the functions in `FUNCTIONS`; that source is
compiled once into a plain function `fn(p, m)` (`p` the payload, `m` the Message). A bare name `temp`
becomes `p['temp']`, `a.b` and `a['b']` become `p['a']['b']`, `meta.topic` becomes `m.topic`. The
generated code runs with empty builtins and never uses `getattr`, so an expression cannot reach a
Python object's attributes whatever the payload holds.

Errors users make:
- at compile time: `ExpressionError(message, source, col)` with a 1-based column into `source`
  ("unknown function 'fo' (did you mean 'floor'?)", "'import' is not allowed");
- at evaluation: `EvalError` (a `Permanent`, so the runtime dead-letters the message with
  `str(error)` as the reason): "missing field 'temp'", "cannot compare null > number".

Hot-path design (measured with scripts/bench_expr.py): the generated function is
`def _expr(p, m): try: return <code> except Exception as x: raise _fail(x, p, m)`. CPython 3.11's
try is zero-cost, so a caller pays one Python call and the bare indexing and operators of the
expression, nothing more; all diagnosis (which field was missing, a readable wording of a TypeError)
happens in `_fail`, on the error path only. Hot paths should call `Expr.fn` directly (the `Expr`
object's `__call__` adds a second Python call).

Null semantics: `null` (a JSON null, a Python None) is an ordinary value. `x == null` works;
arithmetic or an ordering comparison with null (`temp > 30` when temp is null) is an EvalError, and so
is a missing field: a predicate does NOT quietly turn them into false, the message is dead-lettered with
the reason. Use `has('temp')`, `get('temp', 0)` or `coalesce(temp, 0)` to make absence explicit.

Reserved words: `true false null` (and `True False None`) and `meta`; a payload field called `meta`, or
one whose name is not an identifier, is read with `field('meta')`, `field('temp-c')`. A bare name that
equals a function name is still a field: `len` is a field, `len(x)` a call.

Known limits: `*` repeats strings and lists as in Python (a huge repeat count exhausts memory); `**`
refuses integer results beyond ~100k bits instead.
"""

from __future__ import annotations

import ast
import difflib
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import CodeType, TracebackType
from typing import Any, NamedTuple

from edgeflow.errors import ExpressionError, Permanent
from edgeflow.message import Message

__all__ = [
    "AGGREGATES",
    "FUNCTIONS",
    "META_FIELDS",
    "EvalError",
    "Expr",
    "Function",
    "compile_expr",
    "compile_map",
    "compile_predicate",
    "compile_template",
    "parse_aggregate",
]


class EvalError(Permanent):
    """An expression failed on one message (a missing field, null in arithmetic, division by zero).

    A `Permanent` error: the runtime dead-letters the message with `str(error)` as the reason and the
    flow goes on. `message` is the reason alone; `source` the expression that failed.
    """

    def __init__(self, message: str, source: str = "") -> None:
        self.message = message
        self.source = source
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Expr:
    """A compiled expression. `fields` are the top-level payload fields it reads (including the literal
    paths of `get`/`has`/`field`); `fn(payload, msg)` evaluates it and raises only `EvalError`."""

    source: str
    fields: frozenset[str]
    fn: Callable[[Any, Message], Any]

    def __call__(self, payload: Any, msg: Message) -> Any:
        return self.fn(payload, msg)


META_FIELDS: dict[str, str] = {
    "topic": "the topic, path or address the message came from (string or null)",
    "ts": "the message timestamp, seconds since the epoch (float)",
    "source": "the name of the actor that produced the message",
    "id": "the message's stable id",
    "headers": "extra metadata (MQTT 5 properties...), a mapping or null: meta.headers.x",
}

AGGREGATES: dict[str, str] = {
    "count": "count(): the number of messages in the window",
    "sum": "sum(x): the sum of x",
    "avg": "avg(x): the mean of x",
    "min": "min(x): the smallest x",
    "max": "max(x): the largest x",
    "first": "first(x): x of the first message",
    "last": "last(x): x of the last message",
    "stddev": "stddev(x): the population standard deviation of x",
}


# ---------------------------------------------------------------------------------------------------
# Functions. Every implementation is documented in FUNCTIONS; the README lists them from there.


class Function(NamedTuple):
    """One callable function of the language: its implementation, signature and a one-line doc."""

    impl: Callable[..., Any]
    signature: str  # "substr(s, start, len?)": `?` marks optional arguments, `...` any number more
    doc: str
    min_args: int
    max_args: int | None  # None: any number


FUNCTIONS: dict[str, Function] = {}


def _register(signature: str, doc: str, impl: Callable[..., Any]) -> None:
    name, _, rest = signature.partition("(")
    params = [a.strip() for a in rest.rstrip(")").split(",") if a.strip()]
    required = [a for a in params if not a.endswith("?") and a != "..."]
    max_args = None if "..." in params else len(params)
    FUNCTIONS[name] = Function(impl, signature, doc, len(required), max_args)


def _str(x: Any) -> str:
    if x is None:
        return "null"
    if x is True:
        return "true"
    if x is False:
        return "false"
    return str(x)


_TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
_FALSE_WORDS = frozenset({"false", "no", "off", "0", ""})


def _bool(x: Any) -> bool:
    if isinstance(x, str):
        word = x.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise EvalError(f"bool(): cannot read {x!r} as true or false")
    return bool(x)


def _int(x: Any) -> int:
    if isinstance(x, str):
        try:
            return int(x)
        except ValueError:
            return int(float(x))
    return int(x)


def _float(x: Any) -> float:
    return float(x)


def _round(x: Any, n: Any = None) -> Any:
    return round(x, n)


def _lower(s: Any) -> Any:
    return s.lower()


def _upper(s: Any) -> Any:
    return s.upper()


def _strip(s: Any) -> Any:
    return s.strip()


def _startswith(s: Any, prefix: Any) -> bool:
    return bool(s.startswith(tuple(prefix) if isinstance(prefix, list) else prefix))


def _endswith(s: Any, suffix: Any) -> bool:
    return bool(s.endswith(tuple(suffix) if isinstance(suffix, list) else suffix))


def _contains(x: Any, part: Any) -> bool:
    return part in x


def _replace(s: Any, old: Any, new: Any) -> Any:
    return s.replace(old, new)


def _substr(s: Any, start: int, length: int | None = None) -> Any:
    if start < 0:
        start = max(len(s) + start, 0)
    return s[start:] if length is None else s[start : start + length]


def _concat(*parts: Any) -> str:
    return "".join([p if type(p) is str else _str(p) for p in parts])


def _coalesce(*values: Any) -> Any:
    for v in values:
        if v is not None:
            return v
    return None


_MISSING = object()


def _get_path(p: Any, path: tuple[str, ...], default: Any = None) -> Any:
    cur = p
    for seg in path:
        if not isinstance(cur, Mapping):
            return default
        cur = cur.get(seg, _MISSING)
        if cur is _MISSING:
            return default
    return cur


def _get(p: Any, path: Any, default: Any = None) -> Any:
    return _get_path(p, tuple(str(path).split(".")), default)


def _has_path(p: Any, path: tuple[str, ...]) -> bool:
    return _get_path(p, path, _MISSING) is not _MISSING


def _has(p: Any, path: Any) -> bool:
    return _has_path(p, tuple(str(path).split(".")))


def _field(p: Any, name: Any, default: Any = _MISSING) -> Any:
    if default is _MISSING:
        try:
            return p[name]
        except KeyError:
            raise EvalError(f"missing field {name!r}") from None
    return p.get(name, default) if isinstance(p, Mapping) else default


def _floor(x: Any) -> Any:
    return math.floor(x)


def _ceil(x: Any) -> Any:
    return math.ceil(x)


def _sqrt(x: Any) -> float:
    return math.sqrt(x)


def _log(x: Any, base: Any = None) -> float:
    return math.log(x) if base is None else math.log(x, base)


def _exp(x: Any) -> float:
    return math.exp(x)


_MAX_POW_BITS = 100_000


def _pow(a: Any, b: Any) -> Any:
    # `**` is the one operator that turns small inputs into unbounded work (10 ** 10 ** 9); refuse
    # integer results that would not fit in ~100k bits instead of stalling the event loop.
    if type(b) is int and type(a) is int and b > 0 and a.bit_length() * b > _MAX_POW_BITS:
        raise EvalError(f"{a} ** {b} is too large a number")
    r = a**b
    if type(r) is complex:
        raise EvalError(f"{a} ** {b} has no real result")
    return r


def _clamp(x: Any, lo: Any, hi: Any) -> Any:
    return lo if x < lo else hi if x > hi else x


def _to_json(x: Any) -> str:
    return json.dumps(x, separators=(",", ":"), ensure_ascii=False)


def _parse_json(s: Any) -> Any:
    return json.loads(s)


@lru_cache(maxsize=256)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _regex_match(s: Any, pattern: Any) -> bool:
    return _regex(pattern).search(s) is not None


def _format_time(ts: Any, fmt: Any = "%Y-%m-%dT%H:%M:%SZ") -> str:
    return time.strftime(fmt, time.gmtime(ts))


_TABLE: list[tuple[str, str, Callable[..., Any]]] = [
    ("abs(x)", "absolute value of a number", abs),
    ("round(x, n?)", "x rounded to n decimals (default 0, giving an integer); halves go to even", _round),
    ("min(a, b?, ...)", "the smallest of the arguments, or of a list when given one list", min),
    ("max(a, b?, ...)", "the largest of the arguments, or of a list when given one list", max),
    ("int(x)", "x as an integer (truncates; reads '12' and '12.7' too)", _int),
    ("float(x)", "x as a floating-point number (reads '12.5' too)", _float),
    ("str(x)", "x as a string (null, true, false for those values)", _str),
    ("bool(x)", "x as true/false; strings: true/yes/on/1 and false/no/off/0/'' (others: error)", _bool),
    ("len(x)", "length of a string, list or mapping", len),
    ("lower(s)", "s in lower case", _lower),
    ("upper(s)", "s in upper case", _upper),
    ("strip(s)", "s without leading and trailing whitespace", _strip),
    (
        "startswith(s, prefix)",
        "true when s starts with prefix (or with any of a list of prefixes)",
        _startswith,
    ),
    ("endswith(s, suffix)", "true when s ends with suffix (or with any of a list of suffixes)", _endswith),
    (
        "contains(x, part)",
        "true when string x contains part, or list/mapping x contains the item/key",
        _contains,
    ),
    ("replace(s, old, new)", "s with every occurrence of old replaced by new", _replace),
    ("substr(s, start, len?)", "part of s from start (0-based; negative counts from the end)", _substr),
    ("concat(a, ...)", "the arguments as strings, joined together", _concat),
    (
        "coalesce(a, b, ...)",
        "the first argument that is not null; a missing field argument counts as null",
        _coalesce,
    ),
    ("get(path, default?)", "the field at a dotted path like 'a.b', or default (null) when missing", _get),
    ("has(path)", "true when the field at a dotted path like 'a.b' exists", _has),
    ("field(name, default?)", "the top-level field called name exactly (for names like 'temp-c')", _field),
    ("now()", "the current time, seconds since the epoch (float)", time.time),
    ("floor(x)", "the largest integer <= x", _floor),
    ("ceil(x)", "the smallest integer >= x", _ceil),
    ("sqrt(x)", "square root of x", _sqrt),
    ("log(x, base?)", "logarithm of x (natural unless base is given)", _log),
    ("exp(x)", "e to the power x", _exp),
    ("pow(x, y)", "x to the power y (same as x ** y)", _pow),
    ("clamp(x, lo, hi)", "x limited to the range lo..hi", _clamp),
    ("to_json(x)", "x as a compact JSON string", _to_json),
    ("parse_json(s)", "the value a JSON string holds", _parse_json),
    (
        "regex_match(s, pattern)",
        "true when the regular expression matches anywhere in s (^...$ to anchor)",
        _regex_match,
    ),
    (
        "format_time(ts, fmt?)",
        "epoch seconds as UTC text, strftime format (default '%Y-%m-%dT%H:%M:%SZ')",
        _format_time,
    ),
]
for _sig, _doc, _impl in _TABLE:
    _register(_sig, _doc, _impl)

# Functions given the payload as a hidden first argument by the code generator.
_TAKES_PAYLOAD = frozenset({"get", "has", "field"})

# To name the function an error came from, on the error path only.
_IMPL_CODES: dict[CodeType, str] = {
    code: name for name, f in FUNCTIONS.items() if (code := getattr(f.impl, "__code__", None)) is not None
}
_IMPL_CODES[_get_path.__code__] = "get"


# ---------------------------------------------------------------------------------------------------
# Evaluation errors: turning a Python exception into a reason a person can act on.

_TYPE_NAMES = {
    "NoneType": "null",
    "int": "number",
    "float": "number",
    "str": "string",
    "bool": "boolean",
    "list": "list",
    "tuple": "list",
    "dict": "mapping",
    "bytes": "bytes",
}


def _kind(v: Any) -> str:
    name = type(v).__name__
    return _TYPE_NAMES.get(name, name)


def _t(name: str) -> str:
    return _TYPE_NAMES.get(name, name)


# Patterns are kept as strings: they are compiled (and cached by `re`) on the first error, not at import.
_REWRITES: list[tuple[str, Callable[[re.Match[str]], str]]] = [
    (
        r"'(.+)' not supported between instances of '(\w+)' and '(\w+)'",
        lambda g: f"cannot compare {_t(g[2])} {g[1]} {_t(g[3])}",
    ),
    (
        r"unsupported operand type\(s\) for ([^:]+): '(\w+)' and '(\w+)'",
        lambda g: f"cannot compute {_t(g[2])} {g[1].replace('** or pow()', '**')} {_t(g[3])}",
    ),
    (
        r'can only concatenate (\w+) \(not "(\w+)"\) to \w+',
        lambda g: f"cannot compute {_t(g[1])} + {_t(g[2])}",
    ),
    (r"bad operand type for unary (.): '(\w+)'", lambda g: f"cannot compute {g[1]}{_t(g[2])}"),
    (r"'(\w+)' object is not subscriptable", lambda g: f"{_t(g[1])} has no fields or items"),
    (r"argument of type '(\w+)' is not iterable", lambda g: f"cannot look inside {_t(g[1])}"),
    (r"'(\w+)' object has no attribute", lambda g: f"expected a string, got {_t(g[1])}"),
    (r"object of type '(\w+)' has no len\(\)", lambda g: f"{_t(g[1])} has no length"),
    (r"'(\w+)' object is not iterable", lambda g: f"expected a list, got {_t(g[1])}"),
]
_QUOTED_TYPE = r"'(NoneType|int|float|str|bool|list|tuple|dict|bytes)'"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ZeroDivisionError):
        return "division by zero"
    if isinstance(exc, KeyError):
        return f"missing key {exc.args[0]!r}" if exc.args else "missing key"
    if isinstance(exc, IndexError):
        return "index out of range"
    text = str(exc)
    for pattern, rewrite in _REWRITES:
        if match := re.search(pattern, text):
            return rewrite(match)
    text = re.sub(_QUOTED_TYPE, lambda g: _t(g[1]), text)
    if isinstance(exc, (TypeError, ValueError, OverflowError, AttributeError)):
        return text
    return f"{type(exc).__name__}: {text}"


def _dotted(path: Sequence[str]) -> str:
    return ".".join(path)


def _diagnose_paths(exc: BaseException, p: Any, m: Any, paths: Sequence[tuple[str, ...]]) -> str | None:
    """Which field path of the expression explains `exc`: the first one missing or not a mapping."""
    for path in paths:
        if path[0] == "meta":  # ('meta', 'headers', ...)
            cur, start = getattr(m, "headers", None), 2
        else:
            cur, start = p, 0
        for i in range(start, len(path)):
            seg = path[i]
            if not isinstance(cur, Mapping):
                if isinstance(exc, TypeError):
                    where = "payload" if i == 0 else f"field {_dotted(path[:i])!r}"
                    return f"{where} is {_kind(cur)}, not a mapping; cannot read {_dotted(path[: i + 1])!r}"
                break
            if seg not in cur:
                if isinstance(exc, KeyError) and exc.args and exc.args[0] == seg:
                    return f"missing field {_dotted(path[: i + 1])!r}"
                break
            cur = cur[seg]
    return None


def _function_of(tb: TracebackType | None) -> str | None:
    while tb is not None:
        if (name := _IMPL_CODES.get(tb.tb_frame.f_code)) is not None:
            return name
        tb = tb.tb_next
    return None


def _explain(exc: BaseException, p: Any, m: Any, paths: Sequence[tuple[str, ...]], source: str) -> EvalError:
    if isinstance(exc, EvalError):
        message = exc.message
    else:
        diagnosed = _diagnose_paths(exc, p, m, paths) if isinstance(exc, (KeyError, TypeError)) else None
        if diagnosed is not None:
            message = diagnosed
        else:
            message = _describe(exc)
            if (fn := _function_of(exc.__traceback__)) is not None:
                message = f"{fn}(): {message}"
    return EvalError(message, source)


# ---------------------------------------------------------------------------------------------------
# Compile time: source text -> checked ast -> Python source.

_CONSTANT_NAMES = {"true": True, "True": True, "false": False, "False": False, "null": None, "None": None}
_BINOPS: dict[type[ast.operator], str] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
}
_PRECEDENCE: dict[type[ast.operator], int] = {
    ast.Add: 1,
    ast.Sub: 1,
    ast.Mult: 2,
    ast.Div: 2,
    ast.FloorDiv: 2,
    ast.Mod: 2,
}
_CMPOPS: dict[type[ast.cmpop], str] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.In: "in",
    ast.NotIn: "not in",
}
_NOT_ALLOWED: dict[type[ast.AST], str] = {
    ast.Lambda: "'lambda' is not allowed",
    ast.ListComp: "comprehensions ('for' inside brackets) are not allowed",
    ast.SetComp: "comprehensions ('for' inside brackets) are not allowed",
    ast.DictComp: "comprehensions ('for' inside brackets) are not allowed",
    ast.GeneratorExp: "comprehensions ('for' inside brackets) are not allowed",
    ast.NamedExpr: "':=' (assignment) is not allowed",
    ast.Starred: "'*' unpacking is not allowed",
    ast.JoinedStr: "f-strings are not allowed; use concat() or a template",
    ast.FormattedValue: "f-strings are not allowed; use concat() or a template",
    ast.Dict: "mappings ({...}) are not supported",
    ast.Set: "sets ({...}) are not supported; use a list [a, b]",
    ast.Tuple: "tuples are not supported; use a list [a, b]",
    ast.Await: "'await' is not allowed",
    ast.Yield: "'yield' is not allowed",
    ast.YieldFrom: "'yield' is not allowed",
}
_BAD_BINOPS: dict[type[ast.operator], str] = {
    ast.BitAnd: "'&' is not supported; use 'and'",
    ast.BitOr: "'|' is not supported; use 'or'",
    ast.BitXor: "'^' is not supported; use ** for powers",
    ast.LShift: "'<<' is not supported",
    ast.RShift: "'>>' is not supported",
    ast.MatMult: "'@' is not supported",
}
_STATEMENT_WORDS = frozenset(
    {
        *("import", "from", "def", "class", "return", "del", "global", "nonlocal", "assert", "raise"),
        *("try", "except", "finally", "while", "for", "with", "pass", "break", "continue"),
        *("async", "await", "yield", "lambda"),
    }
)
_WORD = r"[A-Za-z_]\w*"
_SINGLE_EQ = r"(?<![=!<>:])=(?!=)"


def _close(word: str, options: Sequence[str]) -> str:
    match = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _scan(text: str, source: str, base: int) -> tuple[str, str]:
    """(parse_text, code_mask): line breaks and tabs outside string literals become spaces, so that an
    expression may span lines in TOML and columns stay character offsets into one line; code_mask is
    the same text with string literal contents blanked (to find keywords after a SyntaxError)."""
    out = list(text)
    mask = list(text)
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote:
            if c == "\\":
                mask[i] = " "
                if i + 1 < len(text):
                    mask[i + 1] = " "
                i += 2
                continue
            if c == quote:
                quote = ""
            else:
                mask[i] = " "
        elif c in "'\"":
            quote = c
        elif c in "\n\r\t":
            out[i] = mask[i] = " "
        elif c == "#":
            raise ExpressionError("comments ('#') are not supported", source, base + i + 1)
        i += 1
    return "".join(out), "".join(mask)


@dataclass
class _Env:
    """Names bound in the generated code's globals, shared by the expressions of one map."""

    names: dict[str, Any]
    counter: int = 0

    def bind(self, prefix: str, value: Any) -> str:
        self.counter += 1
        name = f"{prefix}{self.counter}"
        self.names[name] = value
        return name

    def temp(self) -> str:
        self.counter += 1
        return f"_t{self.counter}"


def _new_env() -> _Env:
    names: dict[str, Any] = {"__builtins__": {}, "_E": Exception, "_s": _str}
    for name, f in FUNCTIONS.items():
        names[f"_f_{name}"] = f.impl
    names["_f_pow"] = _pow
    names["_get_path"] = _get_path
    names["_has_path"] = _has_path
    return _Env(names)


class _Compiler:
    """Checks one expression and writes it as Python source; `paths` and `optional` record the payload
    paths it reads (strictly, and through get/has/field)."""

    def __init__(self, source: str, text: str, base: int, env: _Env) -> None:
        self.source = source
        self.base = base
        self.env = env
        self.paths: list[tuple[str, ...]] = []
        self.optional: set[str] = set()
        line, mask = _scan(text, source, base)
        stripped = line.lstrip(" ")
        self.base += len(line) - len(stripped)
        self.text = stripped.rstrip(" ")
        self.mask = mask[len(line) - len(stripped) :]
        self.bytes = self.text.encode("utf-8")

    # --- columns and errors ---

    def col(self, byte_offset: int) -> int:
        return self.base + len(self.bytes[:byte_offset].decode("utf-8", "replace")) + 1

    def fail(self, node: ast.AST | None, message: str, byte_offset: int | None = None) -> ExpressionError:
        if byte_offset is None:
            byte_offset = getattr(node, "col_offset", 0)
        return ExpressionError(message, self.source, self.col(byte_offset))

    def op_offset(self, left: ast.AST, right: ast.AST) -> int:
        """The byte offset of the operator between two operands (ops carry no position of their own)."""
        start = getattr(left, "end_col_offset", 0)
        end = getattr(right, "col_offset", len(self.bytes))
        gap = self.bytes[start:end]
        skip = len(gap) - len(gap.lstrip(b" )"))
        return start + skip

    # --- parsing ---

    def parse(self) -> ast.expr:
        if not self.text:
            raise ExpressionError("empty expression", self.source, self.base + 1)
        try:
            tree = ast.parse(self.text, mode="eval")
        except SyntaxError as e:
            raise self.syntax_error(e) from None
        except (RecursionError, MemoryError):
            raise ExpressionError("expression is too long or too deeply nested", self.source, self.base + 1) from None
        except ValueError:  # an integer literal of more than 4300 digits
            raise ExpressionError("a number is too long (over 4300 digits)", self.source, self.base + 1) from None
        return tree.body

    def syntax_error(self, e: SyntaxError) -> ExpressionError:
        for word in re.finditer(_WORD, self.mask):
            if word[0] in _STATEMENT_WORDS:
                return ExpressionError(f"{word[0]!r} is not allowed", self.source, self.base + word.start() + 1)
        if eq := re.search(_SINGLE_EQ, self.mask):
            return ExpressionError(
                "'=' is not allowed (it assigns); use '==' to compare",
                self.source,
                self.base + eq.start() + 1,
            )
        message = (e.msg or "invalid syntax").split(" (detected at line")[0]
        if message.startswith("Exceeds the limit"):
            return ExpressionError("a number is too long (over 4300 digits)", self.source, self.base + 1)
        if not e.offset or e.offset < 1 or (e.lineno or 1) > 1:  # the parser ran off the end
            return ExpressionError(
                "the expression ends too early" if message == "invalid syntax" else message,
                self.source,
                self.base + len(self.text) + 1,
            )
        offset = e.offset
        return ExpressionError(message, self.source, self.base + min(offset, len(self.text) + 1))

    # --- code generation ---

    def gen(self, node: ast.AST) -> str:
        if isinstance(node, ast.Constant):
            return self.constant(node)
        if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript)):
            return self.access(node)
        if isinstance(node, ast.BoolOp):
            op = " and " if isinstance(node.op, ast.And) else " or "
            return "(" + op.join(self.gen(v) for v in node.values) + ")"
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return f"(not {self.gen(node.operand)})"
            if isinstance(node.op, ast.USub):
                return f"(-{self.gen(node.operand)})"
            if isinstance(node.op, ast.UAdd):
                return f"(+{self.gen(node.operand)})"
            raise self.fail(node, "'~' is not supported")
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Pow):
                return f"_f_pow({self.gen(node.left)}, {self.gen(node.right)})"
            if type(node.op) in _BINOPS:
                return self.chain(node)
            raise self.fail(node, _BAD_BINOPS[type(node.op)], self.op_offset(node.left, node.right))
        if isinstance(node, ast.Compare):
            parts = [self.gen(node.left)]
            left: ast.AST = node.left
            for cmp, right in zip(node.ops, node.comparators, strict=True):
                sym = _CMPOPS.get(type(cmp))
                if sym is None:
                    raise self.fail(
                        node, "'is' is not supported; use == or != (x == null)", self.op_offset(left, right)
                    )
                parts.append(f"{sym} {self.gen(right)}")
                left = right
            return "(" + " ".join(parts) + ")"
        if isinstance(node, ast.IfExp):
            return f"({self.gen(node.body)} if {self.gen(node.test)} else {self.gen(node.orelse)})"
        if isinstance(node, ast.List):
            return "[" + ", ".join(self.gen(e) for e in node.elts) + "]"
        if isinstance(node, ast.Call):
            return self.call(node)
        if isinstance(node, ast.Slice):
            lo = self.gen(node.lower) if node.lower else ""
            hi = self.gen(node.upper) if node.upper else ""
            step = ":" + self.gen(node.step) if node.step else ""
            return f"{lo}:{hi}{step}"
        raise self.fail(node, _NOT_ALLOWED.get(type(node), f"{type(node).__name__} is not allowed"))

    def chain(self, node: ast.BinOp) -> str:
        """A left-associative run like a + b - c + d, written flat: without a parenthesis per operator
        (Python's parser refuses more than 200 nested ones) and without recursing once per operator."""
        group = _PRECEDENCE[type(node.op)]
        rights: list[tuple[str, ast.expr]] = []
        cur: ast.expr = node
        while isinstance(cur, ast.BinOp) and _PRECEDENCE.get(type(cur.op)) == group:
            rights.append((_BINOPS[type(cur.op)], cur.right))
            cur = cur.left
        parts = [self.gen(cur)]
        parts += [f"{sym} {self.gen(right)}" for sym, right in reversed(rights)]
        return "(" + " ".join(parts) + ")"

    def generate(self, node: ast.AST) -> str:
        """`gen` for a whole expression: one too deep for the generator is refused, not a crash."""
        try:
            return self.gen(node)
        except RecursionError:
            raise ExpressionError("expression is too long or too deeply nested", self.source, self.base + 1) from None

    def constant(self, node: ast.Constant) -> str:
        v = node.value
        if v is None or isinstance(v, (bool, int, str)):
            return repr(v)
        if isinstance(v, float):
            return repr(v) if math.isfinite(v) else self.env.bind("_k", v)
        if isinstance(v, bytes):
            raise self.fail(node, "bytes literals are not supported")
        if isinstance(v, complex):
            raise self.fail(node, "complex numbers are not supported")
        raise self.fail(node, f"{'...' if v is Ellipsis else repr(v)!r} is not allowed")

    def check_name(self, name: str, byte_offset: int) -> None:
        if name.startswith("__"):
            raise self.fail(None, f"{name!r} is not allowed (names starting with '__' are reserved)", byte_offset)

    def path_of(self, node: ast.AST) -> list[tuple[str, int]] | None:
        """The (segment, byte offset) chain of a field access a.b['c'] rooted at a name, else None."""
        if isinstance(node, ast.Name):
            self.check_name(node.id, node.col_offset)
            return [(node.id, node.col_offset)]
        if isinstance(node, ast.Attribute):
            inner = self.path_of(node.value)
            offset = (node.end_col_offset or 0) - len(node.attr.encode("utf-8"))
            self.check_name(node.attr, offset)
            return None if inner is None else [*inner, (node.attr, offset)]
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            inner = self.path_of(node.value)
            return None if inner is None else [*inner, (node.slice.value, node.slice.col_offset)]
        return None

    def access(self, node: ast.Name | ast.Attribute | ast.Subscript) -> str:
        path = self.path_of(node)
        if path is None:
            if isinstance(node, ast.Subscript):
                return f"{self.gen(node.value)}[{self.gen(node.slice)}]"
            assert isinstance(node, ast.Attribute)  # a Name always has a path
            if isinstance(node.value, ast.Constant):
                raise self.fail(node, f"{_kind(node.value.value)} has no fields")
            return f"{self.gen(node.value)}[{node.attr!r}]"
        root = path[0][0]
        if root in _CONSTANT_NAMES:
            if len(path) == 1:
                return repr(_CONSTANT_NAMES[root])
            raise self.fail(None, f"{root} has no fields", path[1][1])
        segments = [seg for seg, _ in path]
        if root == "meta":
            return self.meta(path)
        self.paths.append(tuple(segments))
        return "p" + "".join(f"[{seg!r}]" for seg in segments)

    def meta(self, path: list[tuple[str, int]]) -> str:
        if len(path) == 1:
            raise self.fail(None, "'meta' needs a field: " + ", ".join(f"meta.{f}" for f in META_FIELDS), path[0][1])
        name, offset = path[1]
        if name not in META_FIELDS:
            raise self.fail(None, f"unknown field of meta: {name!r}{_close(name, list(META_FIELDS))}", offset)
        if len(path) > 2:
            if name != "headers":
                raise self.fail(None, f"meta.{name} has no fields", path[2][1])
            self.paths.append(("meta", *(seg for seg, _ in path[1:])))
            return "m.headers" + "".join(f"[{seg!r}]" for seg, _ in path[2:])
        return f"m.{name}"

    def lenient(self, node: ast.AST) -> str:
        """A bare field path read without failing when missing (coalesce's arguments); else strict."""
        path = self.path_of(node)
        if path is None or path[0][0] in _CONSTANT_NAMES:
            return self.gen(node)
        segments = tuple(seg for seg, _ in path)
        if segments[0] == "meta":
            if len(segments) > 2 and segments[1] == "headers":
                self.meta(path)  # validates
                self.paths.pop()
                return f"_get_path(m.headers, {segments[2:]!r})"
            return self.gen(node)
        self.optional.add(segments[0])
        return f"_get_path(p, {segments!r})"

    def call(self, node: ast.Call) -> str:
        func = node.func
        if not isinstance(func, ast.Name):
            if isinstance(func, ast.Attribute):
                self.check_name(func.attr, (func.end_col_offset or 0) - len(func.attr.encode("utf-8")))
            if isinstance(func, ast.Attribute) and func.attr in FUNCTIONS:
                raise self.fail(
                    func,
                    f"methods are not available: write {FUNCTIONS[func.attr].signature}, not x.{func.attr}()",
                )
            self.gen(func)  # a lambda or other refused construct says so first
            raise self.fail(func, "only the documented functions can be called, by name")
        name = func.id
        self.check_name(name, func.col_offset)
        if name not in FUNCTIONS:
            if name in AGGREGATES:
                raise self.fail(func, f"{name!r} is an aggregate; it is only allowed in a window's aggregates")
            raise self.fail(func, f"unknown function {name!r}{_close(name, list(FUNCTIONS))}")
        for kw in node.keywords:
            what = (
                "'**' unpacking is not allowed" if kw.arg is None else f"named arguments ({kw.arg}=) are not supported"
            )
            raise self.fail(kw, what)
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                raise self.fail(arg, _NOT_ALLOWED[ast.Starred])
        f = FUNCTIONS[name]
        n = len(node.args)
        if n < f.min_args or (f.max_args is not None and n > f.max_args):
            raise self.fail(func, f"{name}() does not take {n} argument{'s' * (n != 1)}: {f.signature}")
        args = node.args
        if name in _TAKES_PAYLOAD:
            return self.payload_call(name, args)
        if name == "coalesce":
            return self.coalesce(args)
        if name == "regex_match" and isinstance(args[1], ast.Constant) and isinstance(args[1].value, str):
            try:
                pattern = re.compile(args[1].value)
            except re.error as e:
                raise self.fail(args[1], f"invalid regular expression: {e}") from None
            return f"({self.env.bind('_rx', pattern)}.search({self.gen(args[0])}) is not None)"
        return f"_f_{name}(" + ", ".join(self.gen(a) for a in args) + ")"

    def payload_call(self, name: str, args: list[ast.expr]) -> str:
        first = args[0]
        rest = "".join(", " + self.gen(a) for a in args[1:])
        if isinstance(first, ast.Constant):
            if not isinstance(first.value, str) or not first.value:
                raise self.fail(first, f"{name}() needs a field name string, like {name}('temp')")
            if name == "field":
                self.optional.add(first.value)
                return f"_f_field(p, {first.value!r}{rest})"
            segments = tuple(first.value.split("."))
            self.optional.add(segments[0])
            return f"_{name}_path(p, {segments!r}{rest})"
        return f"_f_{name}(p, {self.gen(first)}{rest})"

    def coalesce(self, args: list[ast.expr]) -> str:
        # Inline and lazy: later arguments are evaluated only when the earlier ones are null.
        code = self.lenient(args[-1])
        for arg in reversed(args[:-1]):
            t = self.env.temp()
            code = f"({t} if ({t} := {self.lenient(arg)}) is not None else {code})"
        return code


def _is_boolean(node: ast.AST) -> bool:
    if isinstance(node, ast.Compare):
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return True
    if isinstance(node, ast.Constant) and isinstance(node.value, bool):
        return True
    return isinstance(node, ast.BoolOp) and all(_is_boolean(v) for v in node.values)


def _build(code: str, env: _Env, name: str, source: str) -> Callable[..., Any]:
    namespace = env.names
    try:
        code_object = compile(code, f"<expression {source!r}>", "exec")
    except (SyntaxError, RecursionError, MemoryError):  # beyond the limits of Python's own compiler
        raise ExpressionError("expression is too long or too deeply nested", source, 1) from None
    exec(code_object, namespace)
    fn: Callable[..., Any] = namespace.pop(name)
    return fn


def _failer(source: str, paths: Sequence[tuple[str, ...]]) -> Callable[[BaseException, Any, Any], EvalError]:
    frozen = tuple(paths)

    def fail(exc: BaseException, p: Any, m: Any) -> EvalError:
        return _explain(exc, p, m, frozen, source)

    return fail


def _compile(source: str, *, predicate: bool = False, text: str | None = None, base: int = 0) -> Expr:
    if not isinstance(source, str):
        raise ExpressionError(f"an expression must be a string, not {_kind(source)}", repr(source))
    env = _new_env()
    c = _Compiler(source, source if text is None else text, base, env)
    return _finish(c, c.parse(), predicate)


def _finish(c: _Compiler, node: ast.expr, predicate: bool) -> Expr:
    body = c.generate(node)
    if predicate and not _is_boolean(node):
        body = f"(True if {body} else False)"
    c.env.names["_fail"] = _failer(c.source, c.paths)
    code = (
        f"def _expr(p, m):\n    try:\n        return {body}\n    except _E as x:\n        raise _fail(x, p, m) from x\n"
    )
    fn = _build(code, c.env, "_expr", c.source)
    fields = frozenset(path[0] for path in c.paths if path[0] != "meta") | c.optional
    return Expr(c.source, fields, fn)


# ---------------------------------------------------------------------------------------------------
# Public API


def compile_expr(source: str) -> Expr:
    """Parse and compile one expression; raises ExpressionError (with a 1-based column) if it is not
    valid. The result's `fn(payload, msg)` raises only EvalError."""
    return _compile(source)


def compile_predicate(source: str) -> Expr:
    """Like compile_expr, for `where`: the result is true or false by the usual truth rules (0, '',
    [] and null are false). A missing field or null in a comparison still raises EvalError (dead
    letter), it does not count as false."""
    return _compile(source, predicate=True)


def _check_key(key: Any, what: str) -> tuple[str, ...]:
    if not isinstance(key, str) or not key or any(not seg for seg in key.split(".")):
        raise ExpressionError(f"{what} {key!r}: a field name must be a non-empty string like 'a' or 'a.b'", repr(key))
    return tuple(key.split("."))


def _drop_path(d: dict[str, Any], path: tuple[str, ...]) -> None:
    if len(path) == 1:
        d.pop(path[0], None)
        return
    inner = d.get(path[0])
    if isinstance(inner, Mapping):
        copy = dict(inner)
        _drop_path(copy, path[1:])
        d[path[0]] = copy


def _set_path(d: dict[str, Any], path: tuple[str, ...], value: Any, key: str) -> None:
    if len(path) == 1:
        d[path[0]] = value
        return
    inner = d.get(path[0])
    if inner is None:
        copy: dict[str, Any] = {}
    elif isinstance(inner, Mapping):
        copy = dict(inner)
    else:
        raise EvalError(f"set key {key!r}: cannot set a field inside {path[0]!r}, which is {_kind(inner)}")
    _set_path(copy, path[1:], value, key)
    d[path[0]] = copy


def compile_map(set: Mapping[str, str], drop: Sequence[str] = ()) -> Callable[[Any, Message], dict[str, Any]]:
    """One function for a whole `map`: it returns a NEW dict, a copy of the payload minus `drop`, plus
    every `set` key (set wins over drop). All `set` expressions read the incoming payload, not each
    other's results. Dotted keys (`a.b`) set or drop nested fields, copying the nested mappings on the
    way instead of changing them. A bad expression raises ExpressionError whose message starts with
    "set key 'k': "; at evaluation, EvalError with the same prefix. Runs once per message."""
    if not isinstance(set, Mapping):
        raise ExpressionError("'set' must be a table of field = \"expression\"", repr(set))
    if isinstance(drop, str) or not isinstance(drop, Sequence):
        raise ExpressionError("'drop' must be a list of field names", repr(drop))
    env = _new_env()
    flat: list[tuple[str, str]] = []
    nested: list[tuple[tuple[str, ...], str, str]] = []
    per_key: list[tuple[str, Expr]] = []
    set_keys: list[tuple[str, ...]] = []
    for key, source in set.items():
        path = _check_key(key, "set key")
        if not isinstance(source, str):
            raise ExpressionError(
                f"set key {key!r}: the expression must be a string, not {_kind(source)}", repr(source)
            )
        try:
            c = _Compiler(source, source, 0, env)
            body = c.generate(c.parse())
            alone = _compile(source)  # evaluated on the error path only, to name the failing key
        except ExpressionError as e:
            raise ExpressionError(f"set key {key!r}: {e.message}", e.source, e.col) from None
        per_key.append((key, alone))
        set_keys.append(path)
        if len(path) == 1:
            flat.append((key, body))
        else:
            nested.append((path, key, body))
    drops = [_check_key(k, "drop key") for k in drop]
    drops = [d for d in drops if d not in set_keys]

    lines = ["def _map(p, m):", "    try:"]
    for i, (_, _, body) in enumerate(nested):
        lines.append(f"        _v{i} = {body}")
    items = "".join(f", {key!r}: {body}" for key, body in flat)
    lines.append(f"        d = {{**p{items}}}")
    lines += ["    except _E as x:", "        raise _fail(x, p, m) from x"]
    for path in drops:
        lines.append(f"    d.pop({path[0]!r}, None)" if len(path) == 1 else f"    _drop_path(d, {path!r})")
    for i, (path, key, _) in enumerate(nested):
        lines.append(f"    _set_path(d, {path!r}, _v{i}, {key!r})")
    lines.append("    return d")

    def fail(exc: BaseException, p: Any, m: Any) -> EvalError:
        if not isinstance(p, Mapping):
            return EvalError(f"payload is {_kind(p)}, not a mapping", "")
        for key, expr in per_key:
            try:
                expr.fn(p, m)
            except EvalError as e:
                return EvalError(f"set key {key!r}: {e.message}", expr.source)
        return _explain(exc, p, m, (), "")

    env.names.update(_fail=fail, _drop_path=_drop_path, _set_path=_set_path)
    return _build("\n".join(lines) + "\n", env, "_map", "map")


def _split_template(template: str) -> list[str | tuple[str, int]]:
    """Literal strings and (expression text, 0-based offset) pieces of a template."""
    parts: list[str | tuple[str, int]] = []
    literal: list[str] = []
    i, n = 0, len(template)
    while i < n:
        c = template[i]
        if c == "}":
            if template.startswith("}}", i):
                literal.append("}")
                i += 2
                continue
            raise ExpressionError("single '}' in a template; write '}}' for a literal brace", template, i + 1)
        if c != "{":
            literal.append(c)
            i += 1
            continue
        if template.startswith("{{", i):
            literal.append("{")
            i += 2
            continue
        # Find the matching '}', skipping string literals and nested brackets.
        depth, quote, j = 0, "", i + 1
        while j < n:
            d = template[j]
            if quote:
                if d == "\\":
                    j += 1
                elif d == quote:
                    quote = ""
            elif d in "'\"":
                quote = d
            elif d in "([{":
                depth += 1
            elif d in ")]":
                depth -= 1
            elif d == "}":
                if depth == 0:
                    break
                depth -= 1
            j += 1
        if j >= n:
            raise ExpressionError("'{' is never closed; write '{{' for a literal brace", template, i + 1)
        inner = template[i + 1 : j]
        if not inner.strip():
            raise ExpressionError("empty '{}' in a template; write '{{}}' for literal braces", template, i + 1)
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append((inner, i + 1))
        i = j + 1
    if literal:
        parts.append("".join(literal))
    return parts


def compile_template(template: str) -> Callable[[Any, Message], str]:
    """A function rendering `template` for one message: `{expr}` is replaced by the value of any
    expression (`{device}`, `{meta.source}`, `{round(temp, 1)}`) as text (null/true/false for those
    values), `{{` and `}}` stand for braces. Raises ExpressionError (column into the template) now,
    EvalError when rendering (a missing field). A template without `{}` renders its constant text."""
    if not isinstance(template, str):
        raise ExpressionError(f"a template must be a string, not {_kind(template)}", repr(template))
    parts = _split_template(template)
    if all(isinstance(part, str) for part in parts):
        constant = "".join(part for part in parts if isinstance(part, str))

        def render_constant(p: Any, m: Message) -> str:
            return constant

        return render_constant
    env = _new_env()
    pieces: list[str] = []
    paths: list[tuple[str, ...]] = []
    for part in parts:
        if isinstance(part, str):
            pieces.append(repr(part))
            continue
        text, offset = part
        c = _Compiler(template, text, offset, env)
        node = c.parse()
        body = c.generate(node)
        paths += c.paths
        string_result = isinstance(node, ast.Constant) and isinstance(node.value, str)
        pieces.append(body if string_result else f"_s({body})")
    env.names["_fail"] = _failer(template, paths)
    code = (
        "def _render(p, m):\n"
        "    try:\n"
        f"        return {' + '.join(pieces)}\n"
        "    except _E as x:\n"
        "        raise _fail(x, p, m) from x\n"
    )
    return _build(code, env, "_render", template)


def parse_aggregate(source: str) -> tuple[str, Expr | None]:
    """A window aggregate like `avg(temp)`, `count()`, `sum(x * 2)`: returns the aggregate's name (one
    of AGGREGATES) and its compiled argument (None for count()). Raises ExpressionError otherwise."""
    if not isinstance(source, str):
        raise ExpressionError(f"an aggregate must be a string, not {_kind(source)}", repr(source))
    env = _new_env()
    c = _Compiler(source, source, 0, env)
    node = c.parse()
    choices = ", ".join(doc.split(":")[0] for doc in AGGREGATES.values())
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in AGGREGATES):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            name = node.func.id
            raise c.fail(node, f"unknown aggregate {name!r}{_close(name, list(AGGREGATES))}; use one of {choices}")
        raise c.fail(node, f"an aggregate is one call like avg(temp): one of {choices}")
    name = node.func.id
    for kw in node.keywords:
        raise c.fail(kw, f"named arguments ({kw.arg}=) are not supported")
    if name == "count":
        if node.args:
            raise c.fail(node.args[0], "count() takes no argument")
        return name, None
    if len(node.args) != 1:
        raise c.fail(node.func, f"{name}() takes exactly one argument, like {name}(temp)")
    arg = node.args[0]
    if isinstance(arg, ast.Starred):
        raise c.fail(arg, _NOT_ALLOWED[ast.Starred])
    c.source = source
    expr = _finish(c, arg, predicate=False)
    text = ast.get_source_segment(c.text, arg) or source
    return name, Expr(text, expr.fields, expr.fn)
