"""Mailbox overflow policies inside the real runtime: block slows the source, drops are counted."""

from __future__ import annotations

import asyncio

import pytest
from conftest import eventually
from edgeflow_testplugins import Collect, Gate

from edgeflow.runtime import Runtime
from edgeflow.topology import load_topology

pytestmark = pytest.mark.timeout(30)


def gated(topology, overflow: str, count: str, name: str):
    return load_topology(
        topology(
            f"""
[sources.sim]
type = "simulator"
rate = 0
{count}

[sinks.{name}]
type = "gate"
inputs = ["sim"]
mailbox = 100
overflow = "{overflow}"
"""
        )
    )


def test_block_holds_the_source_to_the_mailbox_capacity_until_the_sink_moves(topology):
    async def main() -> None:
        Gate.gates["g_block"] = asyncio.Event()
        Gate.received["g_block"] = []
        rt = Runtime(gated(topology, "block", "", "g_block"))
        task = asyncio.create_task(rt.run())
        sim = None
        await eventually(lambda: "sim" in rt.cells and len(rt.cells["g_block"].mailbox or []) == 100)
        sim = rt.cells["sim"]
        produced = sim.metrics.out
        # Give the source many chances to run; with the sink stuck it must stay where it is.
        for _ in range(50):
            await asyncio.sleep(0)
        assert sim.metrics.out == produced
        # Bounded: the mailbox (100) + the batch held by the blocked sink (64) + one source batch (1024).
        assert produced <= 100 + 64 + 1024
        Gate.gates["g_block"].set()
        await eventually(lambda: len(Gate.received["g_block"]) > produced + 1000)
        rt.request_stop()
        assert await task == 0
        seqs = [m.payload["seq"] for m in Gate.received["g_block"]]
        assert seqs == list(range(len(seqs)))  # nothing dropped under block
        assert rt.cells["g_block"].mailbox.dropped == 0

    asyncio.run(main())


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_drop_policies_drop_and_count_exactly(topology, policy):
    name = f"g_{policy}"

    async def main() -> None:
        Gate.gates[name] = asyncio.Event()
        Gate.received[name] = []
        rt = Runtime(gated(topology, policy, "count = 5000", name))
        task = asyncio.create_task(rt.run())
        await eventually(lambda: "sim" in rt.cells and rt.cells["sim"].state == "finished")
        Gate.gates[name].set()
        assert await task == 0
        box = rt.cells[name].mailbox
        got = [m.payload["seq"] for m in Gate.received[name]]
        assert box.dropped > 0
        assert len(got) + box.dropped == 5000  # every message delivered or counted as dropped
        assert got == sorted(got)
        if policy == "drop_oldest":
            assert got[-1] == 4999  # the newest survive
        else:
            assert got[0] == 0  # the oldest survive
        status = rt.cells[name].status()
        assert status["mailbox"]["dropped"] == box.dropped

    asyncio.run(main())


def test_fan_out_delivers_every_message_to_every_reader(topology):
    async def main() -> None:
        Collect.received["c1"] = []
        Collect.received["c2"] = []
        rt = Runtime(
            load_topology(
                topology(
                    """
[sources.sim]
type = "simulator"
rate = 0
count = 3000

[sinks.c1]
type = "collect"
inputs = ["sim"]

[sinks.c2]
type = "collect"
inputs = ["sim"]
mailbox = 10
"""
                )
            )
        )
        assert await rt.run() == 0
        for name in ("c1", "c2"):
            assert [m.payload["seq"] for m in Collect.received[name]] == list(range(3000))

    asyncio.run(main())
