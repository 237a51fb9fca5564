"""Key paths to line numbers in TOML text, and loading a topology file into a located ConfigError."""

from __future__ import annotations

import os
import re
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeflow.errors import ConfigError, ConfigProblem
from edgeflow.tomlpos import KeyPath, Locator, format_path, load, locate_keys

pytestmark = pytest.mark.timeout(60)

# The example from the design's TOPOLOGY.md, verbatim.
TOPOLOGY = """\
[node]
id = "gw-17"                        # default: the host name
data_dir = "/var/lib/edgeflow"      # the SQLite store and state live here (default: ./data)
log_level = "info"

[supervisor]                        # OTP-style; all optional
strategy = "one_for_one"            # one_for_one | one_for_all | rest_for_one
max_restarts = 5                    # more than this within `within` -> the process exits non-zero
within = "30s"
backoff = { initial = "200ms", max = "30s" }

[control]                           # optional: the MQTT control plane
connection = "site"                 # a connection below
prefix = "edgeflow"                 # topics live under <prefix>/<node.id>/...
hmac_key_file = "/etc/edgeflow/control.key"   # commands must be signed with it

[connections.site]                  # one connection shared by every actor that names it
type = "mqtt"
url = "mqtt://127.0.0.1:1883"       # mqtts:// for TLS; ca_file, cert_file, key_file
client_id = "gw-17"
username = "gw"
password_file = "/etc/edgeflow/mqtt.pass"   # secrets come from files or env, never inline

[sources.temps]
type = "mqtt"
connection = "site"
topics = ["plant/+/temp"]
qos = 1                             # QoS >= 1: PUBACK only once the message is durable
format = "json"                     # json | msgpack | raw | line | csv

[sources.meter]
type = "serial"
port = "/dev/ttyUSB0"
baudrate = 9600
framing = "line"                    # line | length | slip | fixed

[operators.hot]
type = "filter"
inputs = ["temps"]
where = "temp > 30 and device != 'test'"

[operators.avg]
type = "window"
inputs = ["hot"]
kind = "tumbling"                   # tumbling | hopping | sliding | session | count
size = "10s"
group_by = ["device"]
aggregates = { avg_temp = "avg(temp)", max_temp = "max(temp)", n = "count()" }

[sinks.cloud]
type = "mqtt"
inputs = ["avg", "meter"]
connection = "site"
topic = "cloud/{device}/avg"        # templated from the message
qos = 1
buffer = { persist = true, max_size = "256MiB", when_full = "block", ttl = "7d" }

[sinks.debug]
type = "log"
inputs = ["hot"]
"""


def path(dotted: str, *indices: int) -> KeyPath:
    return (*dotted.split("."), *indices)


