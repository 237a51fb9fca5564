"""Messages: a payload plus the metadata every actor and expression can read.

A message is treated as immutable once emitted: the same object may be routed to several actors at
once, so an operator that changes a message returns a new one (`Message.derive`) instead of editing it.

Acknowledgement travels with the message as an `Ack` token. A source that can acknowledge upstream
(MQTT QoS 1, a file offset, an HTTP push) attaches one; every copy of the message that the graph
creates (fan-out, an operator that emits several messages) adds to its count, and every copy that
becomes durable (committed to a persisting buffer, delivered by a sink without a buffer) or is dropped
on purpose (filtered, dropped by a chosen overflow policy, dead-lettered) settles one. When the count
reaches zero the source's callback runs and the upstream is acknowledged.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack

__all__ = ["Ack", "Message", "decode", "encode", "new_id"]


class Ack:
    """A count of the copies of one source message that are not yet durable or dropped."""

    __slots__ = ("callback", "pending")

    def __init__(self, callback: Callable[[], object]) -> None:
        self.callback = callback
        self.pending = 1

    def add(self, n: int = 1) -> None:
        """Record `n` more copies in flight (fan-out, one-to-many operators)."""
        self.pending += n

    def done(self) -> None:
        """Settle one copy; the last one acknowledges upstream."""
        self.pending -= 1
        if self.pending == 0:
            self.callback()


# Ids are a per-process random prefix plus a counter: unique across restarts and nodes without the
# cost of a uuid per message, and stable once stored (a replay keeps the id it was stored with).
_PREFIX = os.urandom(6).hex()
_counter = itertools.count()


def new_id() -> str:
    return f"{_PREFIX}-{next(_counter):x}"


class Message:
    """One record flowing through the graph.

    `payload` is usually a mapping (decoded JSON, msgpack, CSV row); it may be `bytes` or `str` for
    raw formats. Metadata: `source` (name of the producing actor), `topic` (MQTT topic, file path,
    URL...), `ts` (seconds since the epoch, float), `id` (stable, for de-duplication downstream) and
    `headers` (a dict of extra metadata such as MQTT 5 properties, or None).
    """

    __slots__ = ("ack", "headers", "id", "payload", "source", "topic", "ts")

    def __init__(
        self,
        payload: Any,
        source: str = "",
        topic: str | None = None,
        ts: float | None = None,
        id: str | None = None,
        headers: dict[str, Any] | None = None,
        ack: Ack | None = None,
    ) -> None:
        self.payload = payload
        self.source = source
        self.topic = topic
        self.ts = time.time() if ts is None else ts
        self.id = new_id() if id is None else id
        self.headers = headers
        self.ack = ack

    def derive(self, payload: Any) -> Message:
        """A new message with another payload and the same metadata and acknowledgement."""
        m = Message.__new__(Message)
        m.payload = payload
        m.source = self.source
        m.topic = self.topic
        m.ts = self.ts
        m.id = self.id
        m.headers = self.headers
        m.ack = self.ack
        return m

    def __repr__(self) -> str:
        return f"Message(id={self.id!r}, source={self.source!r}, topic={self.topic!r}, payload={self.payload!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (
            self.payload == other.payload
            and self.source == other.source
            and self.topic == other.topic
            and self.ts == other.ts
            and self.id == other.id
            and self.headers == other.headers
        )

    __hash__ = None  # type: ignore[assignment]


_local = threading.local()


def encode(m: Message) -> bytes:
    """The storage form: msgpack of (id, source, topic, ts, headers, payload). The ack is not kept."""
    try:
        pack = _local.pack
    except AttributeError:  # one Packer per thread: reusing it halves the cost, but it is not thread-safe
        pack = _local.pack = msgpack.Packer(use_bin_type=True).pack
    data: bytes = pack((m.id, m.source, m.topic, m.ts, m.headers, m.payload))
    return data


def decode(data: bytes) -> Message:
    id_, source, topic, ts, headers, payload = msgpack.unpackb(data, raw=False, strict_map_key=False)
    return Message(payload, source, topic, ts, id_, headers)
