"""Messages received from the broker, and MQTT 5 properties as plain dictionaries.

An `InMessage` is created in the read callback for every PUBLISH and handed, in a batch, to the
handler of each matching subscription. For QoS 1 and 2 the broker's acknowledgement is manual: the
source calls `ack()` once the message is durable, and only then does the PUBACK (QoS 1) or PUBCOMP
(QoS 2) leave.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

if TYPE_CHECKING:
    from edgeflow.mqtt.routing import Router

__all__ = ["InMessage", "build_properties", "properties_to_dict"]

# Our snake_case names for the MQTT 5 PUBLISH properties, and paho's attribute names.
_TO_PAHO = {
    "payload_format_indicator": "PayloadFormatIndicator",
    "message_expiry_interval": "MessageExpiryInterval",
    "content_type": "ContentType",
    "response_topic": "ResponseTopic",
    "correlation_data": "CorrelationData",
    "user_properties": "UserProperty",
    "subscription_identifier": "SubscriptionIdentifier",
    "topic_alias": "TopicAlias",
}
_FROM_PAHO = {v: k for k, v in _TO_PAHO.items()}


def build_properties(values: Mapping[str, Any]) -> Properties:
    """Turn `{"content_type": ..., "message_expiry_interval": s, "user_properties": {...}}` into paho's form.

    Build once and reuse when the properties do not change per message: paho's `Properties` is costly
    to construct. `user_properties` takes a mapping or a list of (name, value) pairs. Raises
    `ValueError` naming an unknown key or a value the protocol refuses.
    """
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    for key, given in values.items():
        value = given
        name = _TO_PAHO.get(key)
        if name is None:
            raise ValueError(f"unknown MQTT 5 publish property {key!r}; known: {', '.join(_TO_PAHO)}")
        if key == "user_properties":
            pairs = value.items() if isinstance(value, Mapping) else value
            value = [(str(k), str(v)) for k, v in pairs]
        elif key == "correlation_data" and isinstance(value, str):
            value = value.encode()
        try:
            setattr(props, name, value)
        except Exception as exc:  # paho raises MQTTException or struct/type errors
            raise ValueError(f"invalid MQTT 5 property {key}={value!r}: {exc}") from None
    return props


def properties_to_dict(props: Properties | None) -> dict[str, Any] | None:
    """The properties present on a received message, under the names `build_properties` takes."""
    if props is None:
        return None
    out: dict[str, Any] = {}
    for paho_name, key in _FROM_PAHO.items():
        value = getattr(props, paho_name, None)
        if value is not None:
            out[key] = value
    return out


class InMessage:
    """One PUBLISH received on a subscription.

    `topic`, `payload`, `qos`, `retain`, `dup` (a redelivery), `mid` (the packet id, 0 for QoS 0) are
    plain attributes; `properties` (MQTT 5, else None) is converted on first access. `seq` numbers the
    messages of the connection in arrival order: a handler serving several subscriptions gets one
    batch per subscription from each read pass, and restores the arrival order with it.

    `ack()` must be called from the event loop thread. For QoS 1/2 it sends the PUBACK/PUBCOMP once
    every subscription the message was routed to has acknowledged it; for QoS 0 it does nothing. If the
    connection was lost since the message arrived, `ack()` does nothing: the broker redelivers a QoS 1
    message on the next connection of the persistent session (so the source sees it again, with `dup`
    set - at-least-once). Acknowledging twice is harmless.

    QoS 2 is weaker: the protocol hands the message over at PUBREC, which paho sends on receipt, so an
    unacknowledged QoS 2 message is not redelivered (only its PUBREL is, and answered). Sources that
    promise at-least-once across crashes subscribe at QoS 1.
    """

    __slots__ = ("_gen", "_pending", "_props", "_router", "dup", "mid", "payload", "qos", "retain", "seq", "topic")

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool,
        dup: bool,
        mid: int,
        props: Properties | None,
        router: Router,
        gen: int,
        seq: int = 0,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.mid = mid
        self._props: Properties | dict[str, Any] | None = props
        self._router = router
        self._gen = gen
        self._pending = 1
        self.seq = seq

    @property
    def properties(self) -> dict[str, Any] | None:
        props = self._props
        if props is None or isinstance(props, dict):
            return props
        converted = properties_to_dict(props)
        self._props = converted
        return converted

    def ack(self) -> None:
        if self.qos == 0:
            return
        self._pending -= 1
        if self._pending == 0:
            self._router.send_ack(self)

    def __repr__(self) -> str:
        return f"InMessage(topic={self.topic!r}, qos={self.qos}, mid={self.mid}, {len(self.payload)} bytes)"
