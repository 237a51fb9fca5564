"""The MQTT control plane of running edgeflow processes, steered by `edgeflow ctl`, against a real mosquitto.

Runtimes are `edgeflow run` child processes sharing one broker (module scope); each test uses node ids
of its own so retained documents and sessions never mix. Waits are on what arrives over MQTT (a
paho subscriber thread), on replies, and on the runtimes' log lines, each with a timeout.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import RuntimeProcess, run_cli
from mqtt_broker import MosquittoBroker, free_port
from paho.mqtt.enums import CallbackAPIVersion

from edgeflow.control.protocol import command_body
from edgeflow.control_client import ControlClient, Reply

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(60)]

KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f0-control-test-key"

SIM_NOP = """
[sources.sim]
type = "simulator"
rate = 20

[sinks.out]
type = "nop"
inputs = ["sim"]
"""
PERSISTING = SIM_NOP + "buffer = { persist = true }\n"


# --- helpers ------------------------------------------------------------------------------------------


class Node(RuntimeProcess):
    """One runtime of the fleet under test."""

    def __init__(self, path: Path, node_id: str) -> None:
        super().__init__(path)
        self.id = node_id

    def wait_for_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> str:  # type: ignore[override]
        return super().wait_for_log(pattern, timeout, count)[0]


class Watcher:
    """A paho client keeping every document that arrives on `<prefix>/+/status` and `<prefix>/+/metrics`."""

    def __init__(self, broker: MosquittoBroker, prefix: str = "edgeflow") -> None:
        self.docs: dict[str, list[tuple[dict[str, Any], bool]]] = {}
        self._changed = threading.Condition()
        subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        c.on_connect = lambda client, *a: client.subscribe([(f"{prefix}/+/status", 1), (f"{prefix}/+/metrics", 0)])
        c.on_subscribe = lambda *a: subscribed.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        self.client = c
        assert subscribed.wait(10), "the watcher got no SUBACK"

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._changed:
            self.docs.setdefault(msg.topic, []).append((json.loads(msg.payload), bool(msg.retain)))
            self._changed.notify_all()

    def mark(self, topic: str) -> int:
        """How many documents arrived on `topic` so far: `wait(..., since=mark)` looks only at later ones."""
        with self._changed:
            return len(self.docs.get(topic, []))

    def wait(
        self, topic: str, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0, since: int = 0
    ) -> dict[str, Any]:
        """The first document on `topic` (retained or new, from index `since`) that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for doc, _ in self.docs.get(topic, [])[since:]:
                    if predicate(doc):
                        return doc
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"no document on {topic} as wanted within {timeout}s; got {self.docs.get(topic)}")
                self._changed.wait(remaining)

    def retained(self, topic: str) -> list[dict[str, Any]]:
        with self._changed:
            return [doc for doc, retain in self.docs.get(topic, []) if retain]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def ready(doc: dict[str, Any]) -> bool:
    """The full status document (not the birth message): the plane is subscribed and the actors are up."""
    return doc.get("runtime") == "running" and all(s == "running" for s in doc.get("actors", {}).values())


