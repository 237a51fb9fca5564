"""One MQTT client, shared by every actor that names its connection, driven by the asyncio loop.

paho-mqtt does the protocol; this module does the I/O without paho's thread, as aiomqtt does: the
socket is registered with `loop.add_reader` (which calls `loop_read`), writes are flushed once per
loop iteration by `loop_write` (and through `loop.add_writer` only while the kernel buffer is full),
and a named housekeeping task calls `loop_misc` every second (keepalive pings, unacknowledged-ping
timeout) and expires unrouted messages. Everything paho calls back runs on the loop thread, except
the connection attempt itself.

Connecting: paho's `reconnect()` blocks (DNS, TCP connect, TLS handshake, each bounded by
`connect_timeout` except DNS), so each attempt runs in a short-lived daemon thread while the loop
leaves the client alone. A daemon thread rather than the default executor because a DNS lookup
cannot be interrupted: `stop()` abandons such a thread instead of waiting for it, and neither
interpreter exit nor `asyncio.run`'s executor shutdown waits for it either.

Reconnecting: forever, with capped, jittered, exponential backoff; the backoff resets once a
connection has lived 10 s (so two processes fighting over one client id do not spin). Every
failure is kept in `metrics["last_error"]` and logged once per distinct reason, at WARNING; repeats
go to DEBUG.

Reliability decisions:

- Inbound QoS 1/2 use paho's manual acknowledgement: the PUBACK (QoS 1) or PUBCOMP (QoS 2) leaves
  only when the source calls `InMessage.ack()`. paho answers a QoS 2 PUBLISH with PUBREC at once and
  hands the message over on PUBREL, keeping that state in memory: a crash between the two loses the
  message, so QoS 1 is what the at-least-once promise is built on. A PUBREL paho has no record of
  is answered (see `_PahoClient`), so such an exchange never holds a broker slot for good.
- Outbound QoS 1/2 messages that are in flight when the connection drops stay in paho's session and
  are sent again (DUP) after the reconnect; `publish()` keeps waiting across the outage rather than
  failing, so a sink neither loses nor needlessly duplicates them. Only `stop()` ends the wait, with
  `Retryable`: the sink keeps the message in its durable buffer and sends it again next time.
- Subscriptions live in the broker's session; see `edgeflow.mqtt.routing` for when they are sent
  and what happens to a message no subscription wants.

The inbound side (subscriptions, routing, batches, acks) is `routing.Router`; the outbound side (the
in-flight window, acknowledgements awaited) is `outbox.Outbox`. This module owns the socket and the
connection's life.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgeflow.errors import NotReady, Retryable
from edgeflow.mqtt.attempt import (
    SetupError,
    backoff_delay,
    describe_failure,
    early_close_hint,
    refusal_text,
    tls_context,
)
from edgeflow.mqtt.outbox import Batch, Outbox, Payload, PublishResult
from edgeflow.mqtt.routing import Router
from edgeflow.mqtt.settings import MqttSettings
from edgeflow.mqtt.subscription import Handler, Subscription, validate_filter

__all__ = ["MqttConnection"]

_log = logging.getLogger("edgeflow.mqtt")

_SEND_CHUNK = 65536  # bytes per send when several packets are queued
_PUBLISH = 0x30
_DISCONNECT = 0xE0
_RECV_CHUNK = 65536  # bytes per recv: paho's small reads are served from this
_NO_INFO = mqtt.MQTTMessageInfo(0)  # the `info` of received messages (paho's is for publishers only)
_new_message = object.__new__
_READ_BUDGET = 256  # packets per wake-up (~8 ms on a Pi-class CPU) before other callbacks get a turn
# While paused, reading goes on for our publishes' acknowledgements; the broker's messages read with
# them are kept. At most this many per allowance (a broker within our Receive Maximum sends fewer);
# past it, reading stops until the allowance is renewed after _PAUSED_READ_GRACE seconds.
_PAUSED_READ_ALLOWANCE = 512
_PAUSED_READ_GRACE = 0.5
_STABLE_AFTER = 10.0  # seconds a connection must live for the backoff to start again from the beginning
_STOP_TIMEOUT = 2.0  # per step of a clean stop: the offline announcement, then the DISCONNECT


class _PahoClient(mqtt.Client):
    """paho's client, answering a PUBREL it does not know, and cheaper per received message.

    With manual acknowledgement paho ignores a PUBREL whose QoS 2 message it has no record of (it
    already handed it over, or a previous process did); the broker then keeps that packet id in flight
    for good, re-sending the PUBREL on every reconnect, and each such id takes one slot of its
    in-flight window for this client. Completing the exchange (PUBCOMP) is always correct here: the
    message was delivered to the application in an earlier exchange.

    Two costs of paho's receive path are cut (scripts/bench_mqtt.py measured ~20 us of ~48 us CPU per
    relayed message at QoS 0 on the benchmark box): paho reads each packet with 3+ `recv` calls (the
    command byte, each remaining-length byte, the body), so `_sock_recv` reads 64 KiB at a time and
    serves those reads from memory (`pending_bytes` says what is held there, unseen by the selector);
    and for a QoS 0/1 PUBLISH without MQTT 5 properties `_handle_publish` decodes the packet itself
    instead of building an empty `Properties` object (costly in paho) and walking the topic matcher of
    `message_callback_add` (unused here). Anything else (QoS 2, properties, paho's logging on) takes
    paho's own path.
    """

    _rbuf = b""  # bytes read from the socket and not yet handed to paho
    _rpos = 0

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        """Read at most `max_packets` packets (paho reads one more per message in flight, whatever is
        asked: thousands per call while publishing, which would defeat the caller's budget and pause)."""
        for _ in range(max_packets):
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                break
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def pending_bytes(self) -> int:
        """Bytes already read from the socket that paho has not consumed yet."""
        return len(self._rbuf) - self._rpos

    def _sock_recv(self, bufsize: int) -> bytes:
        buf = self._rbuf
        pos = self._rpos
        if pos < len(buf):
            end = min(pos + bufsize, len(buf))
            self._rpos = end
            return buf[pos:end]
        # Raises BlockingIOError when there is nothing, returns b"" at EOF: paho handles both.
        data = super()._sock_recv(max(bufsize, _RECV_CHUNK))
        if len(data) <= bufsize:
            return data
        self._rbuf = data
        self._rpos = bufsize
        return data[:bufsize]

    def _packet_write(self) -> MQTTErrorCode:
        # paho sends each queued packet with its own send(): join them (up to _SEND_CHUNK) into one.
        out = self._out_packet
        if len(out) < 2:
            return super()._packet_write()
        on_publish = self.on_publish
        while out:
            chunks: list[bytes | bytearray] = []
            size = 0
            for p in out:
                cmd = p["command"] & 0xF0
                # paho does more after writing these (a disconnect; on_publish for QoS 0): its way.
                if cmd == _DISCONNECT or (on_publish is not None and cmd == _PUBLISH and p["qos"] == 0):
                    if chunks:
                        break
                    return super()._packet_write()
                chunks.append(p["packet"] if p["pos"] == 0 else p["packet"][p["pos"] :])
                size += p["to_process"]
                if size >= _SEND_CHUNK:
                    break
            try:
                sent = self._sock_send(b"".join(chunks))
            except BlockingIOError:
                return MQTTErrorCode.MQTT_ERR_AGAIN
            except (AttributeError, ValueError):  # no socket any more, as paho's own loop treats it
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            except OSError:
                return MQTTErrorCode.MQTT_ERR_CONN_LOST
            while sent > 0:
                p = out[0]
                left = p["to_process"]
                if sent < left:
                    p["pos"] += sent
                    p["to_process"] = left - sent
                    break
                out.popleft()
                sent -= left
                p["pos"] += left
                p["to_process"] = 0
                info = p["info"]
                if (p["command"] & 0xF0) == _PUBLISH and p["qos"] == 0 and info is not None:
                    info._set_as_published()
            with self._msgtime_mutex:
                self._last_msg_out = time.monotonic()
            if out and out[0]["pos"]:
                return MQTTErrorCode.MQTT_ERR_AGAIN  # the kernel took part of it: go on once writable
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _sock_close(self) -> None:
        self._rbuf = b""  # what is left belongs to the connection being closed
        self._rpos = 0
        super()._sock_close()

    def _handle_publish(self) -> MQTTErrorCode:
        header = self._in_packet["command"]
        packet = self._in_packet["packet"]
        qos = (header & 0x06) >> 1
        n = len(packet)
        if qos == 2 or n < 2 or self._logger is not None or self.on_log is not None:
            return super()._handle_publish()
        topic_len = (packet[0] << 8) | packet[1]
        pos = 2 + topic_len
        mid = 0
        if qos:
            if n < pos + 2:
                return super()._handle_publish()
            mid = (packet[pos] << 8) | packet[pos + 1]
            pos += 2
        if self._protocol == mqtt.MQTTv5:
            if n <= pos or packet[pos] != 0:
                return super()._handle_publish()  # properties follow (or a malformed packet): paho's way
            pos += 1
        if topic_len == 0:
            return super()._handle_publish()  # empty topic: an MQTT 5 alias (with properties) or malformed
        # Not MQTTMessage(): its __init__ builds an MQTTMessageInfo with a threading.Condition, which
        # only publishers wait on. The attributes are those paho sets; `info` is a shared dummy.
        message = _new_message(mqtt.MQTTMessage)
        message.timestamp = 0.0
        message.state = mqtt.mqtt_ms_invalid
        message.mid = mid
        message._topic = bytes(packet[2 : 2 + topic_len])
        message.payload = bytes(packet[pos:])
        message.qos = qos
        message.retain = bool(header & 0x01)
        message.dup = bool(header & 0x08)
        message.info = _NO_INFO
        message.properties = None
        on_message = self.on_message
        if on_message is not None:
            with self._in_callback_mutex:
                on_message(self, self._userdata, message)
        if qos == 1 and not self._manual_ack:
            return self._send_puback(mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_pubrel(self) -> MQTTErrorCode:
        packet = self._in_packet["packet"]
        mid = int.from_bytes(packet[:2], "big") if len(packet) >= 2 else 0
        known = mid in self._in_messages
        rc = super()._handle_pubrel()
        if not known and mid and rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            return self._send_pubcomp(mid)
        return rc


class MqttConnection:
    """A named broker connection: `start()` it once, share it, `stop()` it once.

    All methods must be called from the event loop that ran `start()`. `state` is one of `new`,
    `connecting`, `connected`, `disconnected` (waiting to retry), `stopping`, `stopped`.
    """

    def __init__(self, name: str, settings: MqttSettings) -> None:
        self.name = name
        self.settings = settings
        self.client_id = settings.client_id_for(name)
        self._label = f"mqtt[{name}]"
        self._client: _PahoClient = self._make_client()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._misc_task: asyncio.Task[None] | None = None
        self._state = "new"
        self._stopping = False
        self._stopped = asyncio.Event()
        # Connection
        self._connected = False
        self._connected_event = asyncio.Event()  # set while connected, and for good once stopping
        self._connected_at = 0.0
        self._session_present = False
        self._connack: asyncio.Future[str | None] | None = None
        self._lost: asyncio.Future[str] | None = None
        self._thread_busy = False
        self._tls_ready = False
        self._early_error: str | None = None
        # Socket registration
        self._fd = -1
        self._reading = False  # the socket is registered for reading
        self._pausers: set[object] = set()  # who asked for a pause (see pause_reading)
        self._paused_limit = 0  # while paused: router.messages_in up to which reading for acks may go
        self._grace: asyncio.TimerHandle | None = None  # renews that allowance
        self._writer_added = False
        self._flush_scheduled = False
        self._router = Router(self._client, self._label, settings.unrouted_grace, self._record_error)
        self._outbox = Outbox(self._client, settings.max_inflight, settings.protocol, self._wait_usable)
        self._outbox.on_busy_change = self._update_reader
        self._client.on_message = self._router.on_message
        self._client.on_subscribe = self._router.on_subscribe
        # Metrics
        self._connects = 0
        self._disconnects = 0
        self._connect_failures = 0
        self._last_error: str | None = None
        self._logged_error: str | None = None

    # --- public face ------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def state(self) -> str:
        return self._state

    @property
    def metrics(self) -> dict[str, Any]:
        """A snapshot of the connection's counters and state, for the metrics and control topics."""
        return {
            "state": self._state,
            "connected": self._connected,
            "session_present": self._session_present,
            "connects": self._connects,
            "disconnects": self._disconnects,
            "connect_failures": self._connect_failures,
            "last_error": self._last_error,
            "messages_in": self._router.messages_in,
            "messages_out": self._outbox.messages_out,
            "inflight": self._outbox.inflight,
            "unrouted": self._router.unrouted,
            "handler_errors": self._router.handler_errors,
        }

    async def start(self) -> None:
        """Start connecting in the background and return at once (see `wait_connected`).

        Raises `RuntimeError` if called twice. Settings problems were caught when the settings were
        built; everything else (broker down, bad password, untrusted certificate) is retried forever.
        """
        if self._run_task is not None or self._stopping:
            raise RuntimeError(f"{self._label} was already started")
        loop = asyncio.get_running_loop()
        self._loop = loop
        s = self.settings
        props = None
        if s.protocol == 5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = s.session_expiry
            if s.receive_maximum is not None:
                props.ReceiveMaximum = s.receive_maximum
        self._client.connect_async(
            s.address.host,
            s.address.port,
            s.keepalive,
            clean_start=s.clean_start if s.protocol == 5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=props,
        )
        if logging.getLogger("edgeflow.mqtt.paho").isEnabledFor(logging.DEBUG):
            self._client.enable_logger(logging.getLogger("edgeflow.mqtt.paho"))
        self._run_task = loop.create_task(self._run(), name=f"edgeflow[{self._label}].connect")
        self._misc_task = loop.create_task(self._housekeeping(), name=f"edgeflow[{self._label}].misc")

    async def wait_connected(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - says why
        """Return once connected; raise `NotReady` (with the last error) after `timeout` seconds.

        Raises `Retryable` if the connection is stopped meanwhile.
        """
        try:
            async with asyncio.timeout(timeout):
                while not self._connected:
                    await self._wait_usable()
        except TimeoutError:
            why = f": {self._last_error}" if self._last_error else ""
            raise NotReady(f"{self._label} not connected to {self.settings.address} after {timeout}s{why}") from None

    async def stop(self) -> None:
        """Disconnect cleanly and release everything, within a few seconds whatever the network does.

        With node presence configured (`birth` and `will`), the will payload is announced first (MQTT 5:
        a DISCONNECT asking the broker to publish the will; 3.1.1: an ordinary publish), since a clean
        disconnect does not trigger the will. Publishes still waiting fail with `Retryable`; inbound
        messages not yet acknowledged are redelivered by the broker to the next session. Idempotent.
        """
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        self._set_state("stopping")
        self._connected_event.set()  # wakes whoever waits for the connection: they raise Retryable
        self._outbox.close(self._stopped_error())
        tasks = [t for t in (self._run_task, self._misc_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            if self._connected:
                await self._leave_cleanly()
        finally:
            if self._grace is not None:
                self._grace.cancel()
                self._grace = None
            self._discard_socket("stopped")
            self._outbox.stop(self._stopped_error())
            self._set_state("stopped")
            self._stopped.set()

    def pause_reading(self, owner: object) -> None:
        """Stop reading the socket until `resume_reading(owner)`: TCP backpressure to the broker.

        For a subscriber that cannot keep up: the broker then holds what it has not sent (or drops
        QoS 0 by its own policy) instead of this process. Reading goes on while a keepalive answer is
        due, and while a QoS 1/2 publish awaits its acknowledgement, so that a pause neither loses the
        connection nor blocks a sink on it; the broker's messages read meanwhile are delivered as
        usual. A broker within our Receive Maximum sends few of those; one that is not (mosquitto
        2.0.11 overshoots it when acknowledgements come in bursts) would fill memory, so after
        `_PAUSED_READ_ALLOWANCE` such messages reading stops, and resumes for another allowance
        `_PAUSED_READ_GRACE` seconds later if the pause still holds.
        """
        if not self._pausers:
            self._paused_limit = self._router.messages_in + _PAUSED_READ_ALLOWANCE
        self._pausers.add(owner)
        self._update_reader()

    def resume_reading(self, owner: object) -> None:
        """Withdraw `owner`'s pause; reading resumes once no one else holds one. Cheap when not paused."""
        if owner in self._pausers:
            self._pausers.discard(owner)
            self._update_reader()

    def _update_reader(self) -> None:
        if self._fd < 0:
            return
        want = not self._pausers or self._client._ping_t > 0 or self._read_for_acks()
        if want and not self._reading:
            self._reading = True
            loop = self._require_loop()
            loop.add_reader(self._fd, self._on_readable)
            loop.call_soon(self._read_more)  # bytes may wait in paho's buffer, unseen by the selector
        elif not want and self._reading:
            self._reading = False
            self._require_loop().remove_reader(self._fd)

    def _read_for_acks(self) -> bool:
        """Paused: whether to read on for the acknowledgements of our publishes (see `pause_reading`)."""
        if self._outbox.inflight == 0:
            return False
        if self._router.messages_in < self._paused_limit:
            return True
        if self._grace is None:
            self._grace = self._require_loop().call_later(_PAUSED_READ_GRACE, self._renew_allowance)
        return False

    def _renew_allowance(self) -> None:
        self._grace = None
        self._paused_limit = self._router.messages_in + _PAUSED_READ_ALLOWANCE
        self._update_reader()

    def subscribe(self, topic_filter: str, qos: int, handler: Handler) -> Subscription:
        """Deliver messages matching `topic_filter` (wildcards, `$share/<group>/...`) to `handler`.

        Returns at once; the SUBSCRIBE goes out now if connected, else on the next connect (see
        `Subscription.wait_active`). The handler gets a batch per read pass, on the loop; several
        subscriptions may match one message, which is then acknowledged once all of them acked it.
        Raises `ValueError` for a malformed filter or QoS, `Retryable` once stopped.
        """
        validate_filter(topic_filter)
        _check_qos(qos)
        if self._stopping:
            raise self._stopped_error()
        return self._router.subscribe(topic_filter, qos, handler)

    async def publish(
        self,
        topic: str,
        payload: Payload,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | Mapping[str, Any] | None = None,
    ) -> None:
        """Publish one message; wait for the connection if there is none.

        QoS 0 returns once the message is queued for the socket (sent at the end of this loop
        iteration). QoS 1/2 returns once the PUBACK/PUBCOMP arrived, waiting for a free slot of the
        in-flight window first. `properties` (MQTT 5) is a mapping as `build_properties` takes, or its
        result (cheaper when reused). Raises `Retryable` if stopped before the broker acknowledged, or
        if the broker answered with a transient failure (quota exceeded); `Permanent` if the message
        itself is refused (invalid topic, not authorized, too large).
        """
        _check_qos(qos)
        outbox = self._outbox
        props = outbox.properties(properties)
        if qos == 0:
            while not outbox.publish0(topic, payload, retain, props):
                await self._wait_usable()
            return
        batch = Batch(1)
        await outbox.send(batch, 0, topic, payload, qos, retain, props)
        if batch.remaining:
            await batch.future
        error = batch.results[0]
        if error is not None:
            raise error

    def publish_nowait(
        self,
        topic: str,
        payload: Payload,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> bool:
        """QoS 0 fast path: queue the message if connected and return True, else return False at once.

        Raises `Permanent` for a topic or payload paho refuses.
        """
        return self._outbox.publish0(topic, payload, retain, properties)

    async def publish_many(
        self,
        items: Iterable[tuple[str, Payload]],
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | Mapping[str, Any] | None = None,
    ) -> list[PublishResult]:
        """Publish (topic, payload) pairs and wait until the broker acknowledged all of them.

        One wait for the whole batch instead of one per message. Returns, in order, None for each
        acknowledged message and `Retryable`/`Permanent` for each that was not (see `publish`), so a
        sink can delete, retry or dead-letter each one. Waits for the connection and for free slots of
        the in-flight window as needed.
        """
        _check_qos(qos)
        outbox = self._outbox
        props = outbox.properties(properties)
        pairs = list(items)
        if qos == 0:
            for topic, payload in pairs:
                while not outbox.publish0(topic, payload, retain, props):
                    await self._wait_usable()
            return [None] * len(pairs)
        if not pairs:
            return []
        batch = Batch(len(pairs))
        for index, (topic, payload) in enumerate(pairs):
            await outbox.send(batch, index, topic, payload, qos, retain, props)
        if batch.remaining:
            await batch.future
        return batch.results

    def __repr__(self) -> str:
        return f"MqttConnection({self.name!r}, {self.settings.address}, {self._state})"

    # --- the connect/reconnect loop ---------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, wait until the connection is lost, back off, repeat; until cancelled by `stop()`."""
        attempt = 0
        address = self.settings.address
        while True:
            self._set_state("connecting")
            accepted, reason = await self._connect_once()
            loop = self._require_loop()
            if accepted:
                if loop.time() - self._connected_at >= _STABLE_AFTER:
                    attempt = 0
                _log.warning("%s: connection to %s lost: %s; reconnecting", self._label, address, reason)
            else:
                self._connect_failures += 1
                self._last_error = reason
                repeated = reason == self._logged_error
                self._logged_error = reason
                _log.log(
                    logging.DEBUG if repeated else logging.WARNING,
                    "%s: cannot connect to %s: %s; retrying with backoff (up to %gs)",
                    self._label,
                    address,
                    reason,
                    self.settings.backoff_max,
                )
            delay = backoff_delay(attempt, self.settings.backoff_initial, self.settings.backoff_max)
            attempt += 1
            self._set_state("disconnected")
            await asyncio.sleep(delay)

    async def _connect_once(self) -> tuple[bool, str]:
        """One attempt; returns (False, why) if no session was established, else (True, why it ended)."""
        loop = self._require_loop()
        self._connack = loop.create_future()
        self._lost = loop.create_future()
        # Until CONNACK, paho's error log lines are the only account of why a connection died (a TLS
        # alert, a reset): listen to them then, and only then, as paho formats every line it logs.
        self._early_error = None
        self._client.on_log = self._on_log
        try:
            await self._in_thread(self._connect_blocking)
        except Exception as exc:
            return False, describe_failure(exc, self.settings)
        self._attach_socket()
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                refusal = await self._connack
        except TimeoutError:
            refusal = f"no CONNACK from {self.settings.address} within {self.settings.connect_timeout:g}s"
        finally:
            self._client.on_log = None
        if refusal is not None:
            self._discard_socket(refusal)
            return False, refusal
        return True, await self._lost

    def _connect_blocking(self) -> None:
        """Runs in the connect thread: read secrets, set up TLS once, open the socket, queue CONNECT."""
        s = self.settings
        client = self._client
        try:
            password = s.read_password()
        except (OSError, LookupError) as exc:
            raise SetupError(str(exc)) from None
        if s.username is not None or password is not None:
            client.username_pw_set(s.username, password)
        if s.address.tls and not self._tls_ready:
            client.tls_set_context(tls_context(s))
            self._tls_ready = True
        client.reconnect()

    def _in_thread(self, work: Callable[[], None]) -> asyncio.Future[None]:
        """Run `work` in a daemon thread; the future settles on the loop when it is done.

        If nobody waits any more when it finishes (the attempt was cancelled by `stop()`), the socket
        it opened is closed.
        """
        loop = self._require_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._thread_busy = True

        def finish(error: BaseException | None) -> None:
            self._thread_busy = False
            if future.done() or self._stopping:
                self._discard_socket("stopped")
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        def target() -> None:
            error: BaseException | None = None
            try:
                work()
            except BaseException as exc:
                error = exc
            try:
                loop.call_soon_threadsafe(finish, error)
            except RuntimeError:  # the loop is closed: nobody will ever read this socket
                sock = self._client.socket()
                if sock is not None:
                    sock.close()

        threading.Thread(target=target, name=f"edgeflow[{self._label}].connect", daemon=True).start()
        return future

    async def _leave_cleanly(self) -> None:
        """Announce the will payload if presence is on, send DISCONNECT, wait (bounded) for the close."""
        s = self.settings
        loop = self._require_loop()
        reason: ReasonCode | None = None
        if s.will is not None and s.birth is not None:
            if s.protocol == 5:
                reason = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")
            else:
                await self._announce_offline()
        lost = self._lost = loop.create_future()
        if self._client.disconnect(reasoncode=reason) == MQTTErrorCode.MQTT_ERR_SUCCESS:
            try:
                async with asyncio.timeout(_STOP_TIMEOUT):
                    await lost
            except TimeoutError:
                _log.warning("%s: the broker did not take our DISCONNECT in time; closing", self._label)

    async def _announce_offline(self) -> None:
        """MQTT 3.1.1 has no "disconnect with will": publish the will payload ourselves, bounded."""
        will = self.settings.will
        assert will is not None
        if will.qos == 0:
            self._client.publish(will.topic, will.payload, 0, will.retain)
            return
        batch = Batch(1)
        self._outbox.send_now(batch, will.topic, will.payload, will.qos, will.retain)
        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                await batch.future
        except TimeoutError:
            _log.warning("%s: the offline status was not acknowledged in time", self._label)

    # --- socket plumbing --------------------------------------------------------------------------

    def _attach_socket(self) -> None:
        """After the connect thread: watch the new socket and send what paho queued (CONNECT)."""
        sock = self._client.socket()
        if sock is None:
            return
        self._fd = sock.fileno()
        if isinstance(sock, socket.socket):  # ssl.SSLSocket is one too
            # paho leaves Nagle on: a lone PUBACK or PUBLISH then waits for the previous segment's ACK.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._require_loop().add_reader(self._fd, self._on_readable)
        self._reading = True
        self._update_reader()  # a pause asked for before this connection still holds
        if self._client.want_write():
            self._schedule_flush()

    def _discard_socket(self, reason: str) -> None:
        """Close the socket now, whatever state it is in, and treat the connection as gone."""
        if self._client.socket() is not None:
            # paho 2.x has no public "close now"; _sock_close() fires on_socket_close and nothing else.
            self._client._sock_close()
        self._mark_down(reason)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._fd >= 0:
            loop = self._require_loop()
            if self._reading:
                loop.remove_reader(self._fd)
                self._reading = False
            if self._writer_added:
                loop.remove_writer(self._fd)
                self._writer_added = False
            self._fd = -1

    def _on_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # From the connect thread (CONNECT queued) the loop is not ours to touch: _attach_socket flushes.
        if not self._thread_busy:
            self._schedule_flush()

    def _on_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._writer_added:
            self._require_loop().remove_writer(self._fd)
            self._writer_added = False

    def _schedule_flush(self) -> None:
        # One loop_write per loop iteration, however many packets were queued during it.
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._require_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._fd < 0:
            return
        try:
            self._client.loop_write()
        except Exception:
            _log.exception("%s: internal error while writing", self._label)
            self._discard_socket("internal error while writing")
            return
        if self._fd >= 0 and self._client.want_write() and not self._writer_added:
            # The kernel buffer is full: finish when the socket is writable (paho unregisters us then).
            self._require_loop().add_writer(self._fd, self._on_writable)
            self._writer_added = True

    def _on_writable(self) -> None:
        try:
            self._client.loop_write()
        except Exception:
            _log.exception("%s: internal error while writing", self._label)
            self._discard_socket("internal error while writing")

    def _on_readable(self) -> None:
        """Read every complete packet available, then hand each subscription its batch."""
        client = self._client
        try:
            for _ in range(_READ_BUDGET):
                # loop_read() handles one packet when nothing is in flight and says "success" whether
                # or not the socket had data; paho replaces _in_packet after each complete packet, so
                # an unchanged one means the socket is drained (or mid-packet).
                marker = client._in_packet
                if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS or client._in_packet is marker:
                    break
            else:
                self._require_loop().call_soon(self._read_more)
            if self._fd >= 0 and client.pending_bytes():
                # Read from the socket already, so the selector will not report it.
                self._require_loop().call_soon(self._read_more)
            elif self._fd >= 0 and self.settings.address.tls:
                sock = client.socket()
                # TLS may hold decrypted bytes the selector cannot see (a huge message read in parts).
                if isinstance(sock, ssl.SSLSocket) and sock.pending():
                    self._require_loop().call_soon(self._read_more)
        except Exception:
            _log.exception("%s: internal error while reading", self._label)
            self._discard_socket("internal error while reading")
        self._router.flush()
        if self._pausers and self._reading:
            self._update_reader()  # reading only for acknowledgements: the allowance may be spent

    def _read_more(self) -> None:
        if self._fd >= 0 and self._reading:
            self._on_readable()

    async def _housekeeping(self) -> None:
        """Once a second: paho's keepalive (PINGREQ, dead-connection detection); expire unrouted messages."""
        while True:
            await asyncio.sleep(1.0)
            if self._fd >= 0 and not self._thread_busy:
                try:
                    self._client.loop_misc()
                    self._update_reader()  # a PINGREQ went out: read its answer even while paused
                except Exception:
                    _log.exception("%s: internal error in keepalive", self._label)
                    self._discard_socket("internal error in keepalive")
            self._router.expire()

    # --- paho callbacks (loop thread) -------------------------------------------------------------

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        connack = self._connack
        if reason.is_failure:
            if connack is not None and not connack.done():
                connack.set_result(refusal_text(reason.getName()))
            return
        loop = self._require_loop()
        self._connected = True
        self._connected_at = loop.time()
        self._session_present = flags.session_present
        self._connects += 1
        self._outbox.connection_up(getattr(properties, "ReceiveMaximum", None) if properties else None)
        self._router.connection_up(flags.session_present)
        birth = self.settings.birth
        if birth is not None:
            client.publish(birth.topic, birth.payload, birth.qos, birth.retain)
        self._set_state("connected")
        self._connected_event.set()
        recovered = f" (after: {self._logged_error})" if self._logged_error else ""
        self._logged_error = None
        _log.info(
            "%s: connected to %s as %s, %s%s",
            self._label,
            self.settings.address,
            self.client_id,
            "session resumed" if flags.session_present else "new session",
            recovered,
        )
        if connack is not None and not connack.done():
            connack.set_result(None)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        name = reason.getName()
        if self._stopping:
            why = "stopped"
        elif flags.is_disconnect_packet_from_server:
            why = f"the broker closed the connection: {name}"
        elif name == "Keep alive timeout":
            why = "no answer from the broker within the keepalive"
        else:
            why = "the connection was closed"
        self._mark_down(why)

    def _on_log(self, client: mqtt.Client, userdata: Any, level: int, text: str) -> None:
        if level == mqtt.MQTT_LOG_ERR:  # may run in the connect thread: only a store
            self._early_error = text

    def _mark_down(self, why: str) -> None:
        if self._connected:
            self._connected = False
            self._disconnects += 1
            if not self._stopping:
                self._last_error = why
        self._router.connection_down()
        self._outbox.connection_down()
        if not self._stopping:
            self._connected_event.clear()
        connack = self._connack
        if connack is not None and not connack.done():
            early = self._early_error
            if early is not None:
                why = f"{why} before CONNACK: {early}{early_close_hint(early, self.settings)}"
            connack.set_result(why)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(why)

    async def _wait_usable(self) -> None:
        if self._stopping:
            raise self._stopped_error()
        await self._connected_event.wait()
        if self._stopping:
            raise self._stopped_error()

    def _record_error(self, text: str) -> None:
        self._last_error = text

    # --- helpers ----------------------------------------------------------------------------------

    def _make_client(self) -> _PahoClient:
        s = self.settings
        client = _PahoClient(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=None if s.protocol == 5 else s.clean_start,
            protocol=mqtt.MQTTv5 if s.protocol == 5 else mqtt.MQTTv311,
            reconnect_on_failure=False,
            manual_ack=True,
        )
        client.connect_timeout = s.connect_timeout
        # Our own window (max_inflight, lowered to the broker's Receive Maximum) decides what is sent;
        # paho then sends at once, and after a reconnect re-sends all it holds.
        client.max_inflight_messages_set(0)
        if s.will is not None:
            client.will_set(s.will.topic, s.will.payload, s.will.qos, s.will.retain)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        return client

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            raise RuntimeError(f"{self._label} is not started")
        return loop

    def _set_state(self, state: str) -> None:
        if state != self._state:
            _log.debug("%s: %s -> %s", self._label, self._state, state)
            self._state = state

    def _stopped_error(self) -> Retryable:
        return Retryable(f"{self._label} is stopped")


def _check_qos(qos: int) -> None:
    if qos not in (0, 1, 2):
        raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")
