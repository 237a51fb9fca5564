"""Per-actor counters: cheap to bump on the hot path (plain attributes, bumped once per batch)."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["ActorMetrics"]


class ActorMetrics:
    __slots__ = (
        "busy",
        "dead_lettered",
        "dropped",
        "failed",
        "in_",
        "last_activity",
        "latency",
        "out",
        "restarts",
    )

    def __init__(self) -> None:
        self.in_ = 0  # messages taken in (from the mailbox, or produced by a source)
        self.out = 0  # messages emitted downstream, or delivered by a sink
        self.dropped = 0  # dropped on purpose: filtered out, overflow, expired
        self.failed = 0  # could not be processed or delivered (dead-lettered)
        self.dead_lettered = 0
        self.restarts = 0
        self.busy = 0.0  # seconds spent inside the actor's hooks
        self.latency = 0.0  # seconds: moving average of hook time per message
        self.last_activity = 0.0

    def batch_done(self, n: int, seconds: float) -> None:
        """Account one batch of `n` messages that took `seconds` inside the actor."""
        self.busy += seconds
        if n:
            per = seconds / n
            self.latency = per if not self.latency else self.latency * 0.8 + per * 0.2
        self.last_activity = time.time()

    def snapshot(self) -> dict[str, Any]:
        return {
            "in": self.in_,
            "out": self.out,
            "dropped": self.dropped,
            "failed": self.failed,
            "dead_lettered": self.dead_lettered,
            "restarts": self.restarts,
            "busy_s": round(self.busy, 3),
            "latency_us": round(self.latency * 1e6, 2),
            "last_activity": self.last_activity or None,
        }