TOPOLOGY_LINES: dict[KeyPath, int] = {
    path("node"): 1,
    path("node.id"): 2,
    path("node.data_dir"): 3,
    path("node.log_level"): 4,
    path("supervisor"): 6,
    path("supervisor.strategy"): 7,
    path("supervisor.max_restarts"): 8,
    path("supervisor.within"): 9,
    path("supervisor.backoff"): 10,
    path("supervisor.backoff.initial"): 10,
    path("supervisor.backoff.max"): 10,
    path("control"): 12,
    path("control.connection"): 13,
    path("control.prefix"): 14,
    path("control.hmac_key_file"): 15,
    path("connections"): 17,
    path("connections.site"): 17,
    path("connections.site.type"): 18,
    path("connections.site.url"): 19,
    path("connections.site.client_id"): 20,
    path("connections.site.username"): 21,
    path("connections.site.password_file"): 22,
    path("sources"): 24,
    path("sources.temps"): 24,
    path("sources.temps.type"): 25,
    path("sources.temps.connection"): 26,
    path("sources.temps.topics"): 27,
    path("sources.temps.topics", 0): 27,
    path("sources.temps.qos"): 28,
    path("sources.temps.format"): 29,
    path("sources.meter"): 31,
    path("sources.meter.type"): 32,
    path("sources.meter.port"): 33,
    path("sources.meter.baudrate"): 34,
    path("sources.meter.framing"): 35,
    path("operators"): 37,
    path("operators.hot"): 37,
    path("operators.hot.type"): 38,
    path("operators.hot.inputs"): 39,
    path("operators.hot.inputs", 0): 39,
    path("operators.hot.where"): 40,
    path("operators.avg"): 42,
    path("operators.avg.type"): 43,
    path("operators.avg.inputs"): 44,
    path("operators.avg.inputs", 0): 44,
    path("operators.avg.kind"): 45,
    path("operators.avg.size"): 46,
    path("operators.avg.group_by"): 47,
    path("operators.avg.group_by", 0): 47,
    path("operators.avg.aggregates"): 48,
    path("operators.avg.aggregates.avg_temp"): 48,
    path("operators.avg.aggregates.max_temp"): 48,
    path("operators.avg.aggregates.n"): 48,
    path("sinks"): 50,
    path("sinks.cloud"): 50,
    path("sinks.cloud.type"): 51,
    path("sinks.cloud.inputs"): 52,
    path("sinks.cloud.inputs", 0): 52,
    path("sinks.cloud.inputs", 1): 52,
    path("sinks.cloud.connection"): 53,
    path("sinks.cloud.topic"): 54,
    path("sinks.cloud.qos"): 55,
    path("sinks.cloud.buffer"): 56,
    path("sinks.cloud.buffer.persist"): 56,
    path("sinks.cloud.buffer.max_size"): 56,
    path("sinks.cloud.buffer.when_full"): 56,
    path("sinks.cloud.buffer.ttl"): 56,
    path("sinks.debug"): 58,
    path("sinks.debug.type"): 59,
    path("sinks.debug.inputs"): 60,
    path("sinks.debug.inputs", 0): 60,
}


def located(text: str) -> dict[KeyPath, int]:
    """`locate_keys`, after checking that the text is valid TOML as the contract requires."""
    tomllib.loads(text)
    return locate_keys(text)


def toml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# --- locate_keys: the topology ----------------------------------------------------------------------


def test_topology_example_locates_every_key_table_and_element_exactly() -> None:
    assert located(TOPOLOGY) == TOPOLOGY_LINES


def test_topology_example_is_the_one_in_the_design() -> None:
    # shared/ sits beside the checkout (in CI, beside the fresh clone).
    design = Path(__file__).resolve().parents[2] / "shared" / "design" / "TOPOLOGY.md"
    if not design.exists():
        pytest.skip("the design folder is not on this machine")
    block = re.search(r"```toml\n(.*?)```", design.read_text(encoding="utf-8"), re.DOTALL)
    assert block is not None
    assert block.group(1) == TOPOLOGY


# --- locate_keys: table headers ---------------------------------------------------------------------


def test_header_with_blanks_and_quoted_parts_is_one_key_per_part() -> None:
    lines = located(
        toml("""
        x = 1
        [ a . "b.c" ]
        k = 2
        [ 'l.i.t' . "q\\"uote" . bare-1 ]
        k = 3
    """)
    )
    assert lines[("a", "b.c")] == 2
    assert lines[("a", "b.c", "k")] == 3
    assert lines[("l.i.t", 'q"uote', "bare-1", "k")] == 5


def test_quoted_key_is_unescaped_like_tomllib_does() -> None:
    text = toml(r"""
        "caf\u00e9" = 1
        "tab\there" = 2
        '' = 3
    """)
    assert tomllib.loads(text).keys() == {"café", "tab\there", ""}
    lines = locate_keys(text)
    assert (lines[("café",)], lines[("tab\there",)], lines[("",)]) == (1, 2, 3)


def test_parent_of_a_header_gets_the_line_of_its_first_mention() -> None:
    lines = located(
        toml("""
        [sources.temps]
        type = "mqtt"
        [sources.meter]
        type = "serial"
    """)
    )
    assert lines[("sources",)] == 1


def test_super_table_declared_after_its_child_gets_its_own_header_line() -> None:
    lines = located(
        toml("""
        [a.b]
        x = 1

        [a]
        y = 2
    """)
    )
    assert lines[("a",)] == 4
    assert lines[("a", "y")] == 5


