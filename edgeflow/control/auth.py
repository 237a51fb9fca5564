"""Who may steer this node: the checks every command passes before it may change anything.

With a key, a command must be signed (`protocol.sign`), fresh (its `ts` within `MAX_SKEW` of this
node's clock) and new (its nonce not seen within that window). Without a key every command is
accepted, but a `ts` or a `nonce` that is present is still checked, so a command that sat in some
queue for minutes, or a duplicate delivery, is not carried out.

Nonces are remembered only once their signature verified, so nobody without the key can fill the
cache; they are forgotten when their command has gone stale. When `max_nonces` fresh nonces are held
at once, new commands are refused rather than an old nonce forgotten early: forgetting would reopen
a replay window.
"""

from __future__ import annotations

import hmac
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from .protocol import MAX_SKEW, canonical

__all__ = ["Refused", "Verifier"]

_HEX = frozenset("0123456789abcdef")


class Refused(Exception):
    """A command that is not carried out; the message says why (it goes into the reply and the log)."""


class Verifier:
    """Checks commands against one key (None: unauthenticated). Runs on the event loop; not thread-safe."""

    def __init__(
        self,
        key: bytes | None,
        *,
        window: float = MAX_SKEW,
        max_nonces: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.window = window
        self.max_nonces = max_nonces
        self.clock = clock
        self._seen: OrderedDict[str, float] = OrderedDict()  # nonce -> when it goes stale

    @property
    def remembered(self) -> int:
        """How many nonces are held (each until its command would be stale)."""
        return len(self._seen)

    def check(self, verb: str, target: str, body: dict[str, Any]) -> dict[str, Any]:
        """Return the command's args if it may run; raise `Refused` saying why not.

        `body` is the decoded command; `target` is the node id or `all`, from the topic it came on.
        """
        args = body.get("args", {})
        if not isinstance(args, dict):
            raise Refused("'args' must be a JSON object")
        ts, nonce, sig = body.get("ts"), body.get("nonce"), body.get("sig")
        if self.key is None:
            if ts is not None:
                self._check_fresh(ts)
            if nonce is not None:
                self._check_nonce(nonce)
                self._remember(nonce, ts)
            return args
        if sig is None:
            raise Refused("unsigned command (this node requires a signature: edgeflow ctl --key-file)")
        if ts is None or nonce is None:
            raise Refused("a signed command needs 'ts' and 'nonce'")
        if not isinstance(sig, str) or len(sig) != 64 or not _HEX.issuperset(sig):
            raise Refused("'sig' must be 64 lowercase hex digits (HMAC-SHA256)")
        _check_nonce_format(nonce)
        self._check_fresh(ts)
        try:
            expected = hmac.new(self.key, canonical(verb, target, args, ts, nonce), "sha256").hexdigest()
        except ValueError:  # NaN or infinity in args: not JSON, so not something we signed
            raise Refused("bad signature") from None
        if not hmac.compare_digest(expected, sig):
            raise Refused("bad signature")
        self._check_nonce(nonce)
        self._remember(nonce, ts)
        return args

    def _check_fresh(self, ts: Any) -> None:
        if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
            raise Refused("'ts' must be a number (seconds since the epoch)")
        skew = self.clock() - ts
        if abs(skew) > self.window:
            raise Refused(
                f"stale command: its ts is {abs(skew):.0f}s {'behind' if skew > 0 else 'ahead of'} this node's "
                f"clock (allowed: {self.window:g}s either way; check the clocks of the node and the client)"
            )

    def _check_nonce(self, nonce: str) -> None:
        _check_nonce_format(nonce)
        self._forget_stale()
        if nonce in self._seen:
            raise Refused("replayed command (this nonce was used already)")
        if len(self._seen) >= self.max_nonces:
            self._forget_stale(everything=True)
            if len(self._seen) >= self.max_nonces:
                raise Refused(f"too many commands: more than {self.max_nonces} within {self.window:g}s")

    def _remember(self, nonce: str, ts: Any) -> None:
        now = self.clock()
        when = ts if isinstance(ts, int | float) and not isinstance(ts, bool) else now
        self._seen[nonce] = max(now, when) + self.window

    def _forget_stale(self, *, everything: bool = False) -> None:
        """Drop nonces whose commands are stale now: from the front (roughly oldest first), or all."""
        now = self.clock()
        seen = self._seen
        if everything:
            for nonce in [n for n, until in seen.items() if until < now]:
                del seen[nonce]
            return
        while seen:
            nonce, until = next(iter(seen.items()))
            if until >= now:
                break
            del seen[nonce]


def _check_nonce_format(nonce: Any) -> None:
    if not isinstance(nonce, str) or not 8 <= len(nonce) <= 128:
        raise Refused("'nonce' must be a string of 8 to 128 characters")
