"""`[sinks.X] type = "mqtt"`: publish each message to a topic rendered from it, over a shared connection.

Returning from `write` is the acknowledgement the runtime acts on (a persisting buffer deletes the
batch then), so at QoS 1/2 `write` returns only once the broker acknowledged every message of the batch
(PUBACK, PUBCOMP). The batch goes out through `publish_many`: sent back to back within the
connection's in-flight window (`max_inflight`, lowered to the broker's Receive Maximum) and awaited
once. Through an outage the connection keeps what is in flight and sends it again after reconnecting,
so `write` simply waits; the buffer (persisting by default) keeps the rest on disk meanwhile.

QoS 0 takes the fast path: each message is queued for the socket and `write` returns; it is lost if the
connection or the process dies before the bytes leave.

Failures, per message: a retryable one (quota exceeded, the connection stopping) makes the whole write
raise `Retryable`, so the runtime tries the batch again with backoff; a permanent one (not authorized,
too large, a topic the template cannot render) raises `Permanent`, and the runtime then writes the
messages one by one and dead-letters those that fail. Messages the broker already acknowledged in a
failed write are remembered and not published again when the runtime hands them back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from edgeflow import Config, ConnectionRef, Duration, Message, NotReady, Permanent, Retryable, Sink, Template, field

from .mqtt_connection import MqttConnectionPlugin

if TYPE_CHECKING:
    from paho.mqtt.properties import Properties

    from edgeflow.mqtt import MqttConnection

__all__ = ["MqttSink", "MqttSinkConfig"]


class MqttSinkConfig(Config):
    connection: ConnectionRef = field(doc="the [connections.NAME] (type mqtt) to publish through")
    topic: Template = field(doc="where to publish; a template: {field} from the payload, {meta.topic}...")
    qos: int = field(1, ge=0, le=2, doc="1 or 2: a message leaves the buffer only once the broker has it")
    retain: bool = field(False, doc="ask the broker to keep the last message of each topic for new subscribers")
    format: Literal["json", "msgpack", "raw"] = field(
        "json", doc='payload encoding: "json", "msgpack", "raw" (bytes as they are, text as UTF-8)'
    )
    content_type: str | None = field(None, doc="MQTT 5 content type property, e.g. application/json")
    message_expiry: Duration | None = field(None, doc="MQTT 5: the broker discards the message after this")
    user_properties: dict[str, str] = field(default_factory=dict, doc="MQTT 5 user properties of every message")


class MqttSink(Sink):
    """Publishes payloads to a templated topic; deletes from the buffer only what the broker acknowledged."""

    Config = MqttSinkConfig
    config: MqttSinkConfig
    persist_default = True
    #: Smaller than the default: a batch leaves the buffer only once all of it was acknowledged, so this
    #: bounds what a crash mid-batch sends twice; at loopback speed it costs no throughput.
    max_batch = 256

    async def on_start(self) -> None:
        cfg = self.config
        plugin = self._plugin()
        values: dict[str, Any] = {}
        if cfg.content_type is not None:
            values["content_type"] = cfg.content_type
        if cfg.message_expiry is not None:
            values["message_expiry_interval"] = max(1, round(cfg.message_expiry))
        if cfg.user_properties:
            values["user_properties"] = cfg.user_properties
        self._props: Properties | None = None
        if values:
            if plugin.protocol != 5:
                raise NotReady(
                    f"content_type, message_expiry and user_properties need MQTT 5; connection "
                    f"{cfg.connection!r} uses 3.1.1"
                )
            from edgeflow.mqtt import build_properties

            self._props = build_properties(values)
        self._encode = _encoder(cfg.format)
        self._acked: dict[int, Message] = {}  # id(message) -> message acknowledged in a write that then failed
        self.published = 0
        self.last_error: str | None = None

    def _plugin(self) -> MqttConnectionPlugin:
        plugin = self.context.connections.get(self.config.connection)
        if not isinstance(plugin, MqttConnectionPlugin):
            raise RuntimeError(f"connection {self.config.connection!r} is not an mqtt connection")
        return plugin

    async def write(self, batch: list[Message]) -> None:
        # Looked up per batch: a reload that changes the connection replaces the object in the dict.
        conn = self._plugin().conn
        acked = self._acked
        todo = [m for m in batch if acked.get(id(m)) is not m] if acked else batch
        render = self.config.topic
        encode = self._encode
        # Everything rendered and encoded before anything is sent: a Permanent here sends nothing.
        items = [(render(m.payload, m), encode(m.payload)) for m in todo]
        if self.config.qos == 0:
            await self._publish0(conn, todo, items)
        else:
            await self._publish(conn, todo, items)
        if acked:
            for m in batch:
                acked.pop(id(m), None)
        self.published += len(items)

    async def _publish0(self, conn: MqttConnection, todo: list[Message], items: list[tuple[str, bytes | str]]) -> None:
        retain, props = self.config.retain, self._props
        nowait = conn.publish_nowait
        for i, (topic, payload) in enumerate(items):
            try:
                if not nowait(topic, payload, retain, props):
                    await conn.publish(topic, payload, 0, retain, props)  # waits for the connection
            except Permanent:
                for m in todo[:i]:  # sent: not again when the runtime hands the batch back one by one
                    self._acked[id(m)] = m
                raise

    async def _publish(self, conn: MqttConnection, todo: list[Message], items: list[tuple[str, bytes | str]]) -> None:
        cfg = self.config
        results = await conn.publish_many(items, qos=cfg.qos, retain=cfg.retain, properties=self._props)
        failures = [(m, r) for m, r in zip(todo, results, strict=True) if r is not None]
        if not failures:
            return
        acked = self._acked
        for m, r in zip(todo, results, strict=True):
            if r is None:
                acked[id(m)] = m
        if len(acked) > 8 * self.max_batch:  # leftovers of batches the runtime gave up on (a stop)
            acked.clear()
        retry = [r for _, r in failures if isinstance(r, Retryable)]
        first = retry[0] if retry else failures[0][1]
        self.last_error = str(first)
        if retry:
            raise Retryable(f"{len(retry)} of {len(items)} messages not taken: {first}")
        raise Permanent(str(first))

    def status(self) -> dict[str, Any]:
        return {"published": getattr(self, "published", 0), "last_error": getattr(self, "last_error", None)}


def _encoder(fmt: str) -> Callable[[Any], bytes | str]:
    """The function turning a payload into the bytes (or UTF-8 text) to publish; `Permanent` if it cannot."""
    if fmt == "json":
        from edgeflow.jsoncodec import make_dumps

        dumps = make_dumps(default=_jsonable)

        def encode_json(payload: Any) -> bytes:
            try:
                return dumps(payload)
            except (ValueError, TypeError) as exc:
                raise Permanent(f"cannot encode the payload as JSON: {exc}") from None

        return encode_json
    if fmt == "msgpack":
        import msgpack

        pack = msgpack.Packer(use_bin_type=True).pack

        def encode_msgpack(payload: Any) -> bytes:
            try:
                data: bytes = pack(payload)
            except (TypeError, ValueError, OverflowError) as exc:
                raise Permanent(f"cannot encode the payload as msgpack: {exc}") from None
            return data

        return encode_msgpack

    def encode_raw(payload: Any) -> bytes | str:
        if isinstance(payload, bytes | str):
            return payload
        if isinstance(payload, bytearray | memoryview):
            return bytes(payload)
        raise Permanent(f'format "raw" publishes bytes or text, not {type(payload).__name__}')

    return encode_raw


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode(errors="replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
