"""`Store` and `Buffer`: the asyncio face of the durable store.

Every method that touches the file queues a request for the store's writer thread and awaits its
future (one thread hop; see `edgeflow.store.writer` for group commit). Messages are encoded (`append`)
and decoded (`read`) here on the loop, not on the thread: that is CPU work the GIL would serialize with
the loop anyway, and the thread then holds the GIL only between its SQLite calls. A store is bound to the event
loop that opened it. Cancelling a caller does not withdraw its queued request: an append whose caller
was cancelled may still be committed (a possible duplicate, never a loss).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from edgeflow.errors import StoreError
from edgeflow.message import Message
from edgeflow.store.rows import Encoder, Records, decode
from edgeflow.store.writer import BufferStats, Op, Request, Result, Writer

__all__ = ["Buffer", "Store"]

_EMPTY = BufferStats()


class Store:
    """One SQLite file (WAL) under `node.data_dir` holding every persisting sink buffer and the state
    table. Open with `await Store.open(path)`; close with `await store.close()` (or `async with`).

    `synchronous="normal"` makes a commit survive a crash of the process; `"full"` also survives a
    power cut (one fsync per commit). `max_bytes` caps the file: past it writes fail with `StoreFull`
    just as on a full disk, leaving room on the device for everything else.
    """

    path: Path
    _loop: asyncio.AbstractEventLoop
    _closed: bool
    _buffers: dict[str, Buffer]
    _stats: dict[str, BufferStats]
    _writer: Writer
    _encoder: Encoder

    def __init__(self) -> None:
        raise TypeError("use `await Store.open(path)`")

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], *, synchronous: str = "normal", max_bytes: int | None = None
    ) -> Store:
        """Open or create the store; runs on the writer thread, never blocking the loop.

        Creates the directory. A corrupt file is moved aside (see `schema.quarantine`, logged at ERROR)
        and a fresh store opened. Raises `StoreError` if the directory or file cannot be created or
        opened, or the file was written by a newer edgeflow; `ValueError` for a bad `synchronous`.
        """
        mode = synchronous.lower()
        if mode not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', not {synchronous!r}")
        self = cls.__new__(cls)
        self.path = Path(path)
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._buffers = {}
        self._stats = {}
        self._encoder = Encoder()
        self._writer = Writer(self.path, mode, max_bytes, self._loop, self._deliver)
        self._writer.thread.start()
        try:
            self._stats = await self._writer.opened
        except asyncio.CancelledError:
            self._closed = True  # the thread ends as soon as it has opened the file (or failed to)
            self._writer.queue.put(Request(Op.CLOSE, "", None, self._loop.create_future()))
            raise
        except BaseException:
            self._closed = True  # the thread has ended
            raise
        return self

    @property
    def commits(self) -> int:
        """Write transactions committed since open: with group commit, far fewer than requests."""
        return self._writer.commits

    def buffer(self, name: str) -> Buffer:
        """The buffer called `name` (a sink's persisted queue); its table is created by its first write."""
        b = self._buffers.get(name)
        if b is None:
            b = self._buffers[name] = Buffer(self, name)
        return b

    def buffer_names(self) -> list[str]:
        """Names of the buffers the file holds (written at least once), e.g. to find orphans."""
        return sorted(self._stats)

    async def get_state(self, key: str) -> bytes | None:
        """The value stored under `key` in the state table, or None."""
        result: bytes | None = await self._submit(Op.GET_STATE, key, None)
        return result

    async def put_state(self, items: dict[str, bytes | None]) -> None:
        """Set (or, for None, delete) several keys in one transaction; returns once committed."""
        await self._submit(Op.PUT_STATE, "", dict(items), len(items))

    async def close(self) -> None:
        """Run what is queued, checkpoint the WAL into the file, close it and end the thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        fut: asyncio.Future[None] = self._loop.create_future()
        self._writer.queue.put(Request(Op.CLOSE, "", None, fut))
        await fut
        self._writer.thread.join()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def _submit(self, op: int, name: str, arg: Any, weight: int = 1) -> asyncio.Future[Any]:
        if self._closed:
            raise StoreError(f"store {self.path} is closed")
        fut = self._loop.create_future()
        self._writer.queue.put(Request(op, name, arg, fut, weight))
        return fut

    def _deliver(self, results: list[Result], stats: dict[str, BufferStats]) -> None:
        """Runs on the loop after each group: publish the committed stats, then wake the callers."""
        self._stats.update(stats)
        for fut, value, failed in results:
            if fut.done():  # the caller was cancelled
                continue
            if failed:
                fut.set_exception(value)
            else:
                fut.set_result(value)


class Buffer:
    """A persisted FIFO of messages, delivered from the store in order and deleted once acknowledged.

    Sequence numbers (`seq`) are assigned at append, strictly increasing within the buffer, and never
    reused for the life of the file, so `read(after=...)` cursors stay valid across restarts.
    `drop_oldest` and `expire` may remove messages a sink has read and is still delivering; deleting
    them afterwards is a no-op, so each removed message is counted once.
    """

    __slots__ = ("_store", "name")

    def __init__(self, store: Store, name: str) -> None:
        self._store = store
        self.name = name

    async def append(self, msgs: Sequence[Message]) -> range:
        """Store `msgs` in order; returns their seqs once committed (durable per `synchronous`).

        The messages are encoded here, on the loop, before the request is queued (see `rows.Encoder`).
        Raises `StoreFull` / `StoreUnavailable` (retryable: nothing of the call was stored),
        `Permanent` if a message cannot be encoded (nothing of the call was stored).
        """
        encoded = self._store._encoder.encode(msgs)
        result: range = await self._store._submit(Op.APPEND, self.name, encoded, len(msgs))
        return result

    async def read(self, max_n: int, after: int = 0) -> list[tuple[int, Message]]:
        """Up to `max_n` (seq, message) pairs with seq > `after`, oldest first; nothing is removed."""
        chunks: list[Records] = await self._store._submit(Op.READ, self.name, (max_n, after), max_n)
        return decode(chunks)

    async def delete(self, seqs: Sequence[int]) -> None:
        """Remove these seqs (after the destination acknowledged them); unknown seqs are ignored."""
        # A range (what delivery acknowledges) goes as it is: the writer takes it as one run.
        arg = seqs if isinstance(seqs, range) else tuple(seqs)
        await self._store._submit(Op.DELETE, self.name, arg, len(seqs))

    async def drop_oldest(self, n: int, after: int = 0) -> int:
        """Remove the `n` oldest messages with seq > `after` (`when_full = "drop_oldest"`; `after` spares
        what a sink is delivering right now); returns how many were removed."""
        result: int = await self._store._submit(Op.DROP_OLDEST, self.name, (n, after))
        return result

    async def expire(self, older_than_ts: float, after: int = 0) -> int:
        """Remove the stale head: messages with seq > `after`, in order, up to the first whose `ts` is
        at or after `older_than_ts` (TTL); returns how many were removed."""
        result: int = await self._store._submit(Op.EXPIRE, self.name, (older_than_ts, after))
        return result

    def stats(self) -> BufferStats:
        """Committed count, bytes and oldest ts, kept in memory: free to call on every message."""
        return self._store._stats.get(self.name, _EMPTY)