class Cluster:
    """One broker, its watcher, and the runtimes started on it (stopped at the end)."""

    def __init__(self, broker: MosquittoBroker, tmp: Path) -> None:
        self.broker = broker
        self.tmp = tmp
        self.watcher = Watcher(broker)
        self.key_file = tmp / "control.key"
        self.key_file.write_text(KEY + "\n")
        self.nodes: list[Node] = []
        self.data = Path(tempfile.mkdtemp(prefix="efc-"))  # short: the status socket path must fit

    def topology(
        self,
        node_id: str,
        body: str = SIM_NOP,
        *,
        key: bool = True,
        prefix: str = "edgeflow",
        interval: str = "30s",
        conn: str = "",
        name: str | None = None,
    ) -> Path:
        key_line = f'hmac_key_file = "{self.key_file}"\n' if key else ""
        text = (
            f'[node]\nid = "{node_id}"\ndata_dir = "{self.data / node_id}"\n\n'
            f'[supervisor]\nbackoff = {{ initial = "100ms", max = "1s" }}\n\n'
            f'[control]\nconnection = "site"\nprefix = "{prefix}"\nmetrics_interval = "{interval}"\n{key_line}\n'
            f'[connections.site]\ntype = "mqtt"\nurl = "{self.broker.url}"\n{conn}\n{body}'
        )
        path = self.tmp / (name or f"{node_id}.toml")
        path.write_text(text)
        return path

    def start(self, node_id: str, body: str = SIM_NOP, **options: Any) -> Node:
        node = Node(self.topology(node_id, body, **options), node_id)
        self.nodes.append(node)
        return node

    def started(self, node_id: str, body: str = SIM_NOP, **options: Any) -> Node:
        """A node whose control plane is up (its full status document arrived)."""
        node = self.start(node_id, body, **options)
        prefix = options.get("prefix", "edgeflow")
        self.watcher.wait(f"{prefix}/{node_id}/status", ready, timeout=20)
        return node

    def ctl(self, *args: str, key: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        options = ["--broker", self.broker.url]
        if key:
            options += ["--key-file", str(self.key_file)]
        return run_cli("ctl", *options, *args, timeout=timeout)

    def client(
        self, fn: Callable[[ControlClient], Awaitable[Any]], *, key: bool = True, prefix: str = "edgeflow"
    ) -> Any:
        """Run `fn` with a connected in-process client (for commands the CLI would not send)."""

        async def main() -> Any:
            settings = ControlClient.settings_for(self.broker.url)
            async with ControlClient(settings, prefix=prefix, key=KEY.encode() if key else None) as c:
                return await fn(c)

        return asyncio.run(main())

    def command(self, node_id: str, verb: str, args: dict[str, Any] | None = None, **options: Any) -> dict[str, Any]:
        replies: list[Reply] = self.client(lambda c: c.command(node_id, verb, args or {}, timeout=15), **options)
        assert replies, f"no reply to {verb} from {node_id}"
        return replies[0].doc

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
        self.watcher.close()
        shutil.rmtree(self.data, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("control")
    with MosquittoBroker(tmp) as broker:
        c = Cluster(broker, tmp)
        try:
            yield c
        finally:
            c.close()


@pytest.fixture(scope="module")
def shared(cluster: Cluster) -> Node:
    """A node for the verbs that change nothing (and for refused commands, which must change nothing)."""
    return cluster.started("shared", PERSISTING, interval="400ms")


def actors(cluster: Cluster, node_id: str) -> dict[str, Any]:
    doc = cluster.command(node_id, "status")
    assert doc["ok"], doc
    return doc["result"]["actors"]  # type: ignore[no-any-return]


# --- presence, status, metrics ------------------------------------------------------------------------


def test_status_is_a_retained_document_with_presence_version_uptime_actor_states_and_buffers(
    cluster: Cluster, shared: Node
) -> None:
    late = Watcher(cluster.broker)  # subscribes after the node came up: it only sees what is retained
    try:
        doc = late.wait("edgeflow/shared/status", ready)
        assert late.retained("edgeflow/shared/status")
    finally:
        late.close()
    assert doc["state"] == "online"
    assert doc["node"] == "shared"
    assert doc["version"]
    assert doc["uptime_s"] >= 0
    assert doc["actors"] == {"out": "running", "sim": "running"}
    assert set(doc["buffers"]["out"]) == {"messages", "bytes"}
    assert doc["authenticated"] is True


def test_metrics_arrive_every_interval_with_counters_per_actor_and_connection_states(
    cluster: Cluster, shared: Node
) -> None:
    first = cluster.watcher.wait("edgeflow/shared/metrics", lambda d: d["actors"]["sim"]["out"] > 0)
    later = cluster.watcher.wait("edgeflow/shared/metrics", lambda d: d["ts"] >= first["ts"] + 0.3)
    assert later["actors"]["sim"]["out"] > first["actors"]["sim"]["out"]
    assert {"in", "out", "dropped", "failed", "restarts"} <= set(later["actors"]["out"])
    assert "buffer" in later["actors"]["out"]
    assert later["connections"]["site"]["state"] == "connected"
    assert later["control"]["commands"] >= 0


def test_sigkill_leaves_the_retained_status_offline_through_the_last_will(cluster: Cluster) -> None:
    node = cluster.started("doomed")
    node.kill()
    doc = cluster.watcher.wait("edgeflow/doomed/status", lambda d: d["state"] == "offline", timeout=10)
    assert doc["node"] == "doomed"
    late = Watcher(cluster.broker)
    try:
        assert late.wait("edgeflow/doomed/status", lambda d: True)["state"] == "offline"  # and it is retained
    finally:
        late.close()


def test_a_clean_stop_announces_offline_too(cluster: Cluster) -> None:
    node = cluster.started("stopper")
    assert node.stop() == 0, node.log_text()
    cluster.watcher.wait("edgeflow/stopper/status", lambda d: d["state"] == "offline", timeout=10)


def test_after_a_broker_restart_the_full_status_replaces_the_birth_again(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path) as broker:
        private = Cluster(broker, tmp_path)
        try:
            private.started("phoenix")
            topic = "edgeflow/phoenix/status"
            mark = private.watcher.mark(topic)
            restarted = time.time()
            broker.stop()
            broker.start()
            # The node reconnects at once and its birth (retained) overwrites the full document; the
            # plane sees the reconnect and publishes the full document again, long before the interval.
            full = private.watcher.wait(topic, lambda d: ready(d) and d["ts"] >= restarted, since=mark)
            assert full["uptime_s"] < 10  # metrics_interval is 30s: this was the reconnect, not the timer
        finally:
            private.close()


# --- verbs --------------------------------------------------------------------------------------------


def test_ping_answers_with_version_state_and_uptime(cluster: Cluster, shared: Node) -> None:
    done = cluster.ctl("--node", "shared", "ping")
    assert done.returncode == 0, done.stderr
    assert re.match(r"shared: pong, edgeflow \S+, running, up \S+ \(\d+\.\d ms\)", done.stdout), done.stdout


def test_status_prints_the_actor_table_and_json_gives_the_document(cluster: Cluster, shared: Node) -> None:
    done = cluster.ctl("--node", "shared", "status")
    assert done.returncode == 0, done.stderr
    assert "node shared  running" in done.stdout
    assert re.search(r"^sim\s+source\s+running\s+\d+", done.stdout, re.M), done.stdout
    assert "connection site: connected" in done.stdout
    reply = json.loads(cluster.ctl("--node", "shared", "--json", "status").stdout)
    assert reply["ok"] is True
    assert reply["node"] == "shared"
    assert set(reply["result"]["actors"]) == {"sim", "out"}


def test_metrics_verb_replies_with_the_metrics_document(cluster: Cluster, shared: Node) -> None:
    done = cluster.ctl("--node", "shared", "metrics")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^sim\s+\d+\s+\d+", done.stdout, re.M), done.stdout
    doc = cluster.command("shared", "metrics")
    assert doc["result"]["connections"]["site"]["state"] == "connected"


def test_actor_stop_start_and_restart_change_the_actor_and_the_retained_status(cluster: Cluster) -> None:
    cluster.started("actors")
    topic = "edgeflow/actors/status"
    mark = cluster.watcher.mark(topic)
    done = cluster.ctl("--node", "actors", "actor.stop", "sim")
    assert (done.returncode, done.stdout.split(" (")[0]) == (0, "actors: stopped sim"), done.stderr
    cluster.watcher.wait(topic, lambda d: d.get("actors", {}).get("sim") == "paused", since=mark)
    mark = cluster.watcher.mark(topic)
    assert cluster.ctl("--node", "actors", "actor.start", "sim").returncode == 0
    cluster.watcher.wait(topic, lambda d: d.get("actors", {}).get("sim") == "running", since=mark)
    before = actors(cluster, "actors")["sim"]["restarts"]
    assert cluster.ctl("--node", "actors", "actor.restart", "sim").returncode == 0
    deadline = time.monotonic() + 10
    while actors(cluster, "actors")["sim"]["restarts"] != before + 1:
        assert time.monotonic() < deadline, "the source was not restarted"
        time.sleep(0.05)  # polling the node's status with a deadline


def test_actor_commands_that_cannot_apply_get_an_error_reply_and_exit_1(cluster: Cluster, shared: Node) -> None:
    done = cluster.ctl("--node", "shared", "actor.restart", "nosuch")
    assert done.returncode == 1
    assert "no actor 'nosuch'" in done.stderr
    done = cluster.ctl("--node", "shared", "actor.stop", "out")
    assert done.returncode == 1
    assert "only sources can be stopped" in done.stderr


def test_topology_get_returns_the_running_file_text(cluster: Cluster, shared: Node) -> None:
    done = cluster.ctl("--node", "shared", "topology.get")
    assert done.returncode == 0, done.stderr
    assert done.stdout == shared.path.read_text()
    doc = cluster.command("shared", "topology.get")
    assert doc["result"]["file_differs"] is False
    assert KEY not in json.dumps(doc)  # the key file's path is in the text, its content never


def test_topology_validate_reports_every_problem_with_line_and_key_and_changes_nothing(
    cluster: Cluster, shared: Node, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(shared.path.read_text() + '\n[sinks.more]\ntype = "nop"\ninputs = ["sin"]\n')
    done = cluster.ctl("--node", "shared", "topology.validate", str(bad))
    assert done.returncode == 1
    assert "invalid: 1 problem" in done.stdout
    line = bad.read_text().splitlines().index('inputs = ["sin"]') + 1
    assert f"shared.toml:{line}: sinks.more.inputs.0: unknown input 'sin' (did you mean 'sim'?)" in done.stdout
    problem = cluster.command("shared", "topology.validate", {"text": bad.read_text()})["result"]["problems"][0]
    assert (problem["line"], problem["key"]) == (line, "sinks.more.inputs.0")
    good = cluster.ctl("--node", "shared", "topology.validate", str(shared.path))
    assert (good.returncode, good.stdout.split(" (")[0]) == (0, "shared: valid")
    assert set(actors(cluster, "shared")) == {"sim", "out"}


def test_topology_apply_replaces_the_file_keeps_the_previous_and_runs_the_new_actor(
    cluster: Cluster, tmp_path: Path
) -> None:
    node = cluster.started("applied")
    before = node.path.read_text()
    new = tmp_path / "new.toml"
    new.write_text(before + '\n[sinks.extra]\ntype = "nop"\ninputs = ["sim"]\n')
    done = cluster.ctl("--node", "applied", "topology.apply", str(new), "settle=0.5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("applied: applied (added: extra; changed: none; removed: none)"), done.stdout
    assert node.path.read_text() == new.read_text()
    assert node.path.with_name(node.path.name + ".prev").read_text() == before
    now = actors(cluster, "applied")
    assert now["extra"]["state"] == "running"
    assert now["sim"]["restarts"] == 0  # untouched actors kept running
    assert not list(node.path.parent.glob(".applied.toml.*"))  # no staging file left behind


def test_topology_apply_that_changes_the_control_connection_answers_and_keeps_answering_over_the_new_one(
    cluster: Cluster, tmp_path: Path
) -> None:
    node = cluster.started("moved")
    new = tmp_path / "moved.toml"
    new.write_text(
        node.path.read_text().replace(
            f'url = "{cluster.broker.url}"\n', f'url = "{cluster.broker.url}"\nkeepalive = "20s"\n'
        )
    )
    done = cluster.ctl("--node", "moved", "--json", "topology.apply", str(new), "settle=0.5")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["result"]["connections"] == ["site"]
    node.wait_for_log(r"mqtt\[site\]: connected .* session resumed")  # the new connection, same session
    assert cluster.ctl("--node", "moved", "ping").returncode == 0


CRASH = '\n[sources.boom]\ntype = "crasher"\nwhere = "{where}"\n\n[sinks.sink2]\ntype = "nop"\ninputs = ["boom"]\n'
UNREACHABLE = """
[connections.dead]
type = "mqtt"
url = "mqtt://127.0.0.1:{port}"

[sinks.up]
type = "mqtt"
inputs = ["sim"]
connection = "dead"
topic = "up/{{device}}"
buffer = {{ persist = false }}
"""


@pytest.mark.parametrize(
    ("case", "extra", "reason"),
    [
        ("start", CRASH.format(where="start"), "actor 'boom' crashed: RuntimeError: crasher: on_start always fails"),
        ("produce", CRASH.format(where="produce"), "actor 'boom' crashed: RuntimeError: crasher: produce always fails"),
        ("broker", UNREACHABLE.format(port=free_port()), "connection 'dead' is not connected after 1s"),
    ],
)
def test_topology_apply_of_a_topology_that_fails_to_start_is_rolled_back(
    cluster: Cluster, tmp_path: Path, case: str, extra: str, reason: str
) -> None:
    node = cluster.started(f"rollback-{case}")
    before = node.path.read_text()
    sim_before = actors(cluster, node.id)["sim"]
    new = tmp_path / "failing.toml"
    new.write_text(before.replace("rate = 20", "rate = 25") + extra)
    done = cluster.ctl(
        "--node", node.id, "--json", "topology.apply", str(new), "settle=1" if case == "broker" else "settle=3"
    )
    assert done.returncode == 1, done.stdout + done.stderr
    reply = json.loads(done.stdout)
    assert reply["error"].startswith(f"rolled back: {reason}"), reply
    assert reply["details"]["rolled_back"] is True
    assert reply["details"]["applied"]["changed"] == ["sim"]
    if case != "broker":
        assert reply["elapsed_ms"] < 3000  # the crash ended the settling early
    assert node.path.read_text() == before  # the file was never replaced
    assert Path(reply["details"]["failed_file"]).read_text() == new.read_text()
    assert cluster.command(node.id, "topology.get")["result"]["text"] == before
    running = actors(cluster, node.id)
    assert {name for name in running if not name.endswith("(draining)")} == {"sim", "out"}
    assert running["sim"]["state"] == "running"
    assert running["sim"]["restarts"] == sim_before["restarts"] + 2  # changed, then changed back
    assert running["out"]["restarts"] == 0  # untouched throughout


def test_topology_apply_of_an_invalid_topology_changes_nothing(cluster: Cluster, shared: Node, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(shared.path.read_text().replace('type = "nop"', 'type = "nope"'))
    done = cluster.ctl("--node", "shared", "topology.apply", str(bad), "settle=0")
    assert done.returncode == 1
    assert "invalid topology: 1 problem" in done.stderr
    assert "sinks.out.type: unknown sink type 'nope'" in done.stderr
    assert shared.path.read_text() != bad.read_text()
    assert not shared.path.with_name(shared.path.name + ".prev").exists()


def test_topology_apply_refuses_a_topology_without_the_control_plane(
    cluster: Cluster, shared: Node, tmp_path: Path
) -> None:
    text = shared.path.read_text()
    start = text.index("[control]")
    cut = tmp_path / "cut.toml"
    cut.write_text(text[:start] + text[text.index("[connections.site]") :])
    done = cluster.ctl("--node", "shared", "topology.apply", str(cut), "settle=0")
    assert done.returncode == 1
    assert "no [control] table" in done.stderr


def test_log_level_changes_the_level_at_runtime(cluster: Cluster, shared: Node) -> None:
    done = cluster.ctl("--node", "shared", "log.level", "debug")
    assert done.returncode == 0, done.stderr
    assert "log level of root: info -> debug" in done.stdout
    try:
        # A command without a reply address is logged at debug only: now it shows.
        body = json.dumps(command_body("ping", "shared", {}, key=KEY.encode()))
        subprocess.run(
            ["mosquitto_pub", "-p", str(cluster.broker.port), "-t", "edgeflow/shared/cmd/ping", "-m", body],
            check=True,
            timeout=10,
        )
        shared.wait_for_log(r"debug \(control\) control: ping came without a reply topic")
    finally:
        back = cluster.ctl("--node", "shared", "log.level", "info")
    assert "debug -> info" in back.stdout


# --- authentication -----------------------------------------------------------------------------------


def refused(cluster: Cluster, body: dict[str, Any], verb: str = "actor.stop", target: str = "shared") -> str:
    """Send a ready-made body; return the refusal, after checking that it changed nothing."""
    replies = cluster.client(lambda c: c.request(target, verb, body, timeout=10))
    assert replies, "no reply"
    doc = replies[0].doc
    assert doc["ok"] is False, doc
    assert actors(cluster, "shared")["sim"]["state"] == "running"
    return str(doc["error"])


def signed(verb: str, args: dict[str, Any], target: str = "shared", **kw: Any) -> dict[str, Any]:
    return command_body(verb, target, args, key=KEY.encode(), ident="t1", **kw)


def test_a_command_with_a_bad_signature_is_refused_logged_and_changes_nothing(cluster: Cluster, shared: Node) -> None:
    body = signed("actor.stop", {"name": "sim"})
    body["sig"] = "0" * 64
    assert refused(cluster, body) == "refused: bad signature"
    shared.wait_for_log(r"warning \(control\) control: refused actor\.stop: bad signature")


def test_a_topology_apply_with_a_bad_signature_changes_neither_the_file_nor_the_topology(
    cluster: Cluster, shared: Node
) -> None:
    text = shared.path.read_text()
    body = signed("topology.apply", {"text": text, "settle": 0})
    body["args"] = {"text": text + '\n[sinks.evil]\ntype = "nop"\ninputs = ["sim"]\n', "settle": 0}
    assert refused(cluster, body, "topology.apply") == "refused: bad signature"
    assert shared.path.read_text() == text
    assert not shared.path.with_name(shared.path.name + ".prev").exists()
    assert "evil" not in actors(cluster, "shared")


def test_a_command_whose_args_were_changed_after_signing_is_refused(cluster: Cluster, shared: Node) -> None:
    body = signed("actor.restart", {"name": "out"})
    body["args"] = {"name": "sim"}
    assert refused(cluster, body, "actor.restart") == "refused: bad signature"


def test_a_command_signed_for_another_node_or_verb_is_refused(cluster: Cluster, shared: Node) -> None:
    assert refused(cluster, signed("actor.stop", {"name": "sim"}, target="other")) == "refused: bad signature"
    assert refused(cluster, signed("actor.start", {"name": "sim"})) == "refused: bad signature"


def test_an_unsigned_command_is_refused(cluster: Cluster, shared: Node) -> None:
    body = command_body("actor.stop", "shared", {"name": "sim"}, key=None, ident="t1")
    assert refused(cluster, body).startswith("refused: unsigned command")
    done = cluster.ctl("--node", "shared", "ping", key=False)
    assert done.returncode == 1
    assert "refused: unsigned command" in done.stderr


def test_a_replayed_command_is_refused_the_second_time(cluster: Cluster, shared: Node) -> None:
    body = signed("ping", {})

    async def twice(c: ControlClient) -> tuple[list[Reply], list[Reply]]:
        return await c.request("shared", "ping", body, 10), await c.request("shared", "ping", body, 10)

    first, second = cluster.client(twice)
    assert first[0].doc["ok"] is True
    assert second[0].doc["error"] == "refused: replayed command (this nonce was used already)"


def test_a_stale_command_is_refused(cluster: Cluster, shared: Node) -> None:
    body = signed("actor.stop", {"name": "sim"}, now=time.time() - 120)
    assert re.match(r"refused: stale command: its ts is 12\ds behind this node's clock", refused(cluster, body))
    ahead = signed("actor.stop", {"name": "sim"}, now=time.time() + 90)
    assert re.match(r"refused: stale command: its ts is (89|90)s ahead of this node's clock", refused(cluster, ahead))


def test_without_a_key_commands_are_accepted_and_the_start_warns(cluster: Cluster) -> None:
    node = cluster.started("open", key=False)
    node.wait_for_log(r"warning \(control\) control: unauthenticated")
    done = cluster.ctl("--node", "open", "ping", key=False)
    assert done.returncode == 0, done.stderr


# --- bad commands ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("verb", "body", "error"),
    [
        ("ping", b"{not json", "refused: the command body is not JSON"),
        ("ping", b"[1, 2]", "refused: the command body must be a JSON object"),
        ("reboot", None, "unknown verb 'reboot'; known: ping, status"),
        ("actor.restart", None, "actor.restart needs args: name"),
        ("log.level", {"level": "loud"}, "unknown log level 'loud'"),
        ("topology.apply", {"text": "", "settel": 2}, "topology.apply takes no args settel"),
    ],
)
def test_a_bad_command_gets_an_error_reply_and_the_node_keeps_running(
    cluster: Cluster, shared: Node, verb: str, body: Any, error: str
) -> None:
    if not isinstance(body, bytes):
        body = signed(verb, body or {})
    replies = cluster.client(lambda c: c.request("shared", verb, body, timeout=10))
    assert replies[0].doc["ok"] is False
    assert replies[0].doc["error"].startswith(error), replies[0].doc
    assert cluster.command("shared", "ping")["ok"] is True
    assert "Traceback" not in shared.log_text()


def test_no_reply_is_exit_code_3(cluster: Cluster) -> None:
    done = cluster.ctl("--node", "nobody-here", "--timeout", "0.3", "ping")
    assert done.returncode == 3
    assert "no reply from nobody-here" in done.stderr


# --- MQTT 3.1.1 --------------------------------------------------------------------------------------


def test_mqtt_3_1_1_node_and_client_reply_through_reply_to(cluster: Cluster) -> None:
    cluster.started("old", conn='protocol = "3.1.1"\n')
    done = cluster.ctl("--node", "old", "--mqtt-version", "3.1.1", "--json", "ping")
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout)
    assert reply["ok"] is True
    assert reply["id"].startswith("edgeflow-ctl-")  # matched by the id in the body, not by properties


# --- a fleet ------------------------------------------------------------------------------------------

FLEET = 20
TINY = """
[sources.sim]
type = "simulator"
rate = 1

[sinks.out]
type = "nop"
inputs = ["sim"]
"""


@pytest.mark.timeout(90)
def test_a_fleet_of_20_runtimes_answers_one_status_sweep(cluster: Cluster) -> None:
    watcher = Watcher(cluster.broker, prefix="fleet")
    try:
        ids = [f"gw-{i:02d}" for i in range(FLEET)]
        for node_id in ids:
            cluster.start(node_id, TINY, prefix="fleet")
        for node_id in ids:
            watcher.wait(f"fleet/{node_id}/status", ready, timeout=40)
        started = time.monotonic()
        done = cluster.ctl("--all", "--prefix", "fleet", "--expect", str(FLEET), "--timeout", "20", "status")
        took = time.monotonic() - started
    finally:
        watcher.close()
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.startswith("gw-")]
    assert [r[0] for r in rows] == ids
    assert all(r[1] == "running" and r[3] == "2/2" for r in rows), done.stdout
    assert f"{FLEET} of {FLEET} expected nodes answered in" in done.stdout
    assert took < 10
