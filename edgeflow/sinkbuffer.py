"""A sink's persisting buffer: store-and-forward through SQLite.

Two loops share one sink. Intake takes batches from the mailbox, commits them to the store, and only
then settles their acknowledgements (this is the moment an MQTT source sends its PUBACK). Delivery
hands batches to the sink's `write` in store order and deletes only what the destination took (or what
went to the dead-letter sink). After a crash, delivery starts again from whatever is still stored, in
the original order.

While delivery keeps up, the batches intake just committed are also kept in memory (a short, bounded
queue) and delivered from there: the store is written and trimmed, but not read back and decoded.
When delivery falls behind (the destination is slow or down) the queue stops taking batches and
delivery reads the backlog from the store instead, in order, until it has caught up.

A full buffer (`max_size` bytes on disk) either blocks intake (`when_full = "block"`: the mailbox fills
and back-pressure reaches the sources) or drops the oldest stored messages, counted. A `ttl` expires
stored messages by their timestamp, counted. `max_size` is checked before each committed batch, so the
file may pass it by at most one batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .errors import Retryable
from .message import Message

if TYPE_CHECKING:
    from .actor import Sink
    from .cell import Cell
    from .store import Buffer
    from .topology import BufferConfig

__all__ = ["SinkBuffer"]

#: Messages kept in memory for delivery straight after commit (bounded: memory must not grow).
RECENT_MAX = 8192
#: Messages gathered from the mailbox while a commit runs (bounded: memory must not grow).
PENDING_MAX = 1024

log = logging.getLogger("edgeflow.buffer")


class SinkBuffer:
    def __init__(self, buffer: Buffer, config: BufferConfig) -> None:
        self.buffer = buffer
        self.config = config
        self.delivered = 0
        self.dropped = 0
        self.expired = 0
        self.dead_lettered = 0
        self._stored = asyncio.Event()  # intake committed something
        self._freed = asyncio.Event()  # delivery or expiry removed something
        self._intake_done = False
        # Committed batches not yet delivered, while delivery keeps up: (first seq, messages).
        self._recent: deque[tuple[int, list[Message]]] = deque()
        self._recent_n = 0
        self._recent_max = RECENT_MAX
        self._next: int | None = None  # next seq delivery expects; None = ask the store
        self._delivering = 0  # highest seq handed to the sink and not yet deleted: spared by drops
        self._generation = 0  # bumped whenever rows go behind delivery's back
        self._removing = 0  # drops/expiries in flight: their `after` was fixed when they were sent

    def status(self) -> dict[str, Any]:
        s = self.buffer.stats()
        return {
            "messages": s.count,
            "bytes": s.bytes,
            "oldest_age_s": round(time.time() - s.oldest_ts, 1) if s.oldest_ts is not None else None,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "expired": self.expired,
            "dead_lettered": self.dead_lettered,
        }

    async def run(self, cell: Cell, sink: Sink) -> None:
        """Run intake and delivery until the input ended and the buffer drained (or the stop deadline).

        Runs again after a restart of the sink: delivery then starts over from the head of the store,
        so a batch whose write was interrupted is delivered again rather than skipped.
        """
        self._intake_done = False
        # Memory holds what delivery will take soon, not a backlog: a slow sink (small batches, a round
        # trip each) reads its backlog from the store instead of keeping thousands of decoded messages.
        self._recent_max = min(RECENT_MAX, max(2 * sink.max_batch, 512))
        self._forget_recent()
        self._delivering = 0
        delivery = asyncio.create_task(self._delivery(cell, sink), name=f"edgeflow[{cell.name}].delivery")
        expiry = None
        if self.config.ttl is not None:
            expiry = asyncio.create_task(self._expiry(cell, self.config.ttl), name=f"edgeflow[{cell.name}].ttl")
        intake = asyncio.create_task(self._intake(cell), name=f"edgeflow[{cell.name}].intake")
        # Everything taken from the mailbox is either committed or put back when cancelled, so a
        # restart (a sibling crashed, a reload, `actor.restart`) may interrupt this sink anywhere.
        cell._interruptible = True
        try:
            # A crash in either loop is the sink's crash: it surfaces here and the supervisor acts.
            await asyncio.wait([intake, delivery], return_when=asyncio.FIRST_COMPLETED)
            if delivery.done():
                delivery.result()  # raises its exception; delivery never ends before intake otherwise
            intake.result()
            self._intake_done = True
            self._stored.set()
            # The input ended (a stop, or every source finished): deliver what we can, but leave the
            # runtime's own stop deadline room; what is left stays stored for the next run.
            await asyncio.wait([delivery], timeout=cell.stop_timeout / 2)
            if delivery.done():
                delivery.result()
            else:
                left = self.buffer.stats().count
                cell.log.warning("stopping with %d messages kept in the buffer for the next run", left)
        finally:
            cell._interruptible = False
            for task in (intake, delivery, expiry):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task

    # -- intake: mailbox -> store ------------------------------------------------------------------

    async def _intake(self, cell: Cell) -> None:
        """Move the mailbox into the store, in order, one commit at a time.

        A collector keeps emptying the mailbox into `pending` while the previous commit runs, so the
        sources never wait on a commit's latency, and the next commit takes everything gathered
        meanwhile (group commit at the sink: the busier the flow, the bigger the transactions).
        `pending` is bounded, so memory is too; past the bound the mailbox fills and pushes back.
        """
        mb = cell.mailbox
        assert mb is not None
        self._pending: list[Message] = []
        self._gathered = asyncio.Event()
        self._room = asyncio.Event()
        self._input_ended = False
        collector = asyncio.create_task(self._collect(cell), name=f"edgeflow[{cell.name}].intake")
        try:
            while True:
                if not self._pending:
                    if self._input_ended:
                        return
                    self._gathered.clear()
                    await self._gathered.wait()
                    continue
                batch, self._pending = self._pending, []
                self._room.set()
                try:
                    await self._commit(cell, batch)
                except BaseException:
                    mb.unget(batch + self._pending)  # not durable yet: keep it for the restart
                    self._pending = []
                    raise
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
            if self._pending:
                mb.unget(self._pending)
                self._pending = []

    async def _collect(self, cell: Cell) -> None:
        mb = cell.mailbox
        assert mb is not None
        while True:
            while len(self._pending) >= PENDING_MAX:
                self._room.clear()
                await self._room.wait()
            batch = await mb.get(PENDING_MAX - len(self._pending))  # pending stays within its bound
            if batch is None:
                self._input_ended = True
                self._gathered.set()
                return
            cell.metrics.in_ += len(batch)
            self._pending.extend(batch)
            self._gathered.set()

    async def _commit(self, cell: Cell, batch: list[Message]) -> None:
        await self._make_room(cell, len(batch))
        attempt = 0
        while True:
            try:
                seqs = await self.buffer.append(batch)
                break
            except Retryable as exc:  # disk full, read-only: hold the batch, push back, retry
                if attempt == 0 or attempt % 20 == 0:
                    cell.log.error("cannot store messages, holding them and retrying: %s", exc)
                cell.state = "store-retry"
                await asyncio.sleep(cell.supervisor.delay(attempt))
                attempt += 1
        if attempt:
            cell.log.info("storing again after %d retries", attempt)
            cell.state = "running"
        for m in batch:
            if m.ack is not None:
                m.ack.done()
        if self._recent_n + len(batch) <= self._recent_max:
            self._recent.append((seqs.start, batch))
            self._recent_n += len(batch)
        self._stored.set()

    async def _make_room(self, cell: Cell, incoming: int) -> None:
        limit = self.config.max_size
        while self.buffer.stats().bytes >= limit:
            if self.config.when_full == "drop_oldest":
                self._generation += 1  # a read already queued may return what this drops
                self._removing += 1
                try:
                    n = await self.buffer.drop_oldest(max(incoming, 1), after=self._delivering)
                finally:
                    self._removing -= 1
                self._forget_recent()
                self.dropped += n
                cell.metrics.dropped += n
                if n == 0:
                    return
                continue
            if cell.state != "buffer-full":
                cell.log.warning(
                    "buffer full (%d bytes >= max_size %d): holding input", self.buffer.stats().bytes, limit
                )
                cell.state = "buffer-full"
            self._freed.clear()
            await self._freed.wait()
        if cell.state == "buffer-full":
            cell.state = "running"

    # -- delivery: store -> destination --------------------------------------------------------------

    async def _delivery(self, cell: Cell, sink: Sink) -> None:
        max_batch = sink.max_batch
        while True:
            self._stored.clear()
            taken = self._take_recent(max_batch)
            if taken is None:
                generation = self._generation
                items = await self.buffer.read(max_batch, after=(self._next or 1) - 1)
                if generation != self._generation:
                    continue  # rows were dropped or expired while we read: what we got may be gone
                if not items:
                    if self._intake_done:
                        return
                    await self._stored.wait()
                    continue
                first, last = items[0][0], items[-1][0]
                seqs: Sequence[int] = (
                    range(first, last + 1) if last - first + 1 == len(items) else [q for q, _ in items]
                )
                msgs = [m for _, m in items]
            else:
                seqs, msgs = taken
            self._next = seqs[-1] + 1
            self._delivering = seqs[-1]
            failed = await cell.deliver(sink, msgs)
            await self.buffer.delete(seqs)
            self.delivered += len(msgs) - len(failed)
            self.dead_lettered += len(failed)
            self._freed.set()

    async def _expiry(self, cell: Cell, ttl: float) -> None:
        """Expire the stale head of the buffer, independently of delivery (which may be stuck)."""
        while True:
            self._generation += 1  # a read already queued may return what this expires
            self._removing += 1
            try:
                n = await self.buffer.expire(time.time() - ttl, after=self._delivering)
            finally:
                self._removing -= 1
            if n:
                self._forget_recent()
                self.expired += n
                cell.metrics.dropped += n
                cell.log.warning("expired %d buffered messages older than ttl", n)
                self._freed.set()
            await asyncio.sleep(min(1.0, max(ttl / 4, 0.05)))

    def _forget_recent(self) -> None:
        """Rows were removed behind delivery's back (drop_oldest, ttl): go back to reading the store."""
        self._recent.clear()
        self._recent_n = 0
        self._next = None
        self._generation += 1

    def _take_recent(self, max_n: int) -> tuple[range, list[Message]] | None:
        """The next messages from memory when they are exactly the next in store order, else None."""
        if self._removing:
            return None  # a drop in flight may take what memory holds; the store read is checked
        recent = self._recent
        while recent:
            first, msgs = recent[0]
            if self._next is not None and first + len(msgs) <= self._next:
                recent.popleft()  # already delivered from the store
                self._recent_n -= len(msgs)
                continue
            if self._next is not None and first != self._next:
                # A gap (the queue was full for a while): read from the store until caught up.
                return None
            if self._next is None and self.buffer.stats().count != self._recent_n:
                return None  # older messages wait in the store (a restart, a backlog)
            recent.popleft()
            self._recent_n -= len(msgs)
            # A paced flow commits a few messages at a time: deliver consecutive commits together, so
            # each write (one round trip to an MQTT broker) and each delete carries up to max_n.
            while recent and len(msgs) < max_n and recent[0][0] == first + len(msgs):
                more = recent.popleft()[1]
                self._recent_n -= len(more)
                msgs = msgs + more
            if len(msgs) > max_n:
                recent.appendleft((first + max_n, msgs[max_n:]))
                self._recent_n += len(msgs) - max_n
                msgs = msgs[:max_n]
            return range(first, first + len(msgs)), msgs
        return None
