"""The control protocol, shared by the runtime and `edgeflow ctl`: topics, bodies and signatures.

Topics, under the `[control] prefix`:

- `<prefix>/<node>/status`: retained; `{"state": "online" | "offline", ...}` (offline is the last will).
- `<prefix>/<node>/metrics`: every `metrics_interval`, not retained.
- `<prefix>/<node>/cmd/<verb>` for one node, `<prefix>/all/cmd/<verb>` for every node (a fleet sweep).

A command body is a JSON object::

    {"args": {...}, "ts": <epoch seconds>, "nonce": "<random>", "sig": "<hex>",
     "id": "<correlation>", "reply_to": "<topic>"}

The reply goes to the MQTT 5 response topic with the request's correlation data, or, when there is
none (MQTT 3.1.1), to `reply_to`, carrying `id`. A reply is `{"ok": true, "result": ..., "node": ...,
"verb": ..., "id": ...}` or `{"ok": false, "error": "...", "details": ..., ...}`.

Signing: `sig` is HMAC-SHA256, keyed with the key file's text (surrounding whitespace stripped, UTF-8),
over `canonical(verb, target, args, ts, nonce)` where `target` is the node id, or `all` for a
broadcast, so a command signed for one node cannot be replayed on another or on the whole fleet.
The canonical form is JSON with sorted keys, no spaces and ASCII escapes (Python's `json.dumps(...,
sort_keys=True, separators=(",", ":"), ensure_ascii=True)`); other clients should send `ts` as an
integer and keep floats out of `args` to reproduce it byte for byte. `id` and `reply_to` are not
signed: whoever can read the command can read its reply too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Any

__all__ = [
    "BROADCAST",
    "MAX_SKEW",
    "canonical",
    "command_body",
    "command_topic",
    "metrics_topic",
    "read_key_file",
    "reply_filter",
    "sign",
    "status_topic",
    "topic_safe",
]

BROADCAST = "all"
MAX_SKEW = 60.0  # seconds a command's ts may differ from the receiver's clock


def topic_safe(name: str) -> bool:
    """True when `name` can be one topic level (a node id or a prefix part)."""
    return bool(name) and not any(c in name for c in "/+#\0")


def status_topic(prefix: str, node: str) -> str:
    return f"{prefix}/{node}/status"


def metrics_topic(prefix: str, node: str) -> str:
    return f"{prefix}/{node}/metrics"


def command_topic(prefix: str, target: str, verb: str) -> str:
    return f"{prefix}/{target}/cmd/{verb}"


def reply_filter(prefix: str, client: str) -> str:
    """Where `edgeflow ctl` listens for replies (one topic per client run)."""
    return f"{prefix}/_reply/{client}"


def canonical(verb: str, target: str, args: Any, ts: Any, nonce: Any) -> bytes:
    """The bytes a signature covers. Raises `ValueError` for values JSON cannot carry (NaN)."""
    doc = {"args": args, "nonce": nonce, "target": target, "ts": ts, "verb": verb}
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def sign(key: bytes, verb: str, target: str, args: Any, ts: Any, nonce: Any) -> str:
    return hmac.new(key, canonical(verb, target, args, ts, nonce), hashlib.sha256).hexdigest()


def command_body(
    verb: str,
    target: str,
    args: dict[str, Any],
    *,
    key: bytes | None,
    ident: str | None = None,
    reply_to: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """A command body for `target` (a node id or `BROADCAST`), signed when `key` is given."""
    ts = int(time.time() if now is None else now)
    nonce = secrets.token_hex(16)
    body: dict[str, Any] = {"args": args, "ts": ts, "nonce": nonce}
    if key is not None:
        body["sig"] = sign(key, verb, target, args, ts, nonce)
    if ident is not None:
        body["id"] = ident
    if reply_to is not None:
        body["reply_to"] = reply_to
    return body


def read_key_file(path: str | Path) -> bytes:
    """The key in a key file, as the runtime reads it: the text with surrounding whitespace stripped.

    Raises `OSError` when the file cannot be read and `ValueError` when it holds no key.
    """
    key = Path(path).read_text(encoding="utf-8").strip()
    if not key:
        raise ValueError(f"the key file {path} is empty")
    return key.encode()
