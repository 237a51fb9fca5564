"""MQTT for edgeflow: one asyncio-driven paho client per `[connections.<name>]`, shared by actors.

`MqttConnection` owns the socket, the reconnect loop and the session; sources `subscribe` with a
batch handler and `ack()` each message once it is durable; sinks `publish`/`publish_many` and learn
when the broker acknowledged. See `edgeflow.mqtt.connection` for the design and its trade-offs.
"""

from edgeflow.mqtt.connection import MqttConnection
from edgeflow.mqtt.inmessage import InMessage, build_properties, properties_to_dict
from edgeflow.mqtt.outbox import PublishResult
from edgeflow.mqtt.settings import MqttSettings, Will
from edgeflow.mqtt.subscription import Handler, Subscription
from edgeflow.mqtt.url import BrokerAddress, parse_broker_url

__all__ = [
    "BrokerAddress",
    "Handler",
    "InMessage",
    "MqttConnection",
    "MqttSettings",
    "PublishResult",
    "Subscription",
    "Will",
    "build_properties",
    "parse_broker_url",
    "properties_to_dict",
]
