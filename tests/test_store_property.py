"""The store against a model: whatever the sequence of appends, reads, acknowledgements, drops, expiries,
crashes and restarts, every record not acknowledged (nor dropped or expired) is there, in order.

A crash is simulated by copying the store's files (database and WAL, no -shm) while the writer is
idle, exactly what a SIGKILL leaves on disk, and opening the copy; the real SIGKILL test lives in
test_store.py.

The rows are capped at a few messages (`edgeflow.store.rows`) so that short runs cross row boundaries:
appends cut into several rows, reads and removals spanning rows, trimmed rows and rewritten ones.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from edgeflow.message import Message, encode
from edgeflow.store import BufferStats, Store, rows

BUFFERS = st.sampled_from(["a", "b"])


class StoreVersusModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.caps = rows.ROW_MAX_MESSAGES, rows.ROW_MAX_BYTES
        rows.ROW_MAX_MESSAGES, rows.ROW_MAX_BYTES = 5, 150  # ~3-5 of these messages per row
        self.dir = Path(tempfile.mkdtemp(prefix="edgeflow-store-prop-"))
        self.loop = asyncio.new_event_loop()
        self.generation = 0
        self.store = self.run(Store.open(self.dir / "s0.db"))
        # Per buffer: the records that must be in the store, in order, as (seq, message).
        self.model: dict[str, list[tuple[int, Message]]] = {"a": [], "b": []}
        self.last_read: dict[str, list[int]] = {"a": [], "b": []}
        self.counter = 0

    def run(self, coro):
        async def bounded():
            async with asyncio.timeout(10):
                return await coro

        return self.loop.run_until_complete(bounded())

    def teardown(self) -> None:
        rows.ROW_MAX_MESSAGES, rows.ROW_MAX_BYTES = self.caps
        self.run(self.store.close())
        self.loop.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _after(self, name: str, skip: int) -> int:
        """The seq of the `skip`-th present record (0: before them all): a read cursor, or what a sink
        is delivering and drops and expiry spare."""
        present = self.model[name]
        return present[skip - 1][0] if 0 < skip <= len(present) else 0

    @rule(name=BUFFERS, n=st.integers(0, 12), ts=st.integers(0, 20))
    def append(self, name: str, n: int, ts: int) -> None:
        batch = [Message({"i": self.counter + k}, ts=float(ts + k % 3)) for k in range(n)]
        self.counter += n
        seqs = self.run(self.store.buffer(name).append(batch))
        assert len(seqs) == n
        assert all(seq > s for s, _ in self.model[name] for seq in seqs)
        self.model[name].extend(zip(seqs, batch, strict=True))

    @rule(name=BUFFERS, max_n=st.integers(1, 8), skip=st.integers(0, 4))
    def read(self, name: str, max_n: int, skip: int) -> None:
        present = self.model[name]
        after = self._after(name, skip)
        got = self.run(self.store.buffer(name).read(max_n, after=after))
        assert got == [(s, m) for s, m in present if s > after][:max_n]
        self.last_read[name] = [s for s, _ in got]

    def _acknowledge(self, name: str, seqs: list[int]) -> None:
        self.run(self.store.buffer(name).delete(seqs))
        gone = set(seqs)
        self.model[name] = [(s, m) for s, m in self.model[name] if s not in gone]

    @rule(name=BUFFERS, k=st.integers(0, 8))
    def acknowledge_a_prefix_of_the_last_read(self, name: str, k: int) -> None:
        self._acknowledge(name, self.last_read[name][:k])

    @precondition(lambda self: self.last_read["a"] or self.last_read["b"])
    @rule(name=BUFFERS, data=st.data())
    def acknowledge_any_subset_of_the_last_read(self, name: str, data: st.DataObject) -> None:
        seqs = data.draw(st.lists(st.sampled_from(self.last_read[name]))) if self.last_read[name] else []
        self._acknowledge(name, seqs)

    @precondition(lambda self: self.last_read["a"] or self.last_read["b"])
    @rule(name=BUFFERS, data=st.data())
    def acknowledge_a_run_from_the_middle_of_the_last_read(self, name: str, data: st.DataObject) -> None:
        seqs = self.last_read[name]
        i = data.draw(st.integers(0, len(seqs)))
        j = data.draw(st.integers(i, len(seqs)))
        self._acknowledge(name, seqs[i:j])

    @rule(name=BUFFERS, n=st.integers(0, 4), skip=st.integers(0, 3))
    def drop_oldest(self, name: str, n: int, skip: int) -> None:
        after = self._after(name, skip)
        dropped = self.run(self.store.buffer(name).drop_oldest(n, after=after))
        entries = self.model[name]
        first = next((i for i, (s, _) in enumerate(entries) if s > after), len(entries))
        assert dropped == min(n, len(entries) - first)
        del entries[first : first + dropped]

    @rule(name=BUFFERS, cutoff=st.integers(0, 25), skip=st.integers(0, 3))
    def expire(self, name: str, cutoff: int, skip: int) -> None:
        after = self._after(name, skip)
        expired = self.run(self.store.buffer(name).expire(float(cutoff), after=after))
        entries = self.model[name]
        first = next((i for i, (s, _) in enumerate(entries) if s > after), len(entries))
        # Expiry takes the stale head of what is after `after`, in delivery order.
        head = next((i for i in range(first, len(entries)) if entries[i][1].ts >= cutoff), len(entries))
        assert expired == head - first
        del entries[first:head]

    def _reopen(self, path: Path) -> None:
        self.store = self.run(Store.open(path))
        for name, present in self.model.items():
            assert self.run(self.store.buffer(name).read(10**6)) == present

    @rule()
    def crash_and_restart(self) -> None:
        old = self.store.path
        self.generation += 1
        new = self.dir / f"s{self.generation}.db"
        shutil.copyfile(old, new)
        if Path(f"{old}-wal").exists():
            shutil.copyfile(f"{old}-wal", f"{new}-wal")
        self.run(self.store.close())  # closes the original; the copy is the crashed image
        self._reopen(new)

    @rule()
    def close_and_restart(self) -> None:
        self.run(self.store.close())
        self._reopen(self.store.path)

    @invariant()
    def stats_match_the_model(self) -> None:
        for name, present in self.model.items():
            expected = BufferStats(
                len(present),
                sum(len(encode(m)) for _, m in present),
                present[0][1].ts if present else None,  # the head: next to deliver
            )
            assert self.store.buffer(name).stats() == expected


StoreVersusModel.TestCase.settings = settings(max_examples=75, stateful_step_count=40, deadline=None)
test_store_keeps_every_unacknowledged_record_in_order = pytest.mark.timeout(60)(StoreVersusModel.TestCase)
