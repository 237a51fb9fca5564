"""Persisted operator state: restored at start, and inputs acknowledged only once it is durable."""

from __future__ import annotations

import asyncio

import pytest
from conftest import read_jsonl, run_cli
from edgeflow_testplugins import Acked, Counter

from edgeflow.runtime import Runtime
from edgeflow.topology import load_topology

pytestmark = pytest.mark.timeout(30)


def test_a_message_absorbed_into_state_is_acknowledged_only_after_a_state_commit(topology):
    Acked.settled.clear()
    Counter.snapshots = 0
    rt = Runtime(
        load_topology(
            topology(
                """
[sources.src]
type = "acked"
count = 300

[operators.count]
type = "counter"
inputs = ["src"]

[sinks.out]
type = "nop"
inputs = ["count"]
"""
            )
        )
    )
    assert asyncio.run(rt.run()) == 0
    assert sorted(seq for seq, _ in Acked.settled) == list(range(300))
    # Every input was processed long before the first commit (0.2 s); none may settle before it.
    assert all(snapshots >= 1 for _, snapshots in Acked.settled)


def test_operator_state_is_restored_when_the_runtime_starts_again(topology, tmp_path):
    out = tmp_path / "counts.jsonl"
    path = topology(
        f"""
[sources.sim]
type = "simulator"
rate = 0
count = 600
devices = 3

[operators.count]
type = "counter"
inputs = ["sim"]

[sinks.out]
type = "file"
inputs = ["count"]
path = "{out}"
"""
    )
    assert run_cli("run", str(path)).returncode == 0
    assert run_cli("run", str(path)).returncode == 0
    rows = read_jsonl(out)
    assert rows[:3] == [{"device": f"dev-{i}", "n": 200} for i in range(3)]
    assert rows[3:] == [{"device": f"dev-{i}", "n": 400} for i in range(3)]  # counted on from the stored state
