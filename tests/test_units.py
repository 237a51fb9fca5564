"""Durations and sizes as written in a topology, and their formatting for people."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeflow.units import format_duration, format_size, parse_duration, parse_size

pytestmark = pytest.mark.timeout(30)


# --- parse_duration ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("10s", 10.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604800.0),
        ("100us", 1e-4),
        ("3µs", 3e-6),
        ("3μs", 3e-6),
        ("1.5s", 1.5),
        (".5s", 0.5),
        ("0s", 0.0),
    ],
)
def test_duration_with_a_unit_is_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1m30s", 90.0), ("1h30m", 5400.0), ("1d2h3m4s", 93784.0), ("1m 30.5s", 90.5), ("1s500ms", 1.5)],
)
def test_combined_duration_adds_its_parts(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("value", "seconds"), [("10", 10.0), ("1.5", 1.5), (10, 10.0), (2.5, 2.5), (0, 0.0)])
def test_bare_number_is_seconds(value: str | float, seconds: float) -> None:
    assert parse_duration(value) == seconds


def test_duration_result_is_always_a_float() -> None:
    assert type(parse_duration(10)) is float


@pytest.mark.parametrize(("text", "seconds"), [("10S", 10.0), ("250MS", 0.25), ("1H", 3600.0), ("7D", 604800.0)])
def test_duration_unit_case_is_tolerated_where_unambiguous(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_duration_blanks_around_are_ignored() -> None:
    assert parse_duration("  10 s ") == 10.0


def test_garbage_duration_names_the_accepted_forms() -> None:
    with pytest.raises(ValueError, match=r"^expected a duration like '250ms', '10s', '5m', '7d', got 'ten'$"):
        parse_duration("ten")


@pytest.mark.parametrize("value", ["-5s", -1, -0.5, " -1m"])
def test_negative_duration_is_refused(value: str | float) -> None:
    with pytest.raises(ValueError, match="durations cannot be negative"):
        parse_duration(value)


def test_capital_m_duration_is_refused_as_ambiguous() -> None:
    with pytest.raises(ValueError, match="'M' is ambiguous, write 'm' for minutes"):
        parse_duration("5M")


def test_unknown_duration_unit_is_named() -> None:
    with pytest.raises(ValueError, match="unknown unit 'seconds'; units are us, ms, s, m, h, d"):
        parse_duration("10 seconds")


def test_combined_duration_part_without_unit_is_refused() -> None:
    with pytest.raises(ValueError, match="every part of a combined duration needs a unit"):
        parse_duration("1m30")


@pytest.mark.parametrize("value", ["", "   ", "s", "1e3ms", "1,5s", "10s,", "1..5s", True, None, [1], {"a": 1}])
def test_malformed_duration_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match=r"^expected a duration like"):
        parse_duration(value)


@pytest.mark.parametrize("value", [math.inf, math.nan, "1" * 400 + "d"])
def test_infinite_duration_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match=r"^expected a duration like"):
        parse_duration(value)


# --- parse_size -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("100B", 100),
        ("1KB", 1000),
        ("2MB", 2_000_000),
        ("3GB", 3_000_000_000),
        ("1TB", 10**12),
        ("1KiB", 1024),
        ("256MiB", 256 * 1024**2),
        ("2GiB", 2 * 1024**3),
        ("1TiB", 1024**4),
    ],
)
def test_size_units_are_decimal_or_binary(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(("text", "size"), [("1kb", 1000), ("1kB", 1000), ("256mib", 256 * 1024**2), ("1GIB", 1024**3)])
def test_size_unit_case_is_tolerated(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(("value", "size"), [("100", 100), (100, 100), (0, 0), (" 1 MiB ", 1024**2)])
def test_bare_number_is_bytes(value: str | int, size: int) -> None:
    assert parse_size(value) == size


def test_fractional_size_is_exact() -> None:
    assert parse_size("1.1TB") == 1_100_000_000_000


def test_fractional_size_rounds_down_to_whole_bytes() -> None:
    assert parse_size("1.1KiB") == 1126


@pytest.mark.parametrize("unit", ["K", "M", "G", "k", "Mi"])
def test_size_unit_without_b_is_refused_as_ambiguous(unit: str) -> None:
    with pytest.raises(ValueError, match=r"is ambiguous, write '.B' \(powers of 1000\) or '.iB'"):
        parse_size(f"5{unit}")


@pytest.mark.parametrize("value", ["-1KB", -4])
def test_negative_size_is_refused(value: str | int) -> None:
    with pytest.raises(ValueError, match="sizes cannot be negative"):
        parse_size(value)


def test_garbage_size_names_the_accepted_forms() -> None:
    with pytest.raises(
        ValueError, match=r"^expected a size like '512KiB', '256MiB', '1GB' or a number of bytes, got 'lots'$"
    ):
        parse_size("lots")


def test_unknown_size_unit_is_named() -> None:
    with pytest.raises(ValueError, match="unknown unit 'Mo'"):
        parse_size("1 Mo")


@pytest.mark.parametrize("value", [1.5, True, None, "", "MiB", "1.2.3MB", [1]])
def test_malformed_size_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match=r"^expected a size like"):
        parse_size(value)


# --- format_duration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.25, "250ms"),
        (0.0015, "1.5ms"),
        (1e-4, "100us"),
        (3e-7, "0.3us"),
        (1.5, "1.5s"),
        (10, "10s"),
        (59, "59s"),
        (60, "1m"),
        (90, "1m30s"),
        (7380, "2h3m"),
        (86400 * 7, "7d"),
        (93784, "1d2h3m4s"),
        (-2.5, "-2.5s"),
    ],
)
def test_format_duration_reads_like_the_topology(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("seconds", "text"), [(0.0009999999, "1ms"), (0.9999999, "1s"), (59.99999, "1m")])
def test_format_duration_rounding_up_moves_to_the_next_unit(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_format_duration_refuses_non_finite(value: float) -> None:
    with pytest.raises(ValueError, match="cannot format"):
        format_duration(value)


@given(st.integers(min_value=0, max_value=10**9))
def test_whole_seconds_round_trip_exactly(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.floats(min_value=1e-6, max_value=1e7, allow_nan=False))
def test_any_duration_round_trips_to_four_significant_digits(seconds: float) -> None:
    back = parse_duration(format_duration(seconds))
    # Under a minute: 4 significant digits; from a minute: whole seconds.
    assert back == pytest.approx(seconds, rel=5e-4, abs=0.5 if seconds >= 59.5 else 0)


# --- format_size ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (1572864, "1.5 MiB"),
        (256 * 1024**2, "256 MiB"),
        (3 * 1024**3, "3 GiB"),
        (3_000_000, "3 MB"),
        (1_500_000_000, "1.5 GB"),
        (1_048_575, "1023.99 KiB"),
        (1025 * 1024, "1025 KiB"),
        (10**12 + 1, "931.32 GiB"),
    ],
)
def test_format_size_reads_like_the_topology(n: int, text: str) -> None:
    assert format_size(n) == text


def test_format_size_refuses_negative() -> None:
    with pytest.raises(ValueError, match="cannot format -1 as a size"):
        format_size(-1)


@given(st.one_of(st.integers(0, 2**20).map(lambda k: k * 1024), st.integers(0, 10**6).map(lambda k: k * 1000)))
def test_exact_multiples_round_trip_exactly(n: int) -> None:
    assert parse_size(format_size(n)) == n


@given(st.integers(min_value=0, max_value=2**50))
def test_any_size_round_trips_without_overstating(n: int) -> None:
    back = parse_size(format_size(n))
    assert back <= n
    assert back >= n * 0.99  # two decimals of a unit that is at most n
