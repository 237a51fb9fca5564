"""The bounded mailbox in front of every operator and sink.

It moves batches: a sender puts a list, a receiver wakes once and takes everything waiting, up to a
limit. That is what makes a pipeline of actors as fast as a bare queue chain: the cost of a wake-up
is shared by every message it moves.

When the mailbox is full, the overflow policy decides: `block` makes the sender wait (back-pressure
all the way to the source), `drop_oldest` discards the oldest waiting messages, `drop_newest` refuses
the new ones. Every dropped message is counted and settled (a dropped message is a loss the user
chose, so its source may acknowledge it rather than stall).

End of stream: every upstream holds the mailbox open as a writer; when the last one closes and the
mailbox is empty, `get` returns None. That is how a finished source, and a stop, drain the graph.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Literal

from .message import Message

__all__ = ["Mailbox", "Overflow"]

Overflow = Literal["block", "drop_oldest", "drop_newest"]


class Mailbox:
    __slots__ = (
        "_getter",
        "_putters",
        "_q",
        "capacity",
        "dropped",
        "name",
        "overflow",
        "received",
        "writers",
    )

    def __init__(self, name: str, capacity: int, overflow: Overflow = "block", writers: int = 0) -> None:
        self.name = name
        self.capacity = capacity
        self.overflow = overflow
        self.writers = writers
        self.dropped = 0
        self.received = 0
        self._q: deque[Message] = deque()
        self._getter: asyncio.Future[None] | None = None
        self._putters: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._q)

    @property
    def closed(self) -> bool:
        return self.writers <= 0

    async def put(self, msgs: Sequence[Message]) -> None:
        """Add a batch; with `block`, wait (in order with other senders) until all of it fits."""
        q = self._q
        n = len(msgs)
        self.received += n
        if len(q) + n <= self.capacity and not self._putters:
            q.extend(msgs)
            self._wake_getter()
            return
        if self.overflow == "drop_oldest":
            q.extend(msgs)
            self._drop([q.popleft() for _ in range(len(q) - self.capacity)])
            self._wake_getter()
        elif self.overflow == "drop_newest":
            room = max(0, self.capacity - len(q))
            q.extend(msgs[:room])
            self._drop(msgs[room:])
            self._wake_getter()
        else:
            await self._put_blocking(msgs)

    async def _put_blocking(self, msgs: Sequence[Message]) -> None:
        q = self._q
        start = 0
        while start < len(msgs):
            room = self.capacity - len(q)
            if room > 0 and (not self._putters or self._putters[0].done()):
                q.extend(msgs[start : start + room])
                start += room
                self._wake_getter()
                continue
            fut = asyncio.get_running_loop().create_future()
            self._putters.append(fut)
            try:
                await fut
            finally:
                if self._putters and self._putters[0] is fut:
                    self._putters.popleft()
                else:
                    try:
                        self._putters.remove(fut)
                    except ValueError:
                        pass
                # Pass the turn on if we are leaving with room still there (e.g. we were cancelled).
                self._wake_putter()

    def _drop(self, msgs: Sequence[Message]) -> None:
        self.dropped += len(msgs)
        for m in msgs:
            if m.ack is not None:
                m.ack.done()

    def _wake_getter(self) -> None:
        g = self._getter
        if g is not None and not g.done():
            g.set_result(None)

    def _wake_putter(self) -> None:
        if self._putters and len(self._q) < self.capacity:
            p = self._putters[0]
            if not p.done():
                p.set_result(None)

    async def get(self, max_n: int) -> list[Message] | None:
        """Wait for messages and take up to `max_n`; None once every writer closed and all is taken."""
        q = self._q
        while not q:
            if self.writers <= 0:
                return None
            fut = asyncio.get_running_loop().create_future()
            self._getter = fut
            try:
                await fut
            finally:
                self._getter = None
        if len(q) <= max_n:
            batch = list(q)
            q.clear()
        else:
            batch = [q.popleft() for _ in range(max_n)]
        self._wake_putter()
        return batch

    def get_nowait(self, max_n: int) -> list[Message]:
        """Take what is there now, up to `max_n` (possibly nothing)."""
        q = self._q
        batch = [q.popleft() for _ in range(min(max_n, len(q)))]
        if batch:
            self._wake_putter()
        return batch

    def unget(self, msgs: Sequence[Message]) -> None:
        """Put a batch back at the front (work taken but not finished when its actor was interrupted)."""
        self._q.extendleft(reversed(msgs))
        self._wake_getter()

    def add_writer(self) -> None:
        self.writers += 1

    def close_writer(self) -> None:
        """One upstream is finished; the last one ends the stream once the mailbox is empty."""
        self.writers -= 1
        if self.writers <= 0:
            self._wake_getter()
