"""Line numbers for TOML keys, so every topology problem can say `file:line: key.path: message`.

`tomllib` gives values but no positions. `locate_keys` scans the same text a second time, after tomllib
accepted it, and maps every key path to the 1-based line where it is written. `load` does both and
turns every way of failing to read a topology into a `ConfigError` the CLI can print.

Key paths are tuples as the parsed document would be walked: `str` for table keys, `int` for array
positions. An array of tables takes the element number, so the `k` of the second `[[x]]` is
`("x", 1, "k")`; a value array takes it too, so `topics = ["a", "b"]` gives `("topics",)`, `("topics",
0)` and `("topics", 1)`, each on the line where that element starts. What is located:

- a table header `[a.b]` locates `("a", "b")`; `("a",)`, if never defined by its own header, gets the
  line where it is first mentioned;
- `[[x]]` locates `("x", i)` for its i-th occurrence and `("x",)` on the first;
- `k = v` and dotted `a.b = v`, at top level or inside inline tables at any depth, locate the full path
  on the line where the key starts (and the dotted prefixes where first mentioned);
- keys are unquoted and unescaped the way tomllib does it, so `"b.c"` is the one key `b.c`.

Multi-line strings and arrays, comments, and strings holding `=`, `#`, `[`, `{` are skipped as values:
their continuation lines are never taken for keys. Inline tables may span lines and end with a comma
(TOML 1.1), so this module keeps working if tomllib learns that.
"""

from __future__ import annotations

import bisect
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

from edgeflow.errors import ConfigError, ConfigProblem

__all__ = ["KeyPath", "Locator", "format_path", "load", "locate_keys"]

KeyPath = tuple[str | int, ...]

# Every pattern is anchored by `match(text, pos)` and possessive: the input is valid TOML, so there is
# never a reason to backtrack, and a scanner bug must not turn into a catastrophic-backtracking hang.
_BLANK = re.compile(r"[ \t]*+")
_BLANK_LINES = re.compile(r"(?:[ \t\r\n]++|#[^\n]*+)*+")
_LINE_END = re.compile(r"[ \t\r]*+(?:#[^\n]*+)?(?:\n|\Z)")
# Bare keys are ASCII letters, digits, `_` and `-` in TOML 1.0; accept any run of other characters
# so that a later TOML version with wider bare keys does not break the scan.
_BARE_KEY = re.compile(r"[^ \t\r\n.=\[\]\"'#,{}]++")
_BASIC = re.compile(r'"(?:[^"\\\n]++|\\.)*+"')
_LITERAL = re.compile(r"'[^'\n]*+'")
# Up to two quotes may end the content right before the closing three: `"""a""""` is `a"`.
_ML_BASIC = re.compile(r'"""(?:[^"\\]++|\\.|"{1,2}+(?!"))*+"{3,5}+', re.DOTALL)
_ML_LITERAL = re.compile(r"'''(?:[^']++|'{1,2}+(?!'))*+'{3,5}+")
# Numbers, booleans, dates and times: up to what ends a value (`1979-05-27 07:32:00` has a blank).
_SCALAR = re.compile(r"[^,\]}#\r\n]++")
_SIMPLE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_DECODE_AT = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)$")


class _ScanError(ValueError):
    pass


