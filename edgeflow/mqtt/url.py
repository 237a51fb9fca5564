"""Broker addresses as users write them: `mqtt://host:port` and `mqtts://host:port`.

Parsed once, when settings are built; every mistake is a `ValueError` whose message names the URL and
says what is expected, so the topology validator can report it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

__all__ = ["BrokerAddress", "parse_broker_url"]

_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the broker listens, and whether the connection uses TLS."""

    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """Parse `mqtt://host[:port]` (default 1883) or `mqtts://host[:port]` (TLS, default 8883).

    IPv6 literals go in brackets (`mqtt://[::1]:1883`). A user name belongs in `username`, a password in
    `password_file` or the environment: credentials, paths, queries and fragments in the URL are refused.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"invalid broker url {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"invalid broker url {url!r}: the scheme must be mqtt:// or mqtts://")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"invalid broker url {url!r}: put the user in `username` and the password in "
            "`password_file` or the environment, not in the url"
        )
    if not parts.hostname:
        raise ValueError(f"invalid broker url {url!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"invalid broker url {url!r}: expected only scheme, host and port")
    if port == 0:
        raise ValueError(f"invalid broker url {url!r}: port 0")
    return BrokerAddress(parts.hostname, port or _DEFAULT_PORTS[scheme], scheme == "mqtts")
