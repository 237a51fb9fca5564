"""The inbound side of a connection: subscriptions, routing by topic, batches, acknowledgements.

paho calls `on_message` for every PUBLISH during a read pass; the message is routed (one dict lookup
per message once a topic has been seen) and appended to the batch of every matching subscription.
After the pass the connection calls `flush()`, and each handler runs once with its batch.

Subscriptions are kept in the broker's session: on every connect where the session was not resumed
(and once per process in any case) they are sent again. A message matching no subscription is held,
unacknowledged, for `unrouted_grace` seconds in case its subscriber registers just after the connection
came up, then acknowledged and dropped, counted in `unrouted` (a subscription left in the persistent
session by an earlier configuration). A message matching a filter whose subscriber closed without
unsubscribing (an actor stopped or restarting: it will be back) is held, unacknowledged, for as long
as it takes: dropping it would lose it, and the broker's in-flight window bounds how many wait.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, cast

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgeflow.mqtt.inmessage import InMessage
from edgeflow.mqtt.subscription import Handler, Subscription

__all__ = ["Router"]

_log = logging.getLogger("edgeflow.mqtt")

_ROUTE_CACHE_MAX = 4096
_EMPTY_PROPERTIES = 4  # attributes of a paho Properties object that holds no property
_UNROUTED_LOG_MAX = 100  # distinct topics logged as unrouted, then silence (the counter goes on)
_PUBACK = 0x40
_PUBACK_WORD = (_PUBACK << 24) | (2 << 16)  # a PUBACK as a big-endian word: type, length 2, packet id


class Router:
    """Inbound state of one connection. Everything runs on the event loop thread."""

    def __init__(self, client: mqtt.Client, label: str, unrouted_grace: float, on_error: Callable[[str], None]) -> None:
        self._client = client
        self._label = label
        self._grace = unrouted_grace
        self._on_error = on_error
        self.gen = 0  # counts accepted connections; an ack for a message of an older one is not sent
        self.up = False
        self.messages_in = 0
        self.unrouted = 0
        self.handler_errors = 0
        self._subs: list[Subscription] = []
        self._routes: dict[str, tuple[Subscription, ...]] = {}
        self._touched: list[Subscription] = []
        self._granted: dict[str, int] = {}  # held by the broker's session: filter -> requested qos
        self._requests: dict[int, list[tuple[str, int]]] = {}  # SUBSCRIBE mid -> what it asked for
        self._parked: deque[tuple[float, InMessage]] = deque()
        self._unrouted_logged: set[str] = set()
        self._kept: set[str] = set()  # filters closed without unsubscribing: their subscriber comes back
        self._pubacks: list[int] = []  # QoS 1 packet ids acknowledged since the last flush_acks()

    # --- driven by the connection -----------------------------------------------------------------

    def subscribe(self, topic_filter: str, qos: int, handler: Handler) -> Subscription:
        sub = Subscription(self, topic_filter, qos, handler)
        self._subs.append(sub)
        self._routes.clear()
        if self.up:
            if self._granted.get(topic_filter, -1) >= qos:
                sub._active.set()
            else:
                self._send_subscribe([(topic_filter, self._wanted_qos(topic_filter))])
            if self._parked:
                asyncio.get_running_loop().call_soon(self._deliver_parked)
        return sub

    def connection_up(self, session_present: bool) -> None:
        """After a successful CONNACK: (re)send what the broker's session lacks."""
        self.gen += 1
        self.up = True
        if not session_present:
            self._granted.clear()
        wanted: dict[str, int] = {}
        for sub in self._subs:
            wanted[sub.topic_filter] = max(sub.qos, wanted.get(sub.topic_filter, 0))
            if self._granted.get(sub.topic_filter, -1) >= sub.qos:
                sub._active.set()
        missing = [(f, q) for f, q in wanted.items() if self._granted.get(f, -1) < q]
        if missing:
            self._send_subscribe(missing)

    def connection_down(self) -> None:
        self.up = False
        self._pubacks.clear()  # the broker sends those messages again in the next session
        for sub in self._subs:
            sub._active.clear()
        self._parked.clear()  # unacknowledged: the broker sends them again in the next session
        self._requests.clear()

    def flush(self) -> None:
        """After a read pass: run each handler that has messages, once, with all of them."""
        if not self._touched:
            return
        touched = self._touched
        self._touched = []
        for sub in touched:
            batch = sub._batch
            sub._batch = []
            if sub.closed:  # closed by another handler of this same pass
                for m in batch:
                    self._park(m)
                continue
            try:
                sub.handler(batch)
            except Exception:
                self.handler_errors += 1
                _log.exception(
                    "%s: the handler of %r raised; its %d messages stay unacknowledged",
                    self._label,
                    sub.topic_filter,
                    len(batch),
                )

    def expire(self) -> None:
        """Once a second: give up on held messages whose grace is over."""
        if not self._parked:
            return
        now = asyncio.get_running_loop().time()
        if all(deadline > now for deadline, _ in self._parked):
            return
        keep: deque[tuple[float, InMessage]] = deque()
        for deadline, m in self._parked:
            if deadline <= now:
                self._drop_unrouted(m)
            else:
                keep.append((deadline, m))
        self._parked = keep

    # --- paho callbacks ---------------------------------------------------------------------------

    def on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            self.unrouted += 1
            if msg.qos:
                client.ack(msg.mid, msg.qos)
            _log.warning("%s: dropped a message whose topic is not UTF-8: %r", self._label, msg._topic)
            return
        props = msg.properties
        if props is not None and len(props.__dict__) <= _EMPTY_PROPERTIES:
            # Most messages carry none; keeping paho's empty object alive per message costs GC time.
            props = None
        self.messages_in += 1
        m = InMessage(
            topic,
            cast(bytes, msg.payload),
            msg.qos,
            msg.retain,
            msg.dup,
            msg.mid,
            props,
            self,
            self.gen,
            self.messages_in,
        )
        subs = self._routes.get(topic)
        if subs is None:
            subs = self._route(topic)
        if not subs:
            self._park(m)
            return
        if len(subs) > 1:
            m._pending = len(subs)
        touched = self._touched
        for sub in subs:
            batch = sub._batch
            if not batch:
                touched.append(sub)
            batch.append(m)

    def on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        requested = self._requests.pop(mid, None)
        if requested is None:
            return
        for (topic_filter, qos), reason in zip(requested, reasons, strict=False):
            mine = [s for s in self._subs if s.topic_filter == topic_filter]
            if reason.is_failure:
                text = f"the broker refused the subscription {topic_filter!r}: {reason.getName()}"
                _log.error("%s: %s", self._label, text)
                self._on_error(text)
                for sub in mine:
                    sub.error = text
                continue
            self._granted[topic_filter] = qos
            for sub in mine:
                if sub.qos <= qos:
                    sub.error = None
                    sub._active.set()

    # --- for InMessage and Subscription -----------------------------------------------------------

    def send_ack(self, m: InMessage) -> None:
        if m._gen != self.gen or not self.up:
            return
        if m.qos != 1:
            self._client.ack(m.mid, m.qos)
            return
        # Acknowledgements come in bursts (a commit settles thousands): one write for all of them
        # instead of paho's packet record and write request each.
        if not self._pubacks:
            asyncio.get_running_loop().call_soon(self.flush_acks)
        self._pubacks.append(m.mid)

    def flush_acks(self) -> None:
        """Queue the PUBACKs gathered since the last call, as one write (in the order acknowledged)."""
        mids = self._pubacks
        if not mids:
            return
        self._pubacks = []
        word = _PUBACK_WORD
        packet = struct.pack(f"!{len(mids)}I", *[word | mid for mid in mids])
        self._client._packet_queue(_PUBACK, packet, 0, 0)

    def give_back(self, messages: Iterable[InMessage]) -> None:
        """Messages a closed subscription's owner will not acknowledge: hold them for the next subscriber.

        Only QoS 1/2 messages of the current connection are held (the broker sends the others again
        on the next one; QoS 0 ones are simply gone).
        """
        held = False
        for m in messages:
            if m.qos and m._gen == self.gen and self.up:
                self._park(m)
                held = True
        if held and self._subs:
            asyncio.get_running_loop().call_soon(self._deliver_parked)

    def remove(self, sub: Subscription, unsubscribe: bool) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
        self._routes.clear()
        sub._active.clear()
        if not unsubscribe:
            self._kept.add(sub.match)
        elif not any(s.match == sub.match for s in self._subs):
            self._kept.discard(sub.match)
        if unsubscribe and not any(s.topic_filter == sub.topic_filter for s in self._subs):
            self._granted.pop(sub.topic_filter, None)
            if self.up:
                self._client.unsubscribe(sub.topic_filter)

    # --- internals --------------------------------------------------------------------------------

    def _route(self, topic: str) -> tuple[Subscription, ...]:
        subs = tuple(s for s in self._subs if mqtt.topic_matches_sub(s.match, topic))
        if len(self._routes) >= _ROUTE_CACHE_MAX:
            self._routes.clear()
        self._routes[topic] = subs
        return subs

    def _wanted_qos(self, topic_filter: str) -> int:
        return max(s.qos for s in self._subs if s.topic_filter == topic_filter)

    def _send_subscribe(self, pairs: list[tuple[str, int]]) -> None:
        rc, mid = self._client.subscribe(pairs)
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS and mid is not None:
            self._requests[mid] = pairs

    def _park(self, m: InMessage) -> None:
        """A message no subscription wants (yet): hold QoS 1/2 for the grace period, drop QoS 0."""
        if m.qos and any(mqtt.topic_matches_sub(f, m.topic) for f in self._kept):
            self._parked.append((math.inf, m))  # its subscriber is stopped or restarting: wait for it
        elif m.qos and self._grace > 0:
            self._parked.append((asyncio.get_running_loop().time() + self._grace, m))
        else:
            self._drop_unrouted(m)

    def _deliver_parked(self) -> None:
        """After a new subscription: hand the held messages it matches to it, in arrival order."""
        keep: deque[tuple[float, InMessage]] = deque()
        touched = self._touched
        for deadline, m in self._parked:
            subs = self._routes.get(m.topic)
            if subs is None:
                subs = self._route(m.topic)
            if not subs:
                keep.append((deadline, m))
                continue
            m._pending = len(subs)
            for sub in subs:
                if not sub._batch:
                    touched.append(sub)
                sub._batch.append(m)
        self._parked = keep
        self.flush()

    def _drop_unrouted(self, m: InMessage) -> None:
        self.unrouted += 1
        if m.qos:
            self.send_ack(m)  # nobody will take it: do not let it hold the broker's in-flight window
        if m.topic not in self._unrouted_logged and len(self._unrouted_logged) < _UNROUTED_LOG_MAX:
            self._unrouted_logged.add(m.topic)
            _log.warning(
                "%s: dropped a message on %r: no subscription matches it (a subscription left in the "
                "persistent session by an earlier configuration?)",
                self._label,
                m.topic,
            )
