"""`edgeflow run` as a real child process: completion, SIGTERM, crash escalation, status."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest
from conftest import read_jsonl, run_cli, start_runtime, wait_until

pytestmark = pytest.mark.timeout(60)


def test_count_limited_topology_exits_0_and_the_file_holds_every_message_once_in_order(topology, tmp_path):
    out = tmp_path / "out.jsonl"
    path = topology(
        f"""
[sources.sim]
type = "simulator"
count = 20000
rate = 0
seed = 7

[operators.all]
type = "filter"
inputs = ["sim"]
where = "seq >= 0"

[operators.tag]
type = "map"
inputs = ["all"]
set = {{ double = "seq * 2" }}

[sinks.file]
type = "file"
inputs = ["tag"]
path = "{out}"
"""
    )
    proc = run_cli("run", str(path))
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(out)
    assert [r["seq"] for r in rows] == list(range(20000))
    assert all(r["double"] == r["seq"] * 2 for r in rows)


def test_sigterm_on_an_endless_topology_exits_0_quickly_with_only_whole_lines(topology, tmp_path):
    out = tmp_path / "out.jsonl"
    path = topology(
        f"""
[sources.sim]
type = "simulator"
rate = 0

[sinks.file]
type = "file"
inputs = ["sim"]
path = "{out}"
"""
    )
    proc = start_runtime(path)
    try:
        wait_until(lambda: out.exists() and out.stat().st_size > 100_000, timeout=20, what="output to flow")
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        _, stderr = proc.communicate(timeout=10)
        took = time.monotonic() - t0
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert took < 5, f"stop took {took:.1f}s"
    text = out.read_text()
    assert text.endswith("\n")
    seqs = [json.loads(line)["seq"] for line in text.splitlines()]
    assert seqs == list(range(len(seqs)))  # contiguous: nothing lost before the stop, nothing torn


def test_an_actor_that_always_crashes_is_restarted_with_backoff_then_the_process_exits_non_zero(topology):
    path = topology(
        """
[supervisor]
max_restarts = 3
within = "60s"
backoff = { initial = "100ms", max = "5s" }

[sources.bad]
type = "crasher"

[sinks.out]
type = "nop"
inputs = ["bad"]
"""
    )
    t0 = time.monotonic()
    proc = run_cli("run", str(path))
    took = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr
    crashes = [line for line in proc.stderr.splitlines() if "[bad] crashed" in line]
    assert len(crashes) == 4, proc.stderr  # the first run plus max_restarts restarts, then give up
    assert "giving up" in proc.stderr
    # Backoff doubles from 100ms with equal jitter: at least 50 + 100 + 200 ms between the crashes.
    assert took >= 0.35


def test_status_shows_the_running_actors_and_their_counters(topology, tmp_path):
    path = topology(
        """
[sources.sim]
type = "simulator"
rate = 1000

[sinks.out]
type = "nop"
inputs = ["sim"]
"""
    )
    proc = start_runtime(path)
    try:

        def status():
            r = run_cli("status", str(path), "--json", timeout=10)
            if r.returncode != 0:
                return None
            doc = json.loads(r.stdout)
            return doc if doc["actors"]["out"]["out"] > 0 else None

        doc = wait_until(status, timeout=20, what="status with delivered messages")
        assert doc["node"] == "test"
        assert doc["actors"]["sim"]["kind"] == "source"
        assert doc["actors"]["out"]["mailbox"]["capacity"] == 256  # the default
        human = run_cli("status", str(path), timeout=10)
        assert re.search(r"^out\s+sink\s+running", human.stdout, re.M), human.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_status_without_a_runtime_says_so_without_a_traceback(tmp_path: Path):
    r = run_cli("status", "--data-dir", str(tmp_path))
    assert r.returncode == 3
    assert "no runtime answers" in r.stderr
    assert "Traceback" not in r.stderr


def test_buffers_shows_what_a_persisting_sink_holds_while_its_destination_is_down(topology, tmp_path):
    import socket

    with socket.socket() as s:  # a loopback port with nothing listening: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = topology(
        f"""
[node]
id = "test"
data_dir = "{tmp_path / "data"}"
stop_timeout = "2s"

[sources.sim]
type = "simulator"
rate = 500

[sinks.web]
type = "http"
inputs = ["sim"]
url = "http://127.0.0.1:{port}/ingest"
"""
    )
    proc = start_runtime(path)
    try:

        def held():
            r = run_cli("buffers", str(path), "--json", timeout=10)
            doc = json.loads(r.stdout) if r.returncode == 0 else {}
            return doc if doc.get("web", {}).get("messages", 0) >= 50 else None

        doc = wait_until(held, timeout=20, what="messages to pile up in the buffer")
        assert doc["web"]["delivered"] == 0
        assert doc["web"]["bytes"] > 0
        human = run_cli("buffers", str(path), timeout=10)
        assert re.search(r"^web\s+\d+\s+\d+", human.stdout, re.M), human.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert "kept in the buffer for the next run" in stderr
