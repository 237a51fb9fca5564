"""JSON for payloads: orjson where installed and the standard library agree on what users see."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeflow.jsoncodec import HAVE_ORJSON, make_dumps, make_loads

pytestmark = pytest.mark.timeout(60)

BOTH = [pytest.param(True, id="fast"), pytest.param(False, id="stdlib")]


def test_orjson_is_used_where_installed() -> None:
    """The dependency is declared for this platform: losing it silently would cost CPU and memory."""
    assert HAVE_ORJSON


@pytest.mark.parametrize("fast", BOTH)
def test_loads_takes_what_the_standard_library_takes(fast: bool) -> None:
    loads = make_loads(fast)
    assert loads(b'{"device":"d1","temp":21.5,"ok":true,"n":null,"tags":["a","b"]}') == {
        "device": "d1",
        "temp": 21.5,
        "ok": True,
        "n": None,
        "tags": ["a", "b"],
    }
    assert loads('{"text":"caf\\u00e9"}') == {"text": "café"}  # text as well as bytes
    odd = loads(b'{"a":NaN,"b":-Infinity,"s":"\\ud800","d":1,"d":2}')  # json takes these; orjson does not
    assert math.isnan(odd["a"])
    assert (odd["b"], odd["s"], odd["d"]) == (-math.inf, "\ud800", 2)
    assert loads(b"18446744073709551615") == 2**64 - 1


@pytest.mark.parametrize("fast", BOTH)
@pytest.mark.parametrize(
    ("data", "error", "says"),
    [
        (b'{"a":', json.JSONDecodeError, "line 1 column 6"),
        (b"[1,2]x", json.JSONDecodeError, "Extra data"),
        (b"", json.JSONDecodeError, "Expecting value"),
        (b'{"a":"\xff"}', UnicodeDecodeError, "invalid start byte"),
    ],
)
def test_loads_errors_are_the_standard_librarys(fast: bool, data: bytes, error: type[Exception], says: str) -> None:
    """The dead-letter reason a user reads names the place, whichever decoder ran."""
    with pytest.raises(error, match=says):
        make_loads(fast)(data)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, set):
        return sorted(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


@pytest.mark.parametrize("fast", BOTH)
def test_dumps_is_compact_utf8_and_nan_becomes_null(fast: bool) -> None:
    dumps = make_dumps(default=_jsonable, fast=fast)
    value = {"t": (1, 2), 7: "x", "b": b"raw", "s": {3, 1}, "nan": math.nan, "inf": [-math.inf], "é": "ü"}
    out = dumps(value)
    assert isinstance(out, bytes)
    assert json.loads(out) == {"t": [1, 2], "7": "x", "b": "raw", "s": [1, 3], "nan": None, "inf": [None], "é": "ü"}
    assert b" " not in out
    assert "ü".encode() in out
    assert dumps(2**70) == b"1180591620717411303424"  # past 64 bits: the standard library's way
    assert make_dumps(newline=True, fast=fast)({"a": 1}) == b'{"a":1}\n'


@pytest.mark.parametrize("fast", BOTH)
def test_dumps_refuses_what_default_refuses(fast: bool) -> None:
    with pytest.raises(TypeError, match="object is not JSON serializable"):
        make_dumps(default=_jsonable, fast=fast)({"x": object()})


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_fast_and_stdlib_agree(value: Any) -> None:
    """What either encoder writes, both decoders read back as the value written."""
    for fast in (True, False):
        encoded = make_dumps(fast=fast)(value)
        assert make_loads(True)(encoded) == value
        assert make_loads(False)(encoded) == value
