"""Durations and sizes as people write them in a topology (`"250ms"`, `"1m30s"`, `"256MiB"`), and back.

The parsers run while a topology is validated; they raise `ValueError` with a message meant for the
person who wrote the file (the config layer adds file, line and key path). The formatters turn numbers
back into the same notation for logs and messages; `parse_*(format_*(x))` gives `x` back, exactly for
whole seconds and exact binary sizes, to about four significant digits otherwise.

Units. Durations: `us` (also `µs`), `ms`, `s`, `m`, `h`, `d`; components may be combined (`"1h30m"`,
`"1m 30.5s"`) and are added up; a bare number is seconds. Sizes: `B`; `KB`, `MB`, `GB`, `TB` are powers
of 1000 and `KiB`, `MiB`, `GiB`, `TiB` powers of 1024; a bare number is bytes. Unit spelling is
case-insensitive where that cannot change the meaning (`"10S"`, `"256mib"`, `"1kb"`); the ambiguous
`M` for a duration (minutes or months?) and `K`/`M`/`G` without `B` for a size (1000 or 1024?) are
refused with a hint.
"""

from __future__ import annotations

import math
import re

__all__ = ["format_duration", "format_size", "parse_duration", "parse_size"]

# Seconds per unit as (multiplier, divisor): dividing by 1000 rather than multiplying by 1e-3 keeps
# "100us" at the nearest float to 1e-4 instead of 9.999999999999999e-05.
_DURATION_UNITS: dict[str, tuple[int, int]] = {
    "us": (1, 1_000_000),
    "µs": (1, 1_000_000),
    "μs": (1, 1_000_000),  # the Greek mu, which some keyboards produce instead of the micro sign
    "ms": (1, 1000),
    "s": (1, 1),
    "m": (60, 1),
    "h": (3600, 1),
    "d": (86400, 1),
}
_SIZE_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
# One duration component: a number and an optional unit, with optional blanks around.
_COMPONENT = re.compile(rf"\s*({_NUMBER})\s*([^\s\d.]*)\s*")
_SIZE = re.compile(rf"\s*({_NUMBER})\s*([A-Za-z]*)\s*")

_DURATION_EXAMPLE = "expected a duration like '250ms', '10s', '5m', '7d'"
_SIZE_EXAMPLE = "expected a size like '512KiB', '256MiB', '1GB' or a number of bytes"


def _duration_error(value: object, why: str = "") -> ValueError:
    return ValueError(f"{_DURATION_EXAMPLE}, got {value!r}{f' ({why})' if why else ''}")


def _size_error(value: object, why: str = "") -> ValueError:
    return ValueError(f"{_SIZE_EXAMPLE}, got {value!r}{f' ({why})' if why else ''}")


