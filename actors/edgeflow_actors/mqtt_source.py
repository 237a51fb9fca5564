"""`[sources.X] type = "mqtt"`: messages from topics of a shared MQTT connection.

At-least-once: a QoS 1/2 message carries an `Ack` whose callback is `InMessage.ack`, so its PUBACK
(PUBCOMP for QoS 2) leaves only once every copy of it is durable (committed to a persisting sink
buffer, delivered by a sink without one) or dropped on purpose (filtered out, dead-lettered). A crash
before that leaves it unacknowledged, and the broker sends it again on the next connection of the
persistent session. QoS 2 is weaker across a crash (paho answers PUBREC on receipt), so QoS 1 is what
the promise rests on.

The subscriptions' handler runs on the loop for each read pass with a batch of `InMessage`s and only
queues it; `produce()` takes everything queued at once and decodes it here, so a burst becomes one
batch. What is queued is bounded: for QoS 1/2 by the broker's in-flight window (`receive_maximum` of
the connection), for QoS 0 by `max_pending`, beyond which new messages are dropped and counted.

Undecodable payloads go to the dead-letter destination with the reason (and are acknowledged once the
dead-letter copy is durable). Stopping closes the subscriptions without unsubscribing: the broker
keeps the session's subscriptions and queues what arrives until the source is back; messages still
queued here are handed back to the connection for the next instance.
"""

from __future__ import annotations

import asyncio
import csv
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Any, Literal

from edgeflow import Ack, Config, ConnectionRef, Message, Source, field
from edgeflow.jsoncodec import make_loads
from edgeflow.mqtt.subscription import validate_filter

from .mqtt_connection import MqttConnectionPlugin

if TYPE_CHECKING:
    from edgeflow.mqtt import InMessage, Subscription

__all__ = ["MqttSource", "MqttSourceConfig"]

#: Messages queued here from which the source stops reading the connection (and most one produce() takes).
HIGH_WATER = 1024

Format = Literal["json", "msgpack", "raw", "line", "csv"]


class MqttSourceConfig(Config):
    connection: ConnectionRef = field(doc="the [connections.NAME] (type mqtt) to subscribe through")
    topics: list[str] = field(doc="topic filters: wildcards + and #, shared subscriptions $share/GROUP/filter")
    qos: int = field(1, ge=0, le=2, doc="1 or 2: acknowledged only once durable; 0: may be lost")
    format: Format = field(
        "json",
        doc='payload decoding: "json", "msgpack", "raw" (bytes), "line" ({"line": text}), "csv" (a row each line)',
    )
    columns: list[str] | None = field(None, doc="csv: name the fields (rows become tables); else rows are lists")
    delimiter: str = field(",", doc="csv: the field separator (one character)")
    max_pending: int = field(10_000, ge=1, doc="QoS 0: messages held while downstream is busy; more are dropped")

    def __post_init__(self) -> None:
        if not self.topics:
            raise ValueError("topics: give at least one topic filter")
        for topic in self.topics:
            try:
                validate_filter(topic)
            except ValueError as exc:
                raise ValueError(f"topics: {exc}") from None
        if len(self.delimiter) != 1:
            raise ValueError(f"delimiter must be one character, not {self.delimiter!r}")
        if self.columns is not None and self.format != "csv":
            raise ValueError('columns applies to format = "csv" only')


