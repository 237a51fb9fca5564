"""Faults inside the real runtime: bad messages, failing destinations, crashing siblings."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import eventually
from edgeflow_testplugins import Collect, Flaky, Reject

from edgeflow.runtime import Runtime
from edgeflow.topology import load_topology

pytestmark = pytest.mark.timeout(30)


def run(topology, text: str) -> Runtime:
    rt = Runtime(load_topology(topology(text)))
    assert asyncio.run(rt.run()) == 0
    return rt


def test_a_message_that_breaks_an_expression_is_dead_lettered_with_the_reason_and_the_flow_goes_on(topology, tmp_path):
    dl = tmp_path / "dead.jsonl"
    Collect.received["ok1"] = []
    rt = run(
        topology,
        f"""
[sources.sim]
type = "simulator"
rate = 0
count = 1000

[operators.calc]
type = "map"
inputs = ["sim"]
set = {{ ratio = "100 / (seq % 10)" }}
dead_letter = "dl"

[sinks.ok1]
type = "collect"
inputs = ["calc"]

[sinks.dl]
type = "file"
path = "{dl}"
""",
    )
    good = [m.payload["seq"] for m in Collect.received["ok1"]]
    assert good == [s for s in range(1000) if s % 10]
    dead = [json.loads(line) for line in dl.read_text().splitlines()]
    assert [d["payload"]["seq"] for d in dead] == list(range(0, 1000, 10))
    assert all(d["actor"] == "calc" and "division by zero" in d["error"] for d in dead)
    assert rt.cells["calc"].metrics.dead_lettered == 100


def test_retryable_write_failures_are_retried_until_delivered_once_in_order(topology):
    Flaky.received["fl"] = []
    Flaky.attempts["fl"] = 0
    rt = run(
        topology,
        """
[supervisor]
backoff = { initial = "10ms", max = "50ms" }

[sources.sim]
type = "simulator"
rate = 0
count = 500

[sinks.fl]
type = "flaky"
inputs = ["sim"]
failures = 4
""",
    )
    assert [m.payload["seq"] for m in Flaky.received["fl"]] == list(range(500))
    assert Flaky.attempts["fl"] > 4
    assert rt.cells["fl"].metrics.restarts == 0  # retrying is not crashing


def test_a_permanent_rejection_dead_letters_only_the_rejected_messages(topology, tmp_path):
    dl = tmp_path / "dead.jsonl"
    Reject.received["rj"] = []
    run(
        topology,
        f"""
[sources.sim]
type = "simulator"
rate = 0
count = 300

[operators.mark]
type = "map"
inputs = ["sim"]
set = {{ bad = "seq % 7 == 0" }}

[sinks.rj]
type = "reject"
inputs = ["mark"]
dead_letter = "dl"

[sinks.dl]
type = "file"
path = "{dl}"
""",
    )
    assert [m.payload["seq"] for m in Reject.received["rj"]] == [s for s in range(300) if s % 7]
    dead = [json.loads(line) for line in dl.read_text().splitlines()]
    assert [d["payload"]["seq"] for d in dead] == list(range(0, 300, 7))
    assert all("rejected: bad = true" in d["error"] for d in dead)


def test_one_for_all_restarts_the_siblings_of_a_crashed_actor(topology):
    async def main() -> None:
        rt = Runtime(
            load_topology(
                topology(
                    """
[supervisor]
strategy = "one_for_all"
max_restarts = 2
within = "60s"
backoff = { initial = "10ms", max = "20ms" }

[sources.bad]
type = "crasher"

[sources.sim]
type = "simulator"
rate = 100

[sinks.out]
type = "nop"
inputs = ["bad", "sim"]
"""
                )
            )
        )
        assert await rt.run() == 1  # the restart storm ends the process
        assert rt.cells["sim"].metrics.restarts >= 2
        assert rt.cells["out"].metrics.restarts >= 2
        assert rt.cells["bad"].metrics.restarts == 3

    asyncio.run(main())


def test_a_temporary_actor_that_crashes_is_not_restarted_and_the_rest_finishes(topology):
    Collect.received["c_tmp"] = []
    rt = run(
        topology,
        """
[sources.bad]
type = "crasher"
restart = "temporary"

[sources.sim]
type = "simulator"
rate = 0
count = 100

[sinks.c_tmp]
type = "collect"
inputs = ["bad", "sim"]
""",
    )
    assert rt.cells["bad"].state == "failed"
    assert len(Collect.received["c_tmp"]) == 100


def test_file_sink_rotates_by_size_and_keeps_max_files(topology, tmp_path):
    out = tmp_path / "out.jsonl"
    run(
        topology,
        f"""
[sources.sim]
type = "simulator"
rate = 0
count = 5000

[sinks.f]
type = "file"
inputs = ["sim"]
path = "{out}"
max_bytes = "64KiB"
max_files = 3
""",
    )
    files = sorted(tmp_path.glob("out.jsonl*"))
    assert [f.name for f in files] == ["out.jsonl", "out.jsonl.1", "out.jsonl.2", "out.jsonl.3"]
    assert all(f.stat().st_size <= 64 * 1024 for f in files)
    # Newest last: the rotated files and the live one hold consecutive runs of the sequence.
    seqs = []
    for f in [tmp_path / "out.jsonl.3", tmp_path / "out.jsonl.2", tmp_path / "out.jsonl.1", out]:
        seqs += [json.loads(line)["seq"] for line in f.read_text().splitlines()]
    assert seqs == list(range(seqs[0], 5000))


def test_a_stopped_source_keeps_its_place_in_the_graph_and_starts_again(topology):
    async def main() -> None:
        Collect.received["c_pause"] = []
        rt = Runtime(
            load_topology(
                topology(
                    """
[sources.sim]
type = "simulator"
rate = 500

[sinks.c_pause]
type = "collect"
inputs = ["sim"]
"""
                )
            )
        )
        task = asyncio.create_task(rt.run())
        got = Collect.received["c_pause"]
        await eventually(lambda: len(got) > 20)
        assert rt.actor_command("sim", "stop") == "stopped sim"
        await eventually(lambda: rt.cells["sim"].state == "paused")
        n = len(got)
        for _ in range(20):  # the loop keeps turning; nothing new may arrive while stopped
            await asyncio.sleep(0.01)
        assert len(got) == n
        assert rt.cells["c_pause"].state == "running"  # its reader did not see an end of stream
        with pytest.raises(ValueError, match="only sources"):
            rt.actor_command("c_pause", "stop")
        rt.actor_command("sim", "start")
        await eventually(lambda: len(got) > n + 20)
        rt.request_stop()
        assert await task == 0

    asyncio.run(main())
