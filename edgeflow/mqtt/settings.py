"""What one MQTT connection needs: the broker, who we are, how we authenticate, how we retry.

`MqttSettings` is plain data, checked when it is built (a `ValueError` that names the key), so a
topology can be validated before anything connects. Secrets are never part of its `repr`; a password
file or environment variable is read at every connection attempt, so a rotated secret is picked up by
the next reconnect and a missing one is a logged, retried error rather than a crash.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from edgeflow.mqtt.url import BrokerAddress, parse_broker_url

__all__ = ["MqttSettings", "Will"]

_WEEK = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Will:
    """A message the broker publishes for us: the last will (on an unexpected loss) or the birth message."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True

    def __post_init__(self) -> None:
        if not self.topic or "+" in self.topic or "#" in self.topic:
            raise ValueError(f"will/birth topic {self.topic!r} must be a non-empty topic without wildcards")
        if self.qos not in (0, 1, 2):
            raise ValueError(f"will/birth qos must be 0, 1 or 2, not {self.qos!r}")


@dataclass(frozen=True, kw_only=True)
class MqttSettings:
    """Settings of one broker connection (a `[connections.<name>]` table with `type = "mqtt"`).

    - `url`: `mqtt://host:port` or `mqtts://host:port` (TLS).
    - `client_id`: stable across restarts so the broker keeps our session; default
      `edgeflow-<hostname>-<connection name>`.
    - `username` with one of `password` (tests only: secrets do not belong in files users share),
      `password_file` (first line, trailing newline stripped) or `password_env` (variable name).
    - `protocol`: 5 (MQTT 5) or 4 (MQTT 3.1.1).
    - `clean_start=False` with `session_expiry` seconds (MQTT 5) keeps subscriptions and queued
      messages at the broker while we are away; with MQTT 3.1.1 it means clean session off.
    - `receive_maximum` (MQTT 5): how many QoS 1/2 messages the broker may have unacknowledged with us;
      it bounds what a slow source holds in memory. None lets the broker choose.
    - `ca_file`, `cert_file`, `key_file`: TLS trust and client certificate (mqtts:// only);
      `tls_insecure` keeps chain verification but skips the host name check.
    - `will`: published by the broker if we vanish; `birth`: published by us on every connect. With
      both set (node presence), `stop()` also announces the will payload, since a clean disconnect
      does not trigger the will.
    - `backoff_initial`/`backoff_max`: reconnect delays (seconds), doubled per failure, jittered.
    - `max_inflight`: QoS 1/2 publishes awaiting their PUBACK/PUBCOMP at once (lowered to the
      broker's Receive Maximum when it announces one).
    - `unrouted_grace`: how long a QoS 1/2 message matching no subscription is held, unacknowledged,
      for a subscriber that has not registered yet, before it is acknowledged and dropped.
    """

    url: str
    client_id: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    password_file: str | None = None
    password_env: str | None = None
    protocol: int = 5
    keepalive: int = 30
    clean_start: bool = False
    session_expiry: int = _WEEK
    receive_maximum: int | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    tls_insecure: bool = False
    will: Will | None = None
    birth: Will | None = None
    backoff_initial: float = 0.2
    backoff_max: float = 30.0
    connect_timeout: float = 10.0
    max_inflight: int = 100
    unrouted_grace: float = 10.0
    address: BrokerAddress = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", parse_broker_url(self.url))
        if self.protocol not in (4, 5):
            raise ValueError(f"protocol must be 5 (MQTT 5) or 4 (MQTT 3.1.1), not {self.protocol!r}")
        secrets = [k for k in ("password", "password_file", "password_env") if getattr(self, k) is not None]
        if len(secrets) > 1:
            raise ValueError(f"give only one of password, password_file, password_env (got {secrets})")
        if secrets and self.username is None and self.protocol == 4:
            raise ValueError("MQTT 3.1.1 sends a password only with a username: set `username`")
        if not 0 < self.keepalive <= 65535:
            raise ValueError(f"keepalive must be 1..65535 seconds, not {self.keepalive!r}")
        if not 0 <= self.session_expiry <= 0xFFFFFFFF:
            raise ValueError(f"session_expiry must be 0..4294967295 seconds, not {self.session_expiry!r}")
        if self.receive_maximum is not None and not 1 <= self.receive_maximum <= 65535:
            raise ValueError(f"receive_maximum must be 1..65535, not {self.receive_maximum!r}")
        if not self.address.tls:
            tls_keys = [k for k in ("ca_file", "cert_file", "key_file") if getattr(self, k) is not None]
            if tls_keys or self.tls_insecure:
                raise ValueError(f"{', '.join(tls_keys) or 'tls_insecure'} needs an mqtts:// url, not {self.url!r}")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file needs cert_file (the client certificate)")
        if not 0 < self.backoff_initial <= self.backoff_max:
            raise ValueError("backoff needs 0 < backoff_initial <= backoff_max")
        if self.connect_timeout <= 0:
            raise ValueError("connect_timeout must be positive")
        if not 1 <= self.max_inflight <= 65535:
            raise ValueError(f"max_inflight must be 1..65535, not {self.max_inflight!r}")
        if self.unrouted_grace < 0:
            raise ValueError("unrouted_grace must not be negative")

    @classmethod
    def from_url(cls, url: str, **options: object) -> MqttSettings:
        """`MqttSettings(url=url, **options)`, for symmetry with the topology's `url` key."""
        return cls(url=url, **options)  # type: ignore[arg-type]

    def client_id_for(self, name: str) -> str:
        """The client id to use for the connection called `name`."""
        return self.client_id or f"edgeflow-{socket.gethostname()}-{name}"

    def read_password(self) -> str | None:
        """The password, read now from wherever it lives; `OSError`/`LookupError` say why it cannot be.

        Runs in the connect thread at every attempt (a file read may block).
        """
        if self.password_file is not None:
            try:
                with open(self.password_file, encoding="utf-8") as f:
                    return f.readline().rstrip("\r\n")
            except OSError as exc:
                raise OSError(f"cannot read password_file {self.password_file}: {exc.strerror}") from None
        if self.password_env is not None:
            value = os.environ.get(self.password_env)
            if value is None:
                raise LookupError(f"environment variable {self.password_env} (password_env) is not set")
            return value
        return self.password
