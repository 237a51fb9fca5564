"""OTP-style supervision: who restarts when an actor crashes, how soon, and when to give up.

The supervisor does not run actors (their cells do); it decides. On a crash it records the time,
and when more than `max_restarts` crashes fall within `within` seconds it raises
`RestartIntensityExceeded`: the process exits non-zero and systemd, one level up, takes over (as in
Erlang/OTP and Faust's `mode`). Otherwise the strategy picks the siblings to restart with it:
`one_for_one` none, `one_for_all` every other actor, `rest_for_one` those started after it.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol

from .errors import RestartIntensityExceeded
from .topology import SupervisorConfig

__all__ = ["Supervisor", "backoff_delay"]


class Restartable(Protocol):
    name: str

    def request_restart(self) -> None: ...


def backoff_delay(attempt: int, initial: float, maximum: float, rand: Callable[[], float] = random.random) -> float:
    """Capped exponential backoff with equal jitter: half fixed, half random, so retries spread out."""
    base = min(maximum, initial * float(2 ** min(attempt, 30)))
    return base / 2 + base / 2 * rand()


class Supervisor:
    def __init__(self, config: SupervisorConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self.order: list[Restartable] = []  # start order
        self._crashes: deque[float] = deque()

    def attach(self, cells: Sequence[Restartable]) -> None:
        self.order = list(cells)

    def crashed(self, cell: Restartable) -> None:
        """Record a crash of `cell`; raise `RestartIntensityExceeded` past the limit, else restart siblings."""
        now = self.clock()
        crashes = self._crashes
        crashes.append(now)
        while crashes and crashes[0] < now - self.config.within:
            crashes.popleft()
        if len(crashes) > self.config.max_restarts:
            raise RestartIntensityExceeded(cell.name, self.config.max_restarts, self.config.within)
        strategy = self.config.strategy
        if strategy == "one_for_one":
            return
        idx = next((i for i, c in enumerate(self.order) if c is cell), -1)
        siblings = self.order[idx + 1 :] if strategy == "rest_for_one" else [c for c in self.order if c is not cell]
        for c in siblings:
            c.request_restart()

    def delay(self, attempt: int) -> float:
        b = self.config.backoff
        return float(backoff_delay(attempt, b.initial, b.max))