class MqttSource(Source):
    """Subscribes to `topics`; each MQTT message becomes a message (topic in meta.topic, qos, retain and
    MQTT 5 properties in meta.headers)."""

    Config = MqttSourceConfig
    config: MqttSourceConfig
    acknowledges = True

    async def on_start(self) -> None:
        cfg = self.config
        plugin = self.context.connections.get(cfg.connection)
        if not isinstance(plugin, MqttConnectionPlugin):
            raise RuntimeError(f"connection {cfg.connection!r} is not an mqtt connection")
        self._queue: deque[list[InMessage]] = deque()
        self._queued = 0  # messages in _queue
        self._wakeup = asyncio.Event()
        self.dropped = 0
        self.rejected_n = 0
        self._decode = _decoder(cfg.format, cfg.columns, cfg.delimiter)
        self._headers: dict[tuple[int, bool, bool], dict[str, Any]] = {}
        self._conn = plugin.conn
        self._subs: list[Subscription] = [plugin.conn.subscribe(t, cfg.qos, self._on_batch) for t in cfg.topics]

    def _on_batch(self, batch: list[InMessage]) -> None:
        """The subscriptions' handler (on the loop, per read pass): queue the batch, wake `produce`."""
        if self.config.qos == 0 and self._queued + len(batch) > self.config.max_pending:
            batch = self._trim(batch)
            if not batch:
                return
        self._queue.append(batch)
        self._queued += len(batch)
        self._wakeup.set()
        if self._queued >= HIGH_WATER:
            self._conn.pause_reading(self)  # downstream is busy: let the broker hold the rest

    def _trim(self, batch: list[InMessage]) -> list[InMessage]:
        """Over `max_pending`: keep what fits (and every QoS 1/2 message: the broker bounds those)."""
        room = self.config.max_pending - self._queued
        kept: list[InMessage] = []
        for m in batch:
            if m.qos:
                kept.append(m)
            elif room > 0:
                kept.append(m)
                room -= 1
        lost = len(batch) - len(kept)
        if self.dropped == 0 or (self.dropped + lost) // 10_000 != self.dropped // 10_000:
            self.log.warning(
                "QoS 0 input arrives faster than downstream takes it: dropped %d messages so far (max_pending %d)",
                self.dropped + lost,
                self.config.max_pending,
            )
        self.dropped += lost
        return kept

    async def produce(self) -> list[Message] | None:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        # At most HIGH_WATER messages per call (whole read passes): what stays queued stays as received
        # bytes, not decoded messages, and the mailbox's backpressure reaches the socket.
        pending = self._queue
        taking = [pending.popleft()]
        taken = len(taking[0])
        while pending and taken < HIGH_WATER:
            taking.append(pending.popleft())
            taken += len(taking[-1])
        queue: Sequence[list[InMessage]] = taking
        self._queued -= taken
        if self._queued < HIGH_WATER:
            self._conn.resume_reading(self)
        if len(queue) > 1 and len(self._subs) > 1:
            queue = (_merge(queue),)
        out: list[Message] = []
        name = self.name
        decode = self._decode
        headers_for = self._headers_for
        for batch in queue:
            for m in batch:
                topic = m.topic
                ack = Ack(m.ack) if m.qos else None
                try:
                    payload = decode(m.payload)
                except _Undecodable as exc:
                    self.rejected_n += 1
                    self.reject(m.payload, str(exc), topic=topic, ack=ack)
                    continue
                headers = headers_for(m)
                if type(payload) is not _Rows:
                    out.append(Message(payload, name, topic, headers=headers, ack=ack))
                else:
                    self._rows(payload, m, headers, ack, out)
        return out

    def _rows(self, rows: _Rows, m: InMessage, headers: dict[str, Any], ack: Ack | None, out: list[Message]) -> None:
        """A CSV payload of several rows: a message per good row, a dead letter per bad one, one Ack."""
        n = len(rows.good) + len(rows.bad)
        if ack is not None:
            if n == 0:
                ack.done()  # an empty payload: nothing to deliver
            else:
                ack.add(n - 1)
        for row in rows.good:
            out.append(Message(row, self.name, m.topic, headers=headers, ack=ack))
        for line, reason in rows.bad:
            self.rejected_n += 1
            self.reject(line, reason, topic=m.topic, ack=ack)

    def _headers_for(self, m: InMessage) -> dict[str, Any]:
        """qos, retain (dup when set) and the MQTT 5 properties; shared when there are no properties."""
        props = m.properties
        if props is None:
            key = (m.qos, m.retain, m.dup)
            headers = self._headers.get(key)
            if headers is None:
                headers = self._headers[key] = _base_headers(m)
            return headers
        headers = _base_headers(m)
        headers.update(props)
        pairs = props.get("user_properties")
        if pairs is not None:
            headers["user_properties"] = dict(pairs)  # read as meta.headers.user_properties.NAME
        return headers

    async def on_stop(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.resume_reading(self)  # a stopped source must not leave the shared connection paused
        subs = getattr(self, "_subs", [])
        leftovers = [m for batch in getattr(self, "_queue", ()) for m in batch]
        self._queue = deque()
        for i, sub in enumerate(subs):
            # Not unsubscribing: the broker keeps queueing for the persistent session meanwhile.
            sub.close(unacked=leftovers if i == len(subs) - 1 else ())

    def status(self) -> dict[str, Any]:
        subs = getattr(self, "_subs", [])
        return {
            "subscriptions": {s.topic_filter: s.error or ("active" if s.active else "pending") for s in subs},
            "queued": getattr(self, "_queued", 0),
            "dropped_qos0": getattr(self, "dropped", 0),
            "undecodable": getattr(self, "rejected_n", 0),
        }


def _merge(batches: Iterable[list[InMessage]]) -> list[InMessage]:
    """Batches of several subscriptions as one, in arrival order, each message once.

    Each subscription gets its own batch per read pass, so a source with several topic filters would
    otherwise reorder messages of different topics; and a message matching two of its filters is in
    two batches: that second copy is settled now (the message then waits for the first one only).
    """
    unique: dict[int, InMessage] = {}
    for batch in batches:
        for m in batch:
            if id(m) in unique:
                m.ack()
            else:
                unique[id(m)] = m
    return sorted(unique.values(), key=_arrival)


_arrival = attrgetter("seq")


def _base_headers(m: InMessage) -> dict[str, Any]:
    headers: dict[str, Any] = {"qos": m.qos, "retain": m.retain}
    if m.dup:
        headers["dup"] = True
    return headers


# --- payload formats -----------------------------------------------------------------------------------


class _Undecodable(Exception):
    """A payload the format cannot read; the message says why (it becomes the dead-letter reason)."""


class _Rows:
    """Several CSV rows out of one payload (rare: most publishers send one row per message)."""

    __slots__ = ("bad", "good")

    def __init__(self, good: list[Any], bad: list[tuple[str, str]]) -> None:
        self.good = good
        self.bad = bad


def _decoder(fmt: Format, columns: list[str] | None, delimiter: str) -> Callable[[bytes], Any]:
    """The function turning one payload into a message payload; it raises `_Undecodable` with the reason."""
    if fmt == "raw":
        return bytes
    if fmt == "json":
        loads = make_loads()

        def decode_json(data: bytes) -> Any:
            try:
                return loads(data)
            except UnicodeDecodeError as exc:
                raise _Undecodable(f"invalid JSON: not UTF-8 ({exc.reason} at byte {exc.start})") from None
            except ValueError as exc:
                raise _Undecodable(f"invalid JSON: {exc}") from None

        return decode_json
    if fmt == "msgpack":
        import msgpack

        def decode_msgpack(data: bytes) -> Any:
            try:
                return msgpack.unpackb(data, raw=False, strict_map_key=False)
            except Exception as exc:  # msgpack raises several unrelated types for corrupt input
                raise _Undecodable(f"invalid msgpack: {type(exc).__name__}: {exc}") from None

        return decode_msgpack
    if fmt == "line":

        def decode_line(data: bytes) -> Any:
            try:
                text = data.decode()
            except UnicodeDecodeError as exc:
                raise _Undecodable(f"invalid UTF-8: {exc.reason} at byte {exc.start}") from None
            if text.endswith("\n"):
                text = text[:-2] if text.endswith("\r\n") else text[:-1]
            return {"line": text}

        return decode_line
    return _csv_decoder(columns, delimiter)


def _csv_decoder(columns: list[str] | None, delimiter: str) -> Callable[[bytes], Any]:
    width = len(columns) if columns is not None else 0

    def row_of(line: str) -> Any:
        try:
            fields = next(csv.reader((line,), delimiter=delimiter))
        except csv.Error as exc:
            raise _Undecodable(f"invalid CSV: {exc}") from None
        if columns is None:
            return fields
        if len(fields) != width:
            raise _Undecodable(f"expected {width} columns, got {len(fields)}")
        return dict(zip(columns, fields, strict=True))

    def decode_csv(data: bytes) -> Any:
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            raise _Undecodable(f"invalid UTF-8: {exc.reason} at byte {exc.start}") from None
        lines = [line for line in text.splitlines() if line]
        if len(lines) == 1:
            return row_of(lines[0])
        if not lines:
            raise _Undecodable("no CSV row in the payload")
        good: list[Any] = []
        bad: list[tuple[str, str]] = []
        for line in lines:
            try:
                good.append(row_of(line))
            except _Undecodable as exc:
                bad.append((line, str(exc)))
        return _Rows(good, bad)

    return decode_csv