class _Scanner:
    """One pass over valid TOML text, filling `lines`; raises `_ScanError` where the text is not."""

    def __init__(self, text: str, lines: dict[KeyPath, int]) -> None:
        self.text = text
        self.pos = 0
        self.lines = lines
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self.tables: dict[KeyPath, int] = {}  # path of an array of tables -> elements seen so far

    def line(self, pos: int | None = None) -> int:
        return bisect.bisect_left(self.newlines, self.pos if pos is None else pos) + 1

    def fail(self, what: str) -> _ScanError:
        return _ScanError(f"cannot scan TOML at line {self.line()}: {what}")

    def mention(self, path: KeyPath, line: int) -> None:
        """A table implied by a longer path: keep the first line it shows up on."""
        self.lines.setdefault(path, line)

    def define(self, path: KeyPath, line: int) -> None:
        """A key or table defined right here: this line wins over an earlier mention."""
        self.lines[path] = line

    def expect(self, char: str) -> None:
        if not self.text.startswith(char, self.pos):
            raise self.fail(f"expected {char!r}")
        self.pos += 1

    def skip(self, pattern: re.Pattern[str]) -> None:
        match = pattern.match(self.text, self.pos)
        if match is not None:
            self.pos = match.end()

    def scan(self) -> None:
        text = self.text
        table: KeyPath = ()
        while True:
            self.skip(_BLANK_LINES)
            if self.pos >= len(text):
                return
            if text.startswith("[[", self.pos):
                table = self.array_table_header()
            elif text[self.pos] == "[":
                table = self.table_header()
            else:
                self.key_value(table)
            if _LINE_END.match(text, self.pos) is None:
                raise self.fail("expected the end of the line")
            self.skip(_LINE_END)

    def table_header(self) -> KeyPath:
        line = self.line()
        self.pos += 1
        *parents, name = self.key()
        path = (*self.resolve(parents, line), name)
        self.define(path, line)
        self.skip(_BLANK)
        self.expect("]")
        return path

    def array_table_header(self) -> KeyPath:
        line = self.line()
        self.pos += 2
        *parents, name = self.key()
        array = (*self.resolve(parents, line), name)
        self.mention(array, line)
        index = self.tables.get(array, 0)
        self.tables[array] = index + 1
        path = (*array, index)
        self.define(path, line)
        self.skip(_BLANK)
        self.expect("]")
        self.expect("]")
        return path

    def resolve(self, names: list[str], line: int) -> KeyPath:
        """The path of a header's parents; a parent that is an array of tables means its last element."""
        path: KeyPath = ()
        for name in names:
            path = (*path, name)
            self.mention(path, line)
            count = self.tables.get(path)
            if count is not None:
                path = (*path, count - 1)
        return path

    def key_value(self, table: KeyPath) -> None:
        line = self.line()
        names = self.key()
        path = table
        for name in names[:-1]:
            path = (*path, name)
            self.mention(path, line)
        path = (*path, names[-1])
        self.define(path, line)
        self.skip(_BLANK)
        self.expect("=")
        self.skip(_BLANK)
        self.value(path)

    def key(self) -> list[str]:
        """A simple or dotted key, unquoted; leaves `pos` after it (and after blanks)."""
        text = self.text
        names: list[str] = []
        while True:
            self.skip(_BLANK)
            char = text[self.pos : self.pos + 1]
            pattern = _BASIC if char == '"' else _LITERAL if char == "'" else _BARE_KEY
            match = pattern.match(text, self.pos)
            if match is None:
                raise self.fail("expected a key")
            raw = match.group()
            if char == '"' and "\\" in raw:
                # Rare enough that exactness beats speed: let tomllib do the unescaping.
                names.append(tomllib.loads(f"k = {raw}")["k"])
            else:
                names.append(raw[1:-1] if char in "\"'" else raw)
            self.pos = match.end()
            self.skip(_BLANK)
            if not text.startswith(".", self.pos):
                return names
            self.pos += 1

    def value(self, path: KeyPath) -> None:
        text = self.text
        char = text[self.pos : self.pos + 1]
        if char == "[":
            self.array(path)
            return
        if char == "{":
            self.inline_table(path)
            return
        if char == '"':
            pattern = _ML_BASIC if text.startswith('"""', self.pos) else _BASIC
        elif char == "'":
            pattern = _ML_LITERAL if text.startswith("'''", self.pos) else _LITERAL
        else:
            pattern = _SCALAR
        match = pattern.match(text, self.pos)
        if match is None:
            raise self.fail("expected a value")
        self.pos = match.end()

    def array(self, path: KeyPath) -> None:
        self.pos += 1
        index = 0
        while True:
            self.skip(_BLANK_LINES)
            if self.text.startswith("]", self.pos):
                self.pos += 1
                return
            element = (*path, index)
            self.define(element, self.line())
            self.value(element)
            index += 1
            self.skip(_BLANK_LINES)
            if not self.text.startswith(",", self.pos):
                self.expect("]")
                return
            self.pos += 1

    def inline_table(self, path: KeyPath) -> None:
        self.pos += 1
        while True:
            self.skip(_BLANK_LINES)
            if self.text.startswith("}", self.pos):
                self.pos += 1
                return
            self.key_value(path)
            self.skip(_BLANK_LINES)
            if not self.text.startswith(",", self.pos):
                self.expect("}")
                return
            self.pos += 1