def parse_duration(value: object) -> float:
    """Seconds in `value`: a string with units (`"250ms"`, `"1m30s"`), or a number of seconds.

    `value` is typed `object` because callers hand over raw TOML values; only `str`, `int` and `float`
    are accepted.

    Raises `ValueError` naming the accepted forms for anything else: garbage, an unknown unit, a
    negative, infinite or NaN amount, a non-string non-number (a TOML table or list, a bool).
    """
    if isinstance(value, bool):  # bool is an int, but `within = true` is a mistake, not 1 second
        raise _duration_error(value)
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise _duration_error(value, "must be finite")
        if value < 0:
            raise _duration_error(value, "durations cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise _duration_error(value)
    text = value.strip()
    if text.startswith("-"):
        raise _duration_error(value, "durations cannot be negative")
    if not text:
        raise _duration_error(value)
    total = 0.0
    pos = 0
    components = 0
    unitless = False
    while pos < len(text):
        match = _COMPONENT.match(text, pos)
        if match is None:
            raise _duration_error(value)
        number, unit = match.groups()
        if unit:
            scale = _DURATION_UNITS.get(unit)
            if scale is None and unit != "M":
                scale = _DURATION_UNITS.get(unit.lower())
            if scale is None:
                hint = "'M' is ambiguous, write 'm' for minutes" if unit == "M" else f"unknown unit {unit!r}"
                raise _duration_error(value, f"{hint}; units are us, ms, s, m, h, d")
        else:
            unitless = True
            scale = (1, 1)
        total += float(number) * scale[0] / scale[1]
        components += 1
        pos = match.end()
    if unitless and components > 1:
        raise _duration_error(value, "every part of a combined duration needs a unit")
    if not math.isfinite(total):
        raise _duration_error(value, "too large")
    return total


def parse_size(value: object) -> int:
    """Bytes in `value`: a string with units (`"256MiB"`, `"1.5 GB"`), or a number of bytes (`int`).

    Fractions are allowed with a unit and rounded down to whole bytes (`"1.5KiB"` is 1536). Raises
    `ValueError` naming the accepted forms for anything else: garbage, an unknown or ambiguous unit, a
    negative number, a float or bool given without quotes, a TOML table or list.
    """
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _size_error(value)
    if isinstance(value, int):
        if value < 0:
            raise _size_error(value, "sizes cannot be negative")
        return value
    match = _SIZE.fullmatch(value)
    if match is None:
        why = "sizes cannot be negative" if value.strip().startswith("-") else ""
        raise _size_error(value, why)
    number: str = match.group(1)
    unit: str = match.group(2)
    factor = _SIZE_UNITS.get(unit.lower(), 0) if unit else 1
    if not factor:
        if unit.lower() in ("k", "m", "g", "t", "ki", "mi", "gi", "ti"):
            upper = unit[0].upper()
            why = f"'{unit}' is ambiguous, write '{upper}B' (powers of 1000) or '{upper}iB' (powers of 1024)"
        else:
            why = f"unknown unit {unit!r}; units are B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"
        raise _size_error(value, why)
    # Integers, not floats: "1.1TB" must be exactly 1_100_000_000_000 bytes.
    whole, _, fraction = number.partition(".")
    scale: int = 10 ** len(fraction)
    return int(whole + fraction) * factor // scale


_BINARY = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))
_DECIMAL = (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000))


def _significant(x: float) -> str:
    """`x` (0 < x < 1000) with at most 4 significant digits and no exponent or trailing zeros."""
    text = f"{x:.4g}"
    if "e" in text:  # only below 1e-4: show it plainly, it is smaller than any realistic setting
        text = f"{x:.10f}".rstrip("0").rstrip(".")
    return text


def format_duration(seconds: float) -> str:
    """`seconds` the way a person writes it: `"250ms"`, `"1.5s"`, `"2h3m"`, `"1d4h"`, `"0s"`.

    Under a minute: one unit (`us`, `ms` or `s`) with up to four significant digits. From a minute:
    whole seconds split into `d`, `h`, `m`, `s`, leaving out zero parts. Negative values get a `-`.
    Raises `ValueError` for NaN and infinities.
    """
    if not math.isfinite(seconds):
        raise ValueError(f"cannot format {seconds!r} as a duration")
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds == 0:
        return "0s"
    for factor, unit, limit in ((1e6, "us", 1000.0), (1e3, "ms", 1000.0), (1.0, "s", 60.0)):
        text = _significant(seconds * factor)
        if float(text) < limit:  # "999.96ms" rounds to "1000ms": let the next unit have it
            return text + unit
    rest = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def format_size(n: int) -> str:
    """`n` bytes for a person: `"512 B"`, `"1.5 MiB"`, `"256 MiB"`, `"1.5 GB"`, `"1023.99 KiB"`.

    The shortest text that shows `n` exactly with at most two decimals (binary units win ties:
    `"1025 KiB"`, not `"1049.6 KB"`); if no unit does, the largest binary unit with two decimals,
    rounded down so that a limit is never overstated. Raises `ValueError` for a negative `n`.
    """
    if n < 0:
        raise ValueError(f"cannot format {n!r} as a size")
    if n < 1024:
        return f"{n} B"
    fitting = [(unit, size) for unit, size in _BINARY + _DECIMAL if n >= size]
    exact = [f"{_hundredths(n * 100 // size)} {unit}" for unit, size in fitting if n * 100 % size == 0]
    if exact:
        return min(exact, key=len)  # min keeps the first of equals: the larger, binary unit
    unit, size = fitting[0]
    return f"{_hundredths(n * 100 // size)} {unit}"


def _hundredths(h: int) -> str:
    whole, frac = divmod(h, 100)
    return f"{whole}.{frac:02d}".rstrip("0").rstrip(".") if frac else str(whole)
