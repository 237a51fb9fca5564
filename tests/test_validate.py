"""`edgeflow validate`: every problem at once, each with file, line and key path; exit 2."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

pytestmark = pytest.mark.timeout(60)

BROKEN = """\
[node]
id = "t"

[sources.sim]
type = "simulator"
rate = "fast"

[operators.hot]
type = "filter"
inputs = ["sim"]
wher = "temp > 30"

[operators.calc]
type = "map"
inputs = ["hot", "loop2"]
set = { f = "temp * (9 / 5" }

[operators.loop1]
type = "filter"
inputs = ["loop2"]
where = "true"

[operators.loop2]
type = "filter"
inputs = ["loop1"]
where = "true"

[sinks.out]
type = "file"
inputs = ["calc", "ghost", "loop1"]
path = "/tmp/x.jsonl"
"""


def problems_for(tmp_path, text):
    path = tmp_path / "broken.toml"
    path.write_text(text)
    r = run_cli("validate", str(path))
    return path, r


def test_validate_reports_every_problem_with_file_line_and_key(tmp_path):
    path, r = problems_for(tmp_path, BROKEN)
    assert r.returncode == 2
    err = r.stderr
    assert "Traceback" not in err
    expect = [
        f"{path}:6: sources.sim.rate: expected number, got string 'fast'",
        f"{path}:11: operators.hot.wher: unknown key (did you mean 'where'?)",
        f"{path}:8: operators.hot.where: missing required key",
        f"{path}:16: operators.calc.set.f: bad expression",
        f"{path}:30: sinks.out.inputs.1: unknown input 'ghost'",
        "inputs: cycle: loop",
    ]
    for line in expect:
        assert line in err, f"missing {line!r} in:\n{err}"


def test_validate_json_lists_the_problems(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN)
    r = run_cli("validate", "--json", str(path))
    assert r.returncode == 2
    doc = json.loads(r.stdout)
    assert doc["valid"] is False
    keys = {p["path"] for p in doc["problems"]}
    assert {"sources.sim.rate", "operators.hot.wher", "sinks.out.inputs.1"} <= keys
    assert all(p["line"] for p in doc["problems"])


def test_unknown_type_is_named_with_a_suggestion(tmp_path):
    path, r = problems_for(
        tmp_path,
        '[sources.s]\ntype = "simulater"\n\n[sinks.o]\ntype = "nop"\ninputs = ["s"]\n',
    )
    assert r.returncode == 2
    assert f"{path}:2: sources.s.type: unknown source type 'simulater' (did you mean 'simulator'?)" in r.stderr


def test_toml_syntax_error_names_the_line(tmp_path):
    path, r = problems_for(tmp_path, '[sources.s]\ntype = "simulator"\nrate = \n')
    assert r.returncode == 2
    assert f"{path}:3" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_file_is_a_clear_error(tmp_path):
    r = run_cli("validate", str(tmp_path / "nope.toml"))
    assert r.returncode == 2
    assert "nope.toml" in r.stderr
    assert "Traceback" not in r.stderr


def test_a_source_with_inputs_and_an_unread_operator_are_problems(tmp_path):
    path, r = problems_for(
        tmp_path,
        """\
[sources.s]
type = "simulator"
inputs = ["x"]

[operators.lonely]
type = "filter"
inputs = ["s"]
where = "true"

[sinks.o]
type = "nop"
inputs = ["s"]
""",
    )
    assert r.returncode == 2
    assert f"{path}:3: sources.s.inputs: a source takes no inputs" in r.stderr
    assert "nothing reads 'lonely'" in r.stderr


def test_unreadable_secret_file_is_a_problem(tmp_path):
    path, r = problems_for(
        tmp_path,
        f"""\
[control]
connection = "nowhere"
hmac_key_file = "{tmp_path}/missing.key"

[sources.s]
type = "simulator"

[sinks.o]
type = "nop"
inputs = ["s"]
""",
    )
    assert r.returncode == 2
    assert "control.connection: unknown connection 'nowhere'" in r.stderr
    assert f"{path}:3: control.hmac_key_file: cannot read secret file" in r.stderr


def test_the_demo_topology_is_valid_and_validates_fast():
    import time

    t0 = time.perf_counter()
    r = run_cli("validate", "config/demo.toml")
    took = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    assert "valid" in r.stdout
    assert took < 1.5  # the 300 ms target is measured by scripts/bench_startup.py; this guards regressions


def test_graph_prints_mermaid_and_dot():
    r = run_cli("graph", "config/demo.toml")
    assert r.returncode == 0
    assert "flowchart LR" in r.stdout
    assert "n_sensors --> n_warm" in r.stdout
    r = run_cli("graph", "--format", "dot", "config/demo.toml")
    assert '"warm" -> "enrich";' in r.stdout


def test_actors_lists_types_with_their_keys_and_defaults():
    r = run_cli("actors", "--json")
    assert r.returncode == 0
    doc = json.loads(r.stdout)
    keys = {row["key"]: row for row in doc["source.simulator"]["keys"]}
    assert keys["rate"]["default"] == 10.0
    assert keys["count"]["required"] is False
    assert "operator.filter" in doc
    assert "sink.file" in doc
    human = run_cli("actors", "filter")
    assert "where" in human.stdout


def test_the_control_plane_needs_an_mqtt_connection_and_a_topic_safe_node_id(tmp_path):
    path, r = problems_for(
        tmp_path,
        """\
[node]
id = "gw/17"

[control]
connection = "db"
prefix = "fleet/#"

[connections.db]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"

[sources.s]
type = "simulator"

[sinks.o]
type = "nop"
inputs = ["s"]
""",
    )
    assert r.returncode == 2
    assert f"{path}:2: node.id: 'gw/17' cannot name a node on the control plane" in r.stderr
    assert f"{path}:6: control.prefix: a topic prefix cannot hold the wildcards" in r.stderr


def test_two_connections_to_one_broker_with_the_same_client_id_are_a_problem(tmp_path):
    path, r = problems_for(
        tmp_path,
        """\
[node]
id = "gw-1"

[connections.a]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"

[connections.b]
type = "mqtt"
url = "mqtt://127.0.0.1"

[connections.c]
type = "mqtt"
url = "mqtt://127.0.0.1:1883"
client_id = "gw-1-uplink"

[sources.s]
type = "simulator"

[sinks.o]
type = "nop"
inputs = ["s"]
""",
    )
    assert r.returncode == 2
    assert f"{path}:8: connections.b: same broker and client id as connections.a" in r.stderr
    assert "connections.c" not in r.stderr
