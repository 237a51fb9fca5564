"""The durable read position of a file source: advanced only over what downstream made durable.

The source hands out one `Ack` per batch of lines it read (`OffsetTracker.batch`). Batches settle out
of order (fan-out to a slow and a fast sink, a dead-letter copy), so the tracker keeps the batches in
flight in read order and commits the end of the longest settled prefix: a restart from the committed
position may read some lines again (at-least-once), never skip one.

A position names its file by (device, inode) as well as offset, so a restart can tell "the same file,
further on" from "the file was rotated or replaced while we were down".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgpack

from edgeflow import Ack

if TYPE_CHECKING:
    from edgeflow.store import Store

__all__ = ["OffsetTracker", "Position"]

#: The most often a changed position is written to the store: a crash re-reads at most this much.
SAVE_INTERVAL = 0.2


@dataclass(frozen=True, slots=True)
class Position:
    path: str
    dev: int
    inode: int
    offset: int

    def same_file(self, dev: int, inode: int) -> bool:
        return self.dev == dev and self.inode == inode

    def encode(self) -> bytes:
        data: bytes = msgpack.packb({"path": self.path, "dev": self.dev, "inode": self.inode, "offset": self.offset})
        return data

    @classmethod
    def decode(cls, data: bytes) -> Position | None:
        """The stored position, or None when it cannot be read (then the source starts as if new)."""
        try:
            doc: Any = msgpack.unpackb(data)
            return cls(str(doc["path"]), int(doc["dev"]), int(doc["inode"]), int(doc["offset"]))
        except Exception:
            return None


class _Entry:
    """One batch in flight: the position just after its last line, and whether it settled."""

    __slots__ = ("done", "position")

    def __init__(self, position: Position, done: bool) -> None:
        self.position = position
        self.done = done


class OffsetTracker:
    """Tracks the batches in flight and saves the committed position to the store, coalesced.

    `start` launches the saver task; `stop` waits (bounded) for what is in flight to settle, cancels the
    saver and writes the final position. A failed save is logged and retried at the next interval; it
    never stops the source (the position only lags, so a restart re-reads more).
    """

    def __init__(self, store: Store, key: str, committed: Position, log: logging.Logger) -> None:
        self.store = store
        self.key = key
        self.committed = committed
        self.saved: Position | None = None
        self.log = log
        self._inflight: deque[_Entry] = deque()
        self._dirty = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._saver: asyncio.Task[None] | None = None

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def start(self, save_now: bool) -> None:
        """Start saving; `save_now` writes the starting position at once (a fresh `start_at = "end"`)."""
        if save_now:
            self._dirty.set()
        self._saver = asyncio.create_task(self._save_loop(), name=f"edgeflow[{self.key}].offset")

    def batch(self, position: Position, count: int) -> Ack | None:
        """Record a batch ending at `position` carrying `count` messages; the Ack to attach to each.

        With `count == 0` (blank lines, a CSV header, a rotation marker) the batch is settled at once
        and None is returned.
        """
        entry = _Entry(position, count == 0)
        self._inflight.append(entry)
        self._idle.clear()
        if count == 0:
            self._advance()
            return None
        ack = Ack(lambda: self._settle(entry))
        ack.pending = count
        return ack

    def _settle(self, entry: _Entry) -> None:
        entry.done = True
        if self._inflight[0] is entry:
            self._advance()

    def _advance(self) -> None:
        q = self._inflight
        last = None
        while q and q[0].done:
            last = q.popleft()
        if last is not None:
            self.committed = last.position
            self._dirty.set()
        if not q:
            self._idle.set()

    async def _save_loop(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._save()
            await asyncio.sleep(SAVE_INTERVAL)

    async def _save(self) -> None:
        pos = self.committed
        if pos == self.saved:
            return
        try:
            await self.store.put_state({self.key: pos.encode()})
        except Exception as exc:
            self.log.warning("cannot store the read position (will retry): %s", exc)
            self._dirty.set()
            return
        self.saved = pos

    async def stop(self, settle_timeout: float) -> None:
        """Wait up to `settle_timeout` for the batches in flight, then write the committed position."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settle_timeout):
                await self._idle.wait()
        if self._saver is not None:
            self._saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._saver
            self._saver = None
        await self._save()
