"""Actors for edgeflow's tests, installed through a real entry-point list (tests/plugins on the path).

In-process tests reach the instances through the class-level registries below, keyed by actor name.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from edgeflow import Ack, Config, Message, Operator, Permanent, Retryable, Sink, Source, field


class CrasherConfig(Config):
    where: str = field("produce", doc="'produce' or 'start': which hook raises")


class Crasher(Source):
    """Raises on every attempt: a bug that restarts cannot fix."""

    Config = CrasherConfig

    async def on_start(self) -> None:
        if self.config.where == "start":
            raise RuntimeError("crasher: on_start always fails")

    async def produce(self) -> list[Message] | None:
        raise RuntimeError("crasher: produce always fails")


class Gate(Sink):
    """Blocks every write until the test opens its gate (`Gate.gates[name].set()`)."""

    gates: ClassVar[dict[str, asyncio.Event]] = {}
    received: ClassVar[dict[str, list[Message]]] = {}
    max_batch = 64

    async def on_start(self) -> None:
        self.gates.setdefault(self.name, asyncio.Event())
        self.received.setdefault(self.name, [])

    async def write(self, batch: list[Message]) -> None:
        await self.gates[self.name].wait()
        self.received[self.name].extend(batch)


class Collect(Sink):
    """Keeps everything it is given, in order."""

    received: ClassVar[dict[str, list[Message]]] = {}

    async def on_start(self) -> None:
        self.received.setdefault(self.name, [])

    async def write(self, batch: list[Message]) -> None:
        self.received[self.name].extend(batch)


class Reject(Sink):
    """Rejects (Permanent) every message whose payload has `bad = true`; keeps the others."""

    received: ClassVar[dict[str, list[Message]]] = {}

    async def on_start(self) -> None:
        self.received.setdefault(self.name, [])

    async def write(self, batch: list[Message]) -> None:
        if any(isinstance(m.payload, dict) and m.payload.get("bad") for m in batch):
            raise Permanent("rejected: bad = true")
        self.received[self.name].extend(batch)


class FlakyConfig(Config):
    failures: int = field(3, doc="how many writes fail (Retryable) before they succeed")


class Flaky(Sink):
    """Fails the first `failures` writes with a retryable error, then delivers."""

    Config = FlakyConfig
    received: ClassVar[dict[str, list[Message]]] = {}
    attempts: ClassVar[dict[str, int]] = {}

    async def on_start(self) -> None:
        self.received.setdefault(self.name, [])
        self.attempts.setdefault(self.name, 0)

    async def write(self, batch: list[Message]) -> None:
        self.attempts[self.name] += 1
        if self.attempts[self.name] <= self.config.failures:
            raise Retryable("flaky: destination unavailable")
        self.received[self.name].extend(batch)


class StallConfig(Config):
    at_seq: int = field(doc="block the event loop when the message with this seq passes")
    seconds: float = field(2.0, doc="for how long")


class Stall(Operator):
    """Blocks the whole event loop once (a stuck loop, as a watchdog must catch it)."""

    Config = StallConfig

    def process(self, msg: Message) -> Message:
        if isinstance(msg.payload, dict) and msg.payload.get("seq") == self.config.at_seq:
            import time

            time.sleep(self.config.seconds)  # the fault under test: a loop that stops turning
        return msg


class AckedConfig(Config):
    count: int = field(100, doc="how many messages")


class Acked(Source):
    """Emits `count` messages at once, each with an Ack that records when it settles (`settled`)."""

    Config = AckedConfig
    acknowledges = True
    settled: ClassVar[list[tuple[int, int]]] = []  # (seq, Counter.snapshots at that moment)

    async def on_start(self) -> None:
        self._done = False

    async def produce(self) -> list[Message] | None:
        if self._done:
            return None
        self._done = True

        def settle(seq: int) -> None:
            self.settled.append((seq, Counter.snapshots))

        return [
            Message({"seq": i, "device": f"dev-{i % 3}"}, self.name, ack=Ack(lambda i=i: settle(i)))  # type: ignore[misc]
            for i in range(self.config.count)
        ]


class Counter(Operator):
    """Counts messages per device in persisted state; emits the counts at the end of the stream."""

    stateful = True
    commit_interval = 0.2
    snapshots: ClassVar[int] = 0

    async def on_start(self) -> None:
        self.counts: dict[str, int] = {}

    def process(self, msg: Message) -> None:
        device = msg.payload["device"]
        self.counts[device] = self.counts.get(device, 0) + 1

    def snapshot(self) -> dict[str, int]:
        type(self).snapshots += 1
        return dict(self.counts)

    def restore(self, state: dict[str, int]) -> None:
        self.counts = dict(state)

    def flush(self) -> list[Message]:
        return [Message({"device": d, "n": n}, self.name) for d, n in sorted(self.counts.items())]


class Crashy(Sink):
    """Crashes (a bug, not a retryable error) on its second write, once per process; keeps the rest."""

    received: ClassVar[dict[str, list[Message]]] = {}
    crashed: ClassVar[set[str]] = set()
    max_batch = 100

    async def on_start(self) -> None:
        self.received.setdefault(self.name, [])
        self._writes = 0

    async def write(self, batch: list[Message]) -> None:
        self._writes += 1
        if self._writes == 2 and self.name not in self.crashed:
            self.crashed.add(self.name)
            raise RuntimeError("crashy: a bug in the middle of a delivery")
        self.received[self.name].extend(batch)
