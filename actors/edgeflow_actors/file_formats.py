"""Line formats of the file source: a block of whole lines in, payloads and rejected lines out.

Each decoder takes one block of complete lines (the text between the first byte read and the last
newline, without that newline) so that the common case costs one UTF-8 decode and one split per block;
only a block holding a bad line falls back to line-by-line work, to name the bad lines.
"""

from __future__ import annotations

import csv
from typing import Any, Protocol

from edgeflow.jsoncodec import make_loads

__all__ = ["CsvDecoder", "Decoder", "JsonlDecoder", "LinesDecoder", "Rejected", "make_decoder"]

#: (the line as text, why it was rejected)
Rejected = tuple[str, str]


class Decoder(Protocol):
    def decode(self, block: bytes) -> tuple[list[Any], list[Rejected]]:
        """Payloads for the good lines, in order, and the rejected lines with their reasons."""
        ...

    def reset(self) -> None:
        """A new file starts (rotation, truncation): forget what belonged to the old one."""
        ...


def split_text(block: bytes) -> tuple[list[str], list[Rejected]]:
    """The lines of `block` as text; lines that are not UTF-8 are rejected with the position."""
    try:
        return block.decode().split("\n"), []
    except UnicodeDecodeError:
        pass
    good: list[str] = []
    bad: list[Rejected] = []
    for raw in block.split(b"\n"):
        try:
            good.append(raw.decode())
        except UnicodeDecodeError as exc:
            bad.append((raw.decode(errors="replace"), f"invalid UTF-8: {exc.reason} at byte {exc.start}"))
    return good, bad


class JsonlDecoder:
    """One JSON document per line; blank lines are skipped."""

    def __init__(self) -> None:
        self._loads = make_loads()

    def reset(self) -> None:
        pass

    def decode(self, block: bytes) -> tuple[list[Any], list[Rejected]]:
        lines, bad = split_text(block)
        loads = self._loads
        try:
            return [loads(line) for line in lines if line], bad
        except ValueError:
            pass
        out: list[Any] = []
        for line in lines:
            if not line or line.isspace():
                continue
            try:
                out.append(loads(line))
            except ValueError as exc:
                bad.append((line, f"invalid JSON: {exc}"))
        return out, bad


class LinesDecoder:
    """Each line as {"line": text}, without its line ending; empty lines are kept."""

    def reset(self) -> None:
        pass

    def decode(self, block: bytes) -> tuple[list[Any], list[Rejected]]:
        lines, bad = split_text(block)
        if b"\r" in block:
            lines = [line.removesuffix("\r") for line in lines]
        return [{"line": line} for line in lines], bad


class CsvDecoder:
    """CSV rows: dicts keyed by the file's first row with `header`, else lists of strings.

    A record must fit on one line (no quoted newlines); a row with another number of columns than the
    header is rejected; empty lines are skipped.
    """

    def __init__(self, delimiter: str, header: bool) -> None:
        self.delimiter = delimiter
        self.header = header
        self.columns: list[str] | None = None

    def reset(self) -> None:
        self.columns = None

    def decode(self, block: bytes) -> tuple[list[Any], list[Rejected]]:
        lines, bad = split_text(block)
        reader = csv.reader(lines, delimiter=self.delimiter)
        out: list[Any] = []
        if not self.header:
            return [row for row, _ in _rows(reader, lines, bad)], bad
        for row, line in _rows(reader, lines, bad):
            columns = self.columns
            if columns is None:
                self.columns = row
            elif len(row) == len(columns):
                out.append(dict(zip(columns, row, strict=True)))
            else:
                bad.append((line, f"expected {len(columns)} columns, got {len(row)}"))
        return out, bad

    def read_header(self, first_line: bytes) -> None:
        """Resuming inside a file: take the column names from its first line."""
        if self.header:
            self.decode(first_line)


def _rows(reader: Any, lines: list[str], bad: list[Rejected]) -> list[tuple[list[str], str]]:
    """Non-empty rows with the line each came from; a line the csv module refuses is rejected."""
    rows: list[tuple[list[str], str]] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return rows
        except csv.Error as exc:
            bad.append((lines[reader.line_num - 1], f"invalid CSV: {exc}"))
            continue
        if row:
            rows.append((row, lines[reader.line_num - 1]))


def make_decoder(fmt: str, delimiter: str, header: bool) -> JsonlDecoder | LinesDecoder | CsvDecoder:
    if fmt == "jsonl":
        return JsonlDecoder()
    if fmt == "lines":
        return LinesDecoder()
    return CsvDecoder(delimiter, header)