def test_key_after_a_header_belongs_to_that_header_table() -> None:
    lines = located(
        toml("""
        top = 1
        [t]
        top = 2
    """)
    )
    assert (lines[("top",)], lines[("t", "top")]) == (1, 3)


# --- locate_keys: arrays of tables ------------------------------------------------------------------


def test_array_of_tables_indexes_each_element_with_an_int() -> None:
    lines = located(
        toml("""
        [[x]]
        k = 1

        [[x]]
        k = 2
        [[x]]
    """)
    )
    assert lines[("x",)] == 1
    assert [lines[("x", i)] for i in range(3)] == [1, 4, 6]
    assert (lines[("x", 0, "k")], lines[("x", 1, "k")]) == (2, 5)
    assert ("x", 2, "k") not in lines


def test_nested_array_of_tables_counts_per_parent_element() -> None:
    lines = located(
        toml("""
        [[fruit]]
        name = "apple"
        [[fruit.variety]]
        name = "red"
        [[fruit.variety]]
        name = "green"
        [[fruit]]
        name = "plum"
        [[fruit.variety]]
        name = "damson"
    """)
    )
    assert lines[("fruit", 0, "variety", 1, "name")] == 6
    assert lines[("fruit", 1, "variety", 0, "name")] == 10
    assert ("fruit", 1, "variety", 1) not in lines


def test_subtable_of_an_array_of_tables_goes_to_its_last_element() -> None:
    lines = located(
        toml("""
        [[x]]
        [[x]]
        [x.sub]
        k = 1
    """)
    )
    assert lines[("x", 1, "sub", "k")] == 4


def test_array_of_tables_under_a_quoted_dotted_header() -> None:
    lines = located(
        toml("""
        [[ "a.b" . c ]]
        k = 1
    """)
    )
    assert lines[("a.b", "c", 0, "k")] == 2


# --- locate_keys: keys and values -------------------------------------------------------------------


def test_dotted_key_locates_the_full_path_and_its_prefixes() -> None:
    lines = located(
        toml("""
        [t]
        buffer.persist = true
        buffer . "max.size" = "1MiB"
    """)
    )
    assert lines[("t", "buffer", "persist")] == 2
    assert lines[("t", "buffer", "max.size")] == 3
    assert lines[("t", "buffer")] == 2


def test_inline_table_keys_get_the_line_where_each_appears() -> None:
    lines = located(
        toml("""
        [sinks.x]
        buffer = { persist = true, max_size = "1MiB", inner = { deep.er = 1, other = {} } }
    """)
    )
    for key in [
        ("buffer",),
        ("buffer", "persist"),
        ("buffer", "max_size"),
        ("buffer", "inner"),
        ("buffer", "inner", "deep", "er"),
        ("buffer", "inner", "other"),
    ]:
        assert lines[("sinks", "x", *key)] == 2


def test_inline_table_keys_after_a_multiline_value_move_down() -> None:
    lines = located(
        toml('''
        t = { a = """
        x = 1
        """, b = [
          1,
        ], c = 3 }
        after = 1
    ''')
    )
    assert (lines[("t", "a")], lines[("t", "b")], lines[("t", "c")], lines[("after",)]) == (1, 3, 5, 6)
    assert ("x",) not in lines


def test_inline_table_over_several_lines_as_toml_1_1_allows() -> None:
    # Not TOML 1.0, so tomllib on Python 3.11 refuses it; located anyway for when it does not.
    lines = locate_keys(
        toml("""
        t = {
          a = 1,  # first
          b = { c = 2 },
        }
        """)
    )
    assert (lines[("t",)], lines[("t", "a")], lines[("t", "b", "c")]) == (1, 2, 3)


def test_multiline_array_elements_get_their_own_lines() -> None:
    lines = located(
        toml("""
        inputs = [
          "temps",   # the first, = [x] {y}
          # "not", an = element
          "meter",
          [1, 2], [
            3,
          ],
        ]
        next = 1
    """)
    )
    assert [lines[("inputs", i)] for i in range(4)] == [2, 4, 5, 5]
    assert lines[("inputs", 2, 1)] == 5
    assert lines[("inputs", 3, 0)] == 6
    assert lines[("next",)] == 9
    assert ("inputs", 4) not in lines


