"""A sink's persisting buffer: store-and-forward through SQLite.

Two loops share one sink. Intake takes batches from the mailbox, commits them to the store, and only
then settles their acknowledgements (this is the moment an MQTT source sends its PUBACK). Delivery
reads the store in order, hands batches to the sink's `write`, and deletes only what the destination
took (or what went to the dead-letter sink). After a crash, delivery starts again from whatever is
still stored, in the original order.

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
from typing import TYPE_CHECKING, Any

from .errors import Retryable

if TYPE_CHECKING:
    from .actor import Sink
    from .cell import Cell
    from .store import Buffer
    from .topology import BufferConfig

__all__ = ["SinkBuffer"]

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
        """Run intake and delivery until the input ended and the buffer drained (or the stop deadline)."""
        self._intake_done = False
        delivery = asyncio.create_task(self._delivery(cell, sink), name=f"edgeflow[{cell.name}].delivery")
        try:
            await self._intake(cell)
            self._intake_done = True
            self._stored.set()
            await delivery
        finally:
            if not delivery.done():
                delivery.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await delivery

    # -- intake: mailbox -> store ------------------------------------------------------------------

    async def _intake(self, cell: Cell) -> None:
        mb = cell.mailbox
        assert mb is not None
        metrics = cell.metrics
        attempt = 0
        while True:
            cell._interruptible = True
            try:
                batch = await mb.get(4096)
            finally:
                cell._interruptible = False
            if batch is None:
                return
            metrics.in_ += len(batch)
            await self._make_room(cell, len(batch))
            while True:
                try:
                    await self.buffer.append(batch)
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
                attempt = 0
            for m in batch:
                if m.ack is not None:
                    m.ack.done()
            self._stored.set()

    async def _make_room(self, cell: Cell, incoming: int) -> None:
        limit = self.config.max_size
        while self.buffer.stats().bytes >= limit:
            if self.config.when_full == "drop_oldest":
                n = await self.buffer.drop_oldest(max(incoming, 1))
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
        ttl = self.config.ttl
        max_batch = sink.max_batch
        deadline: float | None = None
        while True:
            if ttl is not None:
                n = await self.buffer.expire(time.time() - ttl)
                if n:
                    self.expired += n
                    cell.metrics.dropped += n
                    cell.log.warning("expired %d buffered messages older than ttl", n)
                    self._freed.set()
            self._stored.clear()
            items = await self.buffer.read(max_batch)
            if not items:
                if self._intake_done:
                    return
                await self._stored.wait()
                continue
            if self._intake_done and deadline is None:
                # Leave the runtime's own stop deadline room to finish cleanly after this one.
                deadline = time.monotonic() + cell.stop_timeout / 2
            msgs = [m for _, m in items]
            if deadline is None:
                failed = await cell.deliver(sink, msgs)
            else:
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        failed = await cell.deliver(sink, msgs)
                except TimeoutError:
                    left = self.buffer.stats().count
                    cell.log.warning("stopping with %d messages kept in the buffer for the next run", left)
                    return
            await self.buffer.delete([seq for seq, _ in items])
            self.delivered += len(items) - len(failed)
            self.dead_lettered += len(failed)
            self._freed.set()
