"""`[connections.NAME] type = "mqtt"`: one broker connection shared by every actor that names it.

The runtime builds it once (`MqttConnectionPlugin(name, config, node_id)`), awaits `start()` before any
actor starts, and `stop()` after the last one stopped. `start()` returns at once: a broker that is down
at boot is normal on a gateway, so the connection keeps trying in the background (capped, jittered
backoff, forever) and actors wait for it where they need it. Sources and sinks reach the shared
`MqttConnection` as `self.context.connections[name].conn`.

The protocol work is `edgeflow.mqtt`; this module maps the topology's keys onto `MqttSettings`, checks
them when the topology is validated (a bad URL or a TLS key without a mqtts:// URL is a problem with
file and line, not a crash), and reports the connection's state for `edgeflow status`.

Secrets: `password_file` and `password_env` are read when the topology is loaded (an unreadable file
is a validation problem); a rotated password takes effect at the next start of the runtime.
"""

from __future__ import annotations

from typing import Any, Literal

from edgeflow import Config, Duration, SecretEnv, SecretFile, field
from edgeflow.mqtt import MqttConnection, MqttSettings, Will

__all__ = ["MqttBackoffConfig", "MqttConnectionConfig", "MqttConnectionPlugin"]

_WEEK = 7 * 24 * 3600.0


class MqttBackoffConfig(Config):
    initial: Duration = field(0.2, doc="the first reconnect delay")
    max: Duration = field(30.0, doc="the longest reconnect delay (delays double up to it, jittered)")


class MqttConnectionConfig(Config):
    url: str = field(doc="mqtt://host:port, or mqtts://host:port for TLS", example="mqtt://127.0.0.1:1883")
    client_id: str | None = field(
        None, doc="stable id under which the broker keeps our session (default: node.id); unique per broker"
    )
    username: str | None = field(None, doc="user name to authenticate with")
    password_file: SecretFile = field(
        None, doc="a file holding the password (read at start; surrounding whitespace stripped)"
    )
    password_env: SecretEnv = field(None, doc="an environment variable holding the password")
    protocol: Literal["5", "3.1.1"] = field("5", doc='MQTT version: "5" or "3.1.1"')
    keepalive: Duration = field(30.0, doc="ping interval; a broker silent for 1.5 times this is gone")
    clean_start: bool = field(False, doc="start a new session at every connect (loses what the broker kept)")
    session_expiry: Duration = field(_WEEK, doc="how long the broker keeps our session while we are away (MQTT 5)")
    ca_file: str | None = field(None, doc="CA certificates (PEM) to verify the broker (default: the system's)")
    cert_file: str | None = field(None, doc="client certificate (PEM) for mutual TLS")
    key_file: str | None = field(None, doc="the client certificate's key (PEM)")
    tls_insecure: bool = field(False, doc="skip the host name check (the certificate chain is still verified)")
    receive_maximum: int | None = field(
        None, ge=1, le=65535, doc="QoS 1/2 messages the broker may send us unacknowledged (MQTT 5; default: its own)"
    )
    max_inflight: int = field(100, ge=1, le=65535, doc="QoS 1/2 publishes awaiting their acknowledgement at once")
    backoff: MqttBackoffConfig = field(default_factory=MqttBackoffConfig, doc="reconnect delays")

    def __post_init__(self) -> None:
        # Every check MqttSettings makes, now, so that `edgeflow validate` reports it with the file.
        self.settings("validate")

    def settings(self, client_id: str, will: Will | None = None, birth: Will | None = None) -> MqttSettings:
        """The `MqttSettings` these keys describe; `ValueError` names what does not fit together."""
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give only one of password_file and password_env")
        return MqttSettings(
            url=self.url,
            client_id=client_id,
            username=self.username,
            password=self.password_file if self.password_file is not None else self.password_env,
            protocol=5 if self.protocol == "5" else 4,
            keepalive=max(1, round(self.keepalive)),
            clean_start=self.clean_start,
            session_expiry=round(self.session_expiry),
            receive_maximum=self.receive_maximum,
            ca_file=self.ca_file,
            cert_file=self.cert_file,
            key_file=self.key_file,
            tls_insecure=self.tls_insecure,
            will=will,
            birth=birth,
            backoff_initial=self.backoff.initial,
            backoff_max=self.backoff.max,
            max_inflight=self.max_inflight,
        )


class MqttConnectionPlugin:
    """An MQTT broker connection shared by the actors that name it (persistent session by default)."""

    Config = MqttConnectionConfig

    @staticmethod
    def identity(config: MqttConnectionConfig, node_id: str) -> tuple[str, ...]:
        """What must differ between two connections of one node: a broker takes a session away from
        the older of two clients with the same id, so they would keep disconnecting each other."""
        from edgeflow.mqtt.url import parse_broker_url

        address = parse_broker_url(config.url)
        return ("mqtt", address.host.lower(), str(address.port), config.client_id or node_id)

    def __init__(self, name: str, config: MqttConnectionConfig, node_id: str) -> None:
        self.name = name
        self.config = config
        self.client_id = config.client_id or node_id
        self.conn = MqttConnection(name, config.settings(self.client_id))
        self._started = False

    def set_presence(self, will: Will | None, birth: Will | None) -> None:
        """Node presence: `will` is published by the broker if we vanish, `birth` by us on every connect.

        Must be called before `start()` (the will is part of the CONNECT packet); raises `RuntimeError`
        after. With both set, a clean stop announces the will payload too.
        """
        if self._started:
            raise RuntimeError(f"mqtt[{self.name}]: presence must be set before the connection starts")
        self.conn = MqttConnection(self.name, self.config.settings(self.client_id, will, birth))

    async def start(self) -> None:
        """Start connecting in the background and return at once; failures are logged and retried."""
        self._started = True
        await self.conn.start()

    async def stop(self) -> None:
        """Disconnect cleanly within a few seconds; unacknowledged input is redelivered next session."""
        await self.conn.stop()

    @property
    def protocol(self) -> int:
        return self.conn.settings.protocol

    def status(self) -> dict[str, Any]:
        """State and counters for `edgeflow status` and the metrics (never a secret)."""
        doc: dict[str, Any] = {
            "type": "mqtt",
            "url": str(self.conn.settings.address),
            "client_id": self.client_id,
        }
        doc.update(self.conn.metrics)
        return doc

    def __repr__(self) -> str:
        return f"MqttConnectionPlugin({self.name!r}, {self.conn.settings.address}, {self.conn.state})"
