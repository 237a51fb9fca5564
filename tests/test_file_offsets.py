"""The file source's offset tracker against a real store: it commits the end of the longest settled prefix."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from edgeflow_actors.file_offsets import OffsetTracker, Position
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeflow.store import Store

pytestmark = pytest.mark.timeout(60)
log = logging.getLogger("test")


def at(offset: int, inode: int = 1) -> Position:
    return Position("/x", 1, inode, offset)


async def stored(path: Path) -> Position | None:
    async with await Store.open(path) as store:
        data = await store.get_state("k")
    return Position.decode(data) if data is not None else None


def test_a_batch_settled_ahead_of_an_earlier_one_does_not_move_the_offset_until_the_earlier_settles(tmp_path):
    async def main() -> None:
        async with await Store.open(tmp_path / "s.db") as store:
            t = OffsetTracker(store, "k", at(0), log)
            first, second = t.batch(at(10), 2), t.batch(at(25), 1)
            assert first is not None
            assert second is not None
            second.done()
            assert t.committed == at(0)
            first.done()
            assert t.committed == at(0)  # one copy of the first batch is still in flight
            first.done()
            assert t.committed == at(25)
            assert t.in_flight == 0

    asyncio.run(main())


def test_a_batch_without_messages_settles_at_once_in_its_turn(tmp_path):
    async def main() -> None:
        async with await Store.open(tmp_path / "s.db") as store:
            t = OffsetTracker(store, "k", at(0), log)
            ack = t.batch(at(10), 1)
            assert t.batch(at(0, inode=2), 0) is None  # a rotation marker behind a batch in flight
            assert t.committed == at(0)
            assert ack is not None
            ack.done()
            assert t.committed == at(0, inode=2)

    asyncio.run(main())


def test_stop_waits_for_what_is_in_flight_then_stores_the_committed_position(tmp_path):
    async def main() -> None:
        async with await Store.open(tmp_path / "s.db") as store:
            t = OffsetTracker(store, "k", at(0), log)
            t.start(save_now=False)
            ack = t.batch(at(42), 1)
            assert ack is not None
            asyncio.get_running_loop().call_soon(ack.done)  # settles while stop is waiting
            await t.stop(settle_timeout=10)
        assert await stored(tmp_path / "s.db") == at(42)

    asyncio.run(main())


def test_stop_gives_up_waiting_after_the_timeout_and_stores_only_what_settled(tmp_path):
    async def main() -> None:
        async with await Store.open(tmp_path / "s.db") as store:
            t = OffsetTracker(store, "k", at(0), log)
            t.start(save_now=False)
            done = t.batch(at(5), 1)
            t.batch(at(9), 1)  # never settles
            assert done is not None
            done.done()
            await t.stop(settle_timeout=0.05)
        assert await stored(tmp_path / "s.db") == at(5)

    asyncio.run(main())


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_whatever_the_settle_order_the_committed_offset_is_the_end_of_the_longest_settled_prefix(data):
    # No store needed: the tracker only writes to it once started.
    t = OffsetTracker(None, "k", at(0), log)  # type: ignore[arg-type]
    copies = data.draw(st.lists(st.integers(0, 3), min_size=1, max_size=12), label="copies per batch")
    acks = [t.batch(at(10 * (i + 1)), n) for i, n in enumerate(copies)]
    order = data.draw(st.permutations([i for i, n in enumerate(copies) for _ in range(n)]), label="settle order")
    left = list(copies)
    for i in order:
        ack = acks[i]
        assert ack is not None
        ack.done()
        left[i] -= 1
        prefix = 0
        while prefix < len(left) and left[prefix] == 0:
            prefix += 1
        assert t.committed == (at(10 * prefix) if prefix else at(0))
    assert t.in_flight == 0