def test_array_of_inline_tables_indexes_elements() -> None:
    lines = located(
        toml("""
        points = [
          { x = 1, y = 2 },
          { x = 3 },
        ]
    """)
    )
    assert (lines[("points", 0, "y")], lines[("points", 1, "x")]) == (2, 3)


def test_multiline_basic_string_lines_are_never_keys() -> None:
    lines = located(
        toml('''
        a = """
        fake = 1
        [fake.table]
        [[fake]]
        \\""" still = "inside"
        ends with quotes"""" # x = 1
        b = 2
        c = """one line""" # d = 3
        e = """\\
          continued \\\\"""
        f = 4
    ''')
    )
    assert lines == {("a",): 1, ("b",): 7, ("c",): 8, ("e",): 9, ("f",): 11}


def test_multiline_literal_string_lines_are_never_keys() -> None:
    lines = located(
        toml("""
        a = '''
        fake = 1
        [fake]
        \\ no escapes here ''
        '''''
        b = 2
    """)
    )
    assert lines == {("a",): 1, ("b",): 6}


def test_strings_holding_toml_syntax_are_values() -> None:
    lines = located(
        toml("""
        a = "x = 1 # [t] {y = 2} \\" z = 3"   # comment = 4
        b = 'c:\\path # [x] = {'
        c = ["[not]", "{ a = 1 }", '#', "]"]
        d = 5
    """)
    )
    assert lines == {
        ("a",): 1,
        ("b",): 2,
        ("c",): 3,
        **{("c", i): 3 for i in range(4)},
        ("d",): 4,
    }


def test_comments_and_blank_lines_are_skipped() -> None:
    lines = located(
        toml("""
        # [commented.table]
        # key = "value"

           # indented comment
        key = 1 # trailing
    """)
    )
    assert lines == {("key",): 5}


def test_scalars_of_every_kind_end_where_the_value_ends() -> None:
    lines = located(
        toml("""
        d1 = 1979-05-27 07:32:00Z # a date with a blank
        d2 = 1979-05-27T00:32:00.999999-07:00
        d3 = 07:32:00
        f = [ -1.5e3, inf, nan, +0.1 ]
        i = [0xff_ff, 0o7, 0b1, 1_000]
        b = { t = true, f = false }
        z = 1
    """)
    )
    assert [lines[(k,)] for k in ("d1", "d2", "d3", "f", "i", "b", "z")] == [1, 2, 3, 4, 5, 6, 7]
    assert lines[("b", "f")] == 6


def test_windows_line_endings_count_lines_the_same() -> None:
    text = "[a]\r\nx = 1\r\n\r\n[b]\r\ny = [\r\n  1,\r\n]\r\nz = 2\r\n"
    assert located(text) == {
        ("a",): 1,
        ("a", "x"): 2,
        ("b",): 4,
        ("b", "y"): 5,
        ("b", "y", 0): 6,
        ("b", "z"): 8,
    }


def test_empty_text_locates_nothing() -> None:
    assert located("") == {}
    assert located("\n# only a comment\n") == {}


def test_text_that_is_not_toml_raises_value_error_with_the_line() -> None:
    with pytest.raises(ValueError, match="at line 2"):
        locate_keys("a = 1\n= 2\n")


# --- Locator ----------------------------------------------------------------------------------------


@pytest.fixture
def locator() -> Locator:
    return Locator.from_text(TOPOLOGY, "config/x.toml")


def test_line_of_a_key_is_its_own_line(locator: Locator) -> None:
    assert locator.line_of(["operators", "hot", "where"]) == 40


def test_line_of_a_missing_key_is_its_table_header(locator: Locator) -> None:
    assert locator.line_of(("sources", "temps", "qos_missing")) == 24


def test_line_of_a_missing_key_in_an_inline_table_is_the_inline_table(locator: Locator) -> None:
    assert locator.line_of(("sinks", "cloud", "buffer", "absent")) == 56