def locate_keys(text: str) -> dict[KeyPath, int]:
    """Every key path in `text` (valid TOML: call it only after tomllib accepted the text) -> its line.

    Raises `ValueError` if the text turns out not to be TOML after all; the message names the line.
    """
    lines: dict[KeyPath, int] = {}
    _Scanner(text, lines).scan()
    return lines


def format_path(path: Sequence[str | int]) -> str:
    """`path` as a person reads it: `operators.hot.where`, `x[0].k`, `connections."a.b".url`."""
    out: list[str] = []
    for part in path:
        if isinstance(part, int):
            out.append(f"[{part}]")
        else:
            name = part if _SIMPLE_KEY.fullmatch(part) else _quote(part)
            out.append(f".{name}" if out else name)
    return "".join(out)


def _quote(name: str) -> str:
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c >= " " and c != "\x7f" else f"\\u{ord(c):04x}" for c in escaped) + '"'


class Locator:
    """Where keys are in one topology file, for messages that say `file:line: key.path: ...`.

    Built by `load` (or `Locator.from_text`); read-only afterwards, cheap to query. `text` is the
    decoded file (byte-order mark removed), for callers that quote it, so nobody reads the file twice.
    """

    __slots__ = ("file", "lines", "text")

    def __init__(self, lines: Mapping[KeyPath, int], file: str = "<string>", text: str = "") -> None:
        self.lines = lines
        self.file = file
        self.text = text

    @classmethod
    def from_text(cls, text: str, file: str = "<string>") -> Locator:
        """Locate the keys of `text`, which tomllib has accepted; raises `ValueError` if it is not TOML."""
        return cls(locate_keys(text), file, text)

    def line_of(self, path: Sequence[str | int] | str) -> int | None:
        """The line of `path`, or of its nearest enclosing table or key that is written in the file.

        A key missing from `[sources.temps]` gives the line of `[sources.temps]`; a key missing from
        `buffer = { ... }` the line of `buffer`. `None` when not even the first key is in the file (a
        missing top-level table). A `str` is split on dots: a shorthand for keys that hold none.
        """
        parts: tuple[str | int, ...] = tuple(path.split(".")) if isinstance(path, str) else tuple(path)
        for end in range(len(parts), 0, -1):
            line = self.lines.get(parts[:end])
            if line is not None:
                return line
        return None

    def problem(self, path: Sequence[str | int], message: str) -> ConfigProblem:
        """A `ConfigProblem` about `path`, located by `line_of`, its path written by `format_path`."""
        return ConfigProblem(self.file, self.line_of(path), format_path(path), message)


def load(path: str | os.PathLike[str]) -> tuple[dict[str, Any], Locator]:
    """Read and parse the topology at `path`; return the document and where its keys are.

    Raises `ConfigError` with one located problem when the file cannot be read, is not UTF-8 or is not
    valid TOML (tomllib's "(at line L, column C)" becomes the problem's line and "at column C"). A
    leading byte-order mark (some Windows editors write one) is ignored.
    """
    file = os.fspath(path)
    try:
        with open(file, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise ConfigError([ConfigProblem(file, None, "", f"cannot read the file ({reason})")]) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        message = f"not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); save it as UTF-8"
        raise ConfigError([ConfigProblem(file, line, "", message)]) from exc
    text = text.removeprefix("\ufeff")
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_decode_problem(file, text, exc)]) from exc
    except RecursionError as exc:  # tomllib recurses once per nested array or inline table
        raise ConfigError([ConfigProblem(file, None, "", "not valid TOML: values nested too deeply")]) from exc
    lines: dict[KeyPath, int] = {}
    try:
        _Scanner(text, lines).scan()
    except (_ScanError, RecursionError):
        # tomllib accepted what the scanner did not: a scanner bug. Keep what was located before the
        # spot; problems after it fall back to enclosing tables or to no line, never to a traceback.
        pass
    return document, Locator(lines, file, text)


def _decode_problem(file: str, text: str, exc: tomllib.TOMLDecodeError) -> ConfigProblem:
    """`exc` as a problem at its line: tomllib only puts "(at line L, column C)" in its message."""
    message = str(exc)
    where = _DECODE_AT.search(message)
    line: int | None = None
    if where is not None:
        message = message[: where.start()]
        if where.group(1) is not None:
            line = int(where.group(1))
            message += f" at column {where.group(2)}"
        else:
            line = text.rstrip().count("\n") + 1
            message += " at the end of the file"
    return ConfigProblem(file, line, "", f"not valid TOML: {message[:1].lower()}{message[1:]}")
