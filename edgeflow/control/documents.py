"""What the control plane publishes: the retained status document, the metrics, and the scrubbing of secrets.

Everything that leaves the node over the control topics goes through `to_json`, which replaces
`Secret` values and keys named like secrets with `"***"` and, as a last guard, any occurrence of the
strings it is told are secret (the control key), so a status hook that leaks one never sends it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..schema import Secret

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ["metrics_document", "offline_document", "online_document", "scrub", "status_document", "to_json"]

SECRET_KEYS = frozenset({"password", "passwd", "secret", "token", "api_key", "apikey", "hmac_key", "private_key"})
REDACTED = "***"


def scrub(value: Any) -> Any:
    """A copy of `value` with `Secret`s and secret-named keys redacted (mappings, lists, scalars)."""
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and k.lower() in SECRET_KEYS and v is not None else scrub(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def to_json(doc: Any, secrets: Iterable[str] = ()) -> bytes:
    """`doc` scrubbed and encoded; anything JSON cannot carry becomes its `str`."""
    text = json.dumps(scrub(doc), default=str, separators=(",", ":"))
    for secret in secrets:
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, REDACTED)
    return text.encode()


def offline_document(node: str) -> dict[str, Any]:
    """The last will: what the broker publishes when this node vanishes (and `stop()` announces)."""
    return {"state": "offline", "node": node, "version": __version__}


def online_document(node: str, started_at: float) -> dict[str, Any]:
    """The birth message: published by the connection on every connect, until the full document follows."""
    return {"state": "online", "node": node, "version": __version__, "started_at": round(started_at, 3)}


def status_document(runtime: Runtime, authenticated: bool) -> dict[str, Any]:
    """The retained status: presence, version, uptime, each actor's state and each buffer's size."""
    actors: dict[str, str] = {}
    buffers: dict[str, dict[str, int]] = {}
    for name, cell in runtime.cells.items():
        actors[name] = cell.state
        if cell.buffer is not None:
            stats = cell.buffer.buffer.stats()
            buffers[name] = {"messages": stats.count, "bytes": stats.bytes}
    for cell in runtime.retiring:
        actors[f"{cell.name} (draining)"] = cell.state
    now = time.time()
    return {
        "state": "online",
        "node": runtime.node_id,
        "version": __version__,
        "runtime": runtime.state,
        "started_at": round(runtime.started_at, 3),
        "uptime_s": round(now - runtime.started_at, 1),
        "ts": round(now, 3),
        "reloads": runtime.reloads,
        "actors": actors,
        "buffers": buffers,
        "authenticated": authenticated,
    }


def metrics_document(runtime: Runtime) -> dict[str, Any]:
    """Counters per actor (with mailbox and buffer), and each connection's state and counters."""
    status = runtime.status()
    return {
        "node": runtime.node_id,
        "ts": round(time.time(), 3),
        "uptime_s": status["uptime_s"],
        "runtime": status["state"],
        "actors": status["actors"],
        "connections": status.get("connections", {}),
    }