def test_line_of_a_missing_nested_path_climbs_to_the_nearest_written_one(locator: Locator) -> None:
    assert locator.line_of(("sinks", "nope", "x", "y")) == 50


def test_line_of_a_missing_top_level_table_is_none(locator: Locator) -> None:
    assert locator.line_of(("metrics", "port")) is None
    assert locator.line_of(()) is None


def test_line_of_a_string_path_splits_on_dots(locator: Locator) -> None:
    assert locator.line_of("operators.avg.size") == 46


def test_line_of_an_array_element(locator: Locator) -> None:
    assert locator.line_of(("sinks", "cloud", "inputs", 1)) == 52


def test_line_of_a_missing_key_in_an_array_of_tables_element_is_its_header() -> None:
    locator = Locator.from_text(
        toml("""
        [[rule]]
        a = 1
        [[rule]]
        b = 2
    """)
    )
    assert locator.line_of(("rule", 1, "a")) == 3


def test_problem_reads_file_line_path_message(locator: Locator) -> None:
    problem = locator.problem(("operators", "hot", "wher"), "unknown key (did you mean 'where'?)")
    assert problem == ConfigProblem("config/x.toml", 37, "operators.hot.wher", "unknown key (did you mean 'where'?)")
    assert str(problem) == "config/x.toml:37: operators.hot.wher: unknown key (did you mean 'where'?)"


def test_format_path_quotes_what_a_bare_key_cannot_hold() -> None:
    assert format_path(("operators", "hot", "where")) == "operators.hot.where"
    assert format_path(("connections", "a.b", "url")) == 'connections."a.b".url'
    assert format_path(("x", 0, "k", 2)) == "x[0].k[2]"
    assert format_path(('q"t', "", "tab\t")) == '"q\\"t"."".' + '"tab\\u0009"'
    assert format_path(()) == ""


# --- load -------------------------------------------------------------------------------------------


def test_load_returns_the_document_and_its_locator(tmp_path: Path) -> None:
    file = tmp_path / "topology.toml"
    file.write_text(TOPOLOGY, encoding="utf-8")
    document, locator = load(file)
    assert document == tomllib.loads(TOPOLOGY)
    assert locator.file == str(file)
    assert locator.text == TOPOLOGY
    assert locator.line_of(("sinks", "debug", "inputs")) == 60


def test_load_accepts_a_byte_order_mark(tmp_path: Path) -> None:
    file = tmp_path / "bom.toml"
    file.write_bytes(b"\xef\xbb\xbf[node]\nid = 'x'\n")
    document, locator = load(str(file))
    assert document == {"node": {"id": "x"}}
    assert locator.line_of(("node", "id")) == 2


def load_problem(file: Path) -> ConfigProblem:
    with pytest.raises(ConfigError) as caught:
        load(file)
    [problem] = caught.value.problems
    return problem


def test_invalid_toml_is_a_config_error_at_tomllibs_line(tmp_path: Path) -> None:
    file = tmp_path / "bad.toml"
    file.write_text("[node]\nid = 'gw'\n\n[sources.temps]\ntype = mqtt\n", encoding="utf-8")
    problem = load_problem(file)
    assert problem == ConfigProblem(str(file), 5, "", "not valid TOML: invalid value at column 8")
    assert str(problem) == f"{file}:5: not valid TOML: invalid value at column 8"


def test_invalid_toml_at_the_end_points_at_the_last_written_line(tmp_path: Path) -> None:
    file = tmp_path / "unclosed.toml"
    file.write_text("a = 1\nb = [\n  1,\n  2\n\n\n", encoding="utf-8")
    problem = load_problem(file)
    assert (problem.line, problem.message) == (4, "not valid TOML: unclosed array at the end of the file")


def test_duplicate_key_is_a_config_error(tmp_path: Path) -> None:
    file = tmp_path / "dup.toml"
    file.write_text("[a]\nx = 1\n[a]\ny = 2\n", encoding="utf-8")
    problem = load_problem(file)
    assert problem.line == 3
    assert problem.message.startswith("not valid TOML: ")


