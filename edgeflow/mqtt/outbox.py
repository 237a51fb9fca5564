"""The outbound side of a connection: the in-flight window and the acknowledgements awaited.

QoS 0 costs no future: the message is queued for the socket and forgotten. A QoS 1/2 message takes a
slot of the window (`max_inflight`, lowered to the broker's Receive Maximum) and a place in a `Batch`
whose one future resolves when the broker acknowledged every message of the call. paho keeps what is
in flight across a reconnect and re-sends it (DUP), so a batch waits through an outage; only `stop()`
settles what is still pending, with `Retryable`.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgeflow.errors import EdgeflowError, Permanent, Retryable
from edgeflow.mqtt.inmessage import build_properties

__all__ = ["Batch", "Outbox", "PublishResult"]

PublishResult = EdgeflowError | None
"""Per message of `publish_many`: None once acknowledged, else `Retryable` or `Permanent`."""

# PUBACK/PUBREC reason codes (MQTT 5) worth retrying: unspecified, implementation specific, quota exceeded.
_RETRYABLE_REASONS = frozenset({0x80, 0x83, 0x97})

Payload = bytes | bytearray | str


class Batch:
    """Acknowledgements awaited for the messages of one publish call; `future` resolves after the last."""

    __slots__ = ("future", "remaining", "results")

    def __init__(self, n: int) -> None:
        self.future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.remaining = n
        self.results: list[PublishResult] = [None] * n

    def settle(self, index: int, result: PublishResult) -> None:
        self.results[index] = result
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(None)


class Outbox:
    """Outbound state of one connection. Everything runs on the event loop thread.

    `wait_usable` is the connection's "wait until connected" (raising `Retryable` once stopped).
    """

    def __init__(
        self, client: mqtt.Client, max_inflight: int, protocol: int, wait_usable: Callable[[], Awaitable[None]]
    ) -> None:
        self._client = client
        self._max_inflight = max_inflight
        self._protocol = protocol
        self._wait_usable = wait_usable
        self.up = False
        self.window = max_inflight
        self.inflight = 0
        self.messages_out = 0
        self._pending: dict[int, tuple[Batch, int]] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Called when the first acknowledgement starts being awaited and when the last one arrived
        # (the connection must read the socket meanwhile, even if a source paused reading).
        self.on_busy_change: Callable[[], None] | None = None

    def connection_up(self, receive_maximum: int | None) -> None:
        self.up = True
        self.window = min(self._max_inflight, receive_maximum or self._max_inflight)

    def connection_down(self) -> None:
        self.up = False

    def close(self, error: Retryable) -> None:
        """Stopping: accept nothing more, fail whoever waits for a slot with `error`.

        Acknowledgements of what is in flight are still taken until `stop()`.
        """
        self.up = False
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self._waiters.clear()

    def stop(self, error: Retryable) -> None:
        """Stopped: settle every message still awaiting its acknowledgement with `error`."""
        self.close(error)
        for batch, index in self._pending.values():
            batch.settle(index, error)
        self._pending.clear()
        self.inflight = 0

    def properties(self, properties: Properties | Mapping[str, Any] | None) -> Properties | None:
        if properties is None or isinstance(properties, Properties):
            return properties
        if self._protocol != 5:
            raise ValueError("message properties need MQTT 5 (protocol = 5)")
        return build_properties(properties)

    def publish0(self, topic: str, payload: Payload, retain: bool, props: Properties | None) -> bool:
        """Queue a QoS 0 message if connected; False if not. `Permanent` if paho refuses it."""
        if not self.up:
            return False
        try:
            info = self._client.publish(topic, payload, 0, retain, props)
        except ValueError as exc:
            raise Permanent(f"cannot publish to {topic!r}: {exc}") from None
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        self.messages_out += 1
        return True

    async def send(
        self, batch: Batch, index: int, topic: str, payload: Payload, qos: int, retain: bool, props: Properties | None
    ) -> None:
        """Hand one QoS 1/2 message to paho once connected with a free slot; `batch` learns the outcome."""
        if not self.up or self.inflight >= self.window:
            await self._wait_slot()
        client = self._client
        self.inflight += 1
        if self.inflight == 1:
            client.on_publish = self.on_publish
            if self.on_busy_change is not None:
                self.on_busy_change()
        try:
            info = client.publish(topic, payload, qos, retain, props)
        except ValueError as exc:
            self._release_slot()
            batch.settle(index, Permanent(f"cannot publish to {topic!r}: {exc}"))
            return
        # NO_CONN cannot happen while connected, and would be fine: paho keeps it for the next session.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self._release_slot()
            batch.settle(index, Retryable(f"cannot publish to {topic!r}: {mqtt.error_string(info.rc)}"))
            return
        self._pending[info.mid] = (batch, index)

    def send_now(self, batch: Batch, topic: str, payload: Payload, qos: int, retain: bool) -> None:
        """Hand a QoS 1/2 message to paho at once, outside the window (the offline status at stop)."""
        self.inflight += 1
        if self.inflight == 1:
            self._client.on_publish = self.on_publish
        info = self._client.publish(topic, payload, qos, retain)
        self._pending[info.mid] = (batch, 0)

    def on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Properties
    ) -> None:
        """paho: PUBACK (QoS 1) or PUBCOMP (QoS 2) received, or a QoS 0 packet written."""
        entry = self._pending.pop(mid, None)
        if entry is None:
            return  # QoS 0, or not ours (the birth message)
        self._release_slot()
        batch, index = entry
        if reason.is_failure:
            batch.settle(index, _publish_error(reason))
        else:
            self.messages_out += 1
            batch.settle(index, None)

    async def _wait_slot(self) -> None:
        while True:
            if not self.up:
                await self._wait_usable()
                continue
            if self.inflight < self.window:
                return
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # we were woken but leave: pass the slot on
                raise

    def _release_slot(self) -> None:
        self.inflight -= 1
        if self.inflight == 0:
            # While on_publish is set paho builds two objects per QoS 0 packet it writes: keep it set
            # only while a QoS 1/2 acknowledgement is awaited.
            self._client.on_publish = None
            if self.on_busy_change is not None:
                self.on_busy_change()
        if self._waiters:
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return


def _publish_error(reason: ReasonCode) -> EdgeflowError:
    if reason.value in _RETRYABLE_REASONS:
        return Retryable(f"the broker did not take the message: {reason.getName()}")
    return Permanent(f"the broker refused the message: {reason.getName()}")
