"""`nop` sink: accepts everything and does nothing (benchmarks, tests, placeholders)."""

from __future__ import annotations

from edgeflow import Message, Sink

__all__ = ["NopSink"]


class NopSink(Sink):
    """Accepts every message and discards it; counts them."""

    max_batch = 4096

    async def write(self, batch: list[Message]) -> None:
        return None