def test_missing_file_is_a_config_error_without_a_line(tmp_path: Path) -> None:
    file = tmp_path / "absent.toml"
    assert load_problem(file) == ConfigProblem(str(file), None, "", "cannot read the file (no such file or directory)")


def test_directory_is_a_config_error(tmp_path: Path) -> None:
    assert load_problem(tmp_path).message == "cannot read the file (is a directory)"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    file = tmp_path / "secret.toml"
    file.write_text("a = 1\n", encoding="utf-8")
    file.chmod(0)
    assert load_problem(file).message == "cannot read the file (permission denied)"


def test_absurdly_nested_values_are_a_config_error(tmp_path: Path) -> None:
    file = tmp_path / "deep.toml"
    file.write_text("a = " + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    assert load_problem(file).message == "not valid TOML: values nested too deeply"


def test_file_that_is_not_utf8_is_a_config_error_at_its_line(tmp_path: Path) -> None:
    file = tmp_path / "latin1.toml"
    file.write_bytes("a = 1\nname = 'café'\n".encode("latin-1"))
    problem = load_problem(file)
    assert problem.line == 2
    assert problem.message.startswith("not UTF-8 text (byte 0xe9")


# --- property: a writer of our own, in several styles -----------------------------------------------

_KEY_CHARS = st.sampled_from([*"abz09_-", ".", " ", "=", "#", "[", "]", "{", "}", '"', "'", "\\", "é", "\t"])
keys = st.text(_KEY_CHARS, max_size=5)
_STRING_CHARS = st.sampled_from([*"az =#[]{},", '"', "'", "\\", "\n", "\t", "\r", "é", "\x01", "\x7f"])
scalars = st.one_of(st.integers(-(2**63), 2**63 - 1), st.booleans(), st.text(_STRING_CHARS, max_size=12))
values = st.recursive(
    st.one_of(scalars, st.lists(st.one_of(scalars, st.lists(scalars, max_size=2)), max_size=4)),
    lambda children: st.one_of(
        st.dictionaries(keys, children, max_size=4),
        st.lists(st.dictionaries(keys, children, max_size=3), min_size=1, max_size=3),
    ),
    max_leaves=12,
)
documents = st.dictionaries(keys, values, max_size=6)


def _is_table(value: object) -> bool:
    return isinstance(value, dict)


def _is_table_array(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


class Writer:
    """Writes a document as TOML, choosing a style at every step, and records each key's line."""

    def __init__(self, data: st.DataObject) -> None:
        self.draw = data.draw
        self.chunks: list[str] = []
        self.line = 1
        self.expected: dict[KeyPath, int] = {}

    def emit(self, text: str) -> None:
        self.chunks.append(text)
        self.line += text.count("\n")

    def mark(self, path: KeyPath) -> None:
        self.expected[path] = self.line

    def text(self) -> str:
        return "".join(self.chunks)

    def key(self, name: str) -> str:
        if re.fullmatch(r"[A-Za-z0-9_-]+", name) and self.draw(st.booleans()):
            return name
        if "'" not in name and not re.search(r"[\x00-\x08\x0a-\x1f\x7f]", name) and self.draw(st.booleans()):
            return f"'{name}'"
        return '"' + _escape(name) + '"'

    def dotted(self, names: tuple[str, ...]) -> str:
        sep = self.draw(st.sampled_from([".", " . "]))
        return sep.join(self.key(n) for n in names)

    def trailer(self) -> None:
        self.emit(self.draw(st.sampled_from(["", "  # x = [y] {z}", "\t#"])) + "\n")
        if self.draw(st.booleans()):
            self.emit(self.draw(st.sampled_from(["\n", "# [fake]\n", "  # fake = 1\n"])))

    def document(self, doc: dict[str, Any]) -> str:
        self.body(doc, (), ())
        return self.text()

    def body(self, table: dict[str, Any], names: tuple[str, ...], path: KeyPath) -> None:
        """The key/value lines of a header-style table, then its header-style children."""
        later: list[tuple[str, Any, str]] = []
        for name, value in table.items():
            style = "value"
            if _is_table(value):
                style = self.draw(st.sampled_from(["header", "inline", "dotted"] if value else ["header", "inline"]))
            elif _is_table_array(value):
                style = self.draw(st.sampled_from(["array of tables", "value"]))
            if style in ("header", "array of tables"):
                later.append((name, value, style))
            elif style == "dotted":
                self.dotted_table(value, (name,), (*path, name))
            else:
                self.key_value((name,), (*path, name), value)
        for name, value, style in later:
            if style == "header":
                self.mark((*path, name))
                self.emit(self.header((*names, name), "[", "]"))
                self.trailer()
                self.body(value, (*names, name), (*path, name))
            else:
                for index, element in enumerate(value):
                    self.mark((*path, name, index))
                    self.emit(self.header((*names, name), "[[", "]]"))
                    self.trailer()
                    self.body(element, (*names, name), (*path, name, index))

    def header(self, names: tuple[str, ...], left: str, right: str) -> str:
        blank = self.draw(st.sampled_from(["", " "]))
        return f"{left}{blank}{self.dotted(names)}{blank}{right}"

    def dotted_table(self, table: dict[str, Any], prefix: tuple[str, ...], path: KeyPath) -> None:
        for name, value in table.items():
            if _is_table(value) and value and self.draw(st.booleans()):
                self.dotted_table(value, (*prefix, name), (*path, name))
            else:
                self.key_value((*prefix, name), (*path, name), value)

    def key_value(self, names: tuple[str, ...], path: KeyPath, value: Any) -> None:
        self.mark(path)
        self.emit(self.dotted(names) + self.draw(st.sampled_from([" = ", "=", "  =\t"])))
        self.value(value, path)
        self.trailer()

    def value(self, value: Any, path: KeyPath) -> None:
        if isinstance(value, dict):
            self.emit("{")
            for i, (name, inner) in enumerate(value.items()):
                self.emit(", " if i else " ")
                self.mark((*path, name))
                self.emit(self.key(name) + " = ")
                self.value(inner, (*path, name))
            self.emit(" }" if value else "}")
        elif isinstance(value, list):
            multiline = self.draw(st.booleans())
            self.emit("[")
            for i, element in enumerate(value):
                if multiline:
                    self.emit("\n  ")
                elif i:
                    self.emit(", ")
                self.mark((*path, i))
                self.value(element, (*path, i))
                if multiline:
                    self.emit("," + self.draw(st.sampled_from(["", "  # [x] = {"])))
            self.emit("\n]" if multiline and value else "]")
        elif isinstance(value, bool):
            self.emit("true" if value else "false")
        elif isinstance(value, int):
            self.emit(str(value))
        else:
            self.emit(self.string(value))

    def string(self, value: str) -> str:
        forms = ["basic"]
        if not re.search(r"['\x00-\x08\x0a-\x1f\x7f]", value):
            forms.append("literal")
        if "'''" not in value and not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", value) and not value.startswith("\n"):
            forms.append("multiline literal")
        if "\n" in value:
            forms.append("multiline basic")
        form = self.draw(st.sampled_from(forms))
        if form == "basic":
            return '"' + _escape(value) + '"'
        if form == "literal":
            return f"'{value}'"
        if form == "multiline literal":
            return f"'''{value}'''"
        body = _escape(value).replace("\\n", "\n")  # real newlines, except a first one (TOML trims it)
        return '"""' + ("\\n" + body[1:] if body.startswith("\n") else body) + '"""'


def _escape(text: str) -> str:
    """A TOML basic-string body for `text`."""
    named = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    return "".join(named.get(c) or (f"\\u{ord(c):04x}" if c < " " or c == "\x7f" else c) for c in text)


def _resolves(document: Any, key_path: KeyPath) -> bool:
    node = document
    for part in key_path:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents, st.data())
def test_every_written_key_is_located_on_the_line_it_was_written(doc: dict[str, Any], data: st.DataObject) -> None:
    writer = Writer(data)
    text = writer.document(doc)
    assert tomllib.loads(text) == doc, "the test's own writer is wrong"
    lines = locate_keys(text)
    assert {p: lines.get(p) for p in writer.expected} == writer.expected
    phantoms = [p for p in lines if not _resolves(doc, p)]
    assert phantoms == []
