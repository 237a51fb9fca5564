"""A registered interest in a topic filter, and the filter rules it is checked against.

A `Subscription` lives as long as the actor that made it; the broker-side subscription lives as long
as the persistent session. Closing a `Subscription` therefore only stops local delivery by default:
an actor being restarted must not make the broker forget (and drop) what arrives meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from edgeflow.errors import NotReady
from edgeflow.mqtt.inmessage import InMessage

if TYPE_CHECKING:
    from edgeflow.mqtt.routing import Router

__all__ = ["Handler", "Subscription", "match_filter", "validate_filter"]

Handler = Callable[[list[InMessage]], None]
"""Called on the event loop with the messages of one read pass, in arrival order; never empty.

It must not block. If it raises, the error is logged and counted; the messages stay unacknowledged.
"""


def validate_filter(topic_filter: str) -> None:
    """Raise `ValueError` saying what is wrong with a topic filter (wildcards, `$share/<group>/...`)."""
    f = topic_filter
    if not f:
        raise ValueError("empty topic filter")
    if "\0" in f or len(f.encode()) > 65535:
        raise ValueError(f"invalid topic filter {f!r}")
    if f.startswith("$share/"):
        parts = f.split("/", 2)
        if len(parts) < 3 or not parts[1] or not parts[2] or "+" in parts[1] or "#" in parts[1]:
            raise ValueError(f"shared subscription {f!r} must read $share/<group>/<filter>")
        f = parts[2]
    levels = f.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError(f"topic filter {topic_filter!r}: '#' must be a whole level and the last one")
        if "+" in level and level != "+":
            raise ValueError(f"topic filter {topic_filter!r}: '+' must be a whole level")


def match_filter(topic_filter: str) -> str:
    """The part of a filter that topics are matched against (a shared subscription without its prefix)."""
    if topic_filter.startswith("$share/"):
        return topic_filter.split("/", 2)[2]
    return topic_filter


class Subscription:
    """A handler receiving the messages that match `topic_filter`, at up to `qos`.

    Made by `MqttConnection.subscribe`. `active` is true once the broker granted the subscription on
    the current connection (or holds it in the session we resumed); `error` is the broker's refusal,
    if any (not authorized, shared subscriptions not supported...), else None.
    """

    __slots__ = ("_active", "_batch", "_router", "closed", "error", "handler", "match", "qos", "topic_filter")

    def __init__(self, router: Router, topic_filter: str, qos: int, handler: Handler) -> None:
        self._router = router
        self.topic_filter = topic_filter
        self.match = match_filter(topic_filter)
        self.qos = qos
        self.handler = handler
        self.closed = False
        self.error: str | None = None
        self._active = asyncio.Event()
        self._batch: list[InMessage] = []

    @property
    def active(self) -> bool:
        return self._active.is_set()

    async def wait_active(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - says why
        """Return once the broker has granted this subscription; raise `NotReady` after `timeout` s."""
        try:
            async with asyncio.timeout(timeout):
                await self._active.wait()
        except TimeoutError:
            why = self.error or ("no SUBACK yet" if self._router.up else "the connection is down")
            raise NotReady(f"subscription {self.topic_filter!r} not active after {timeout}s: {why}") from None

    def close(self, *, unsubscribe: bool = False, unacked: Iterable[InMessage] = ()) -> None:
        """Stop delivering to the handler. Idempotent; runs on the loop.

        With `unsubscribe=True`, and no other local subscription on the same filter, the broker is asked
        to drop the subscription too (messages on it are then no longer kept for us).

        `unacked`: messages the handler took that their owner will now never acknowledge (an actor
        stopping with messages it had not handed on yet). The broker would send them again only on the
        next connection, and meanwhile they would hold slots of its in-flight window; so they are held
        for the next subscriber that matches them, as messages that arrive while nobody subscribes
        are (see `edgeflow.mqtt.routing`).
        """
        if not self.closed:
            self.closed = True
            self._router.remove(self, unsubscribe)
        self._router.give_back(unacked)

    def __repr__(self) -> str:
        state = "closed" if self.closed else "active" if self.active else "pending"
        return f"Subscription({self.topic_filter!r}, qos={self.qos}, {state})"
