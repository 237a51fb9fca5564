"""Supervisor decisions with a fake clock: intensity, strategies, backoff."""

from __future__ import annotations

import pytest

from edgeflow.errors import RestartIntensityExceeded
from edgeflow.supervisor import Supervisor, backoff_delay
from edgeflow.topology import SupervisorConfig

pytestmark = pytest.mark.timeout(10)


class FakeCell:
    def __init__(self, name: str) -> None:
        self.name = name
        self.restarts = 0

    def request_restart(self) -> None:
        self.restarts += 1


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def supervisor(strategy: str = "one_for_one", max_restarts: int = 3, within: float = 10.0):
    clock = Clock()
    sup = Supervisor(SupervisorConfig(strategy=strategy, max_restarts=max_restarts, within=within), clock=clock)
    cells = [FakeCell(n) for n in ("sink", "op", "src")]
    sup.attach(cells)
    return sup, cells, clock


def test_more_crashes_than_max_restarts_within_the_window_gives_up():
    sup, cells, clock = supervisor(max_restarts=3, within=10)
    for _ in range(3):
        sup.crashed(cells[0])
        clock.now += 1
    with pytest.raises(RestartIntensityExceeded, match="'sink'"):
        sup.crashed(cells[0])


def test_crashes_older_than_the_window_are_forgotten():
    sup, cells, clock = supervisor(max_restarts=2, within=10)
    for _ in range(10):
        sup.crashed(cells[1])
        clock.now += 6  # never three within ten seconds
    assert cells[0].restarts == 0


def test_rest_for_one_restarts_only_the_actors_started_after_the_crashed_one():
    sup, (sink, op, src), _ = supervisor("rest_for_one", max_restarts=10)
    sup.crashed(op)
    assert (sink.restarts, op.restarts, src.restarts) == (0, 0, 1)


def test_one_for_all_restarts_every_other_actor_and_one_for_one_none():
    sup, (sink, op, src), _ = supervisor("one_for_all", max_restarts=10)
    sup.crashed(op)
    assert (sink.restarts, op.restarts, src.restarts) == (1, 0, 1)
    sup, (sink, op, src), _ = supervisor("one_for_one", max_restarts=10)
    sup.crashed(op)
    assert (sink.restarts, op.restarts, src.restarts) == (0, 0, 0)


def test_backoff_doubles_is_capped_and_jittered_within_half_to_full():
    assert backoff_delay(0, 0.2, 30, rand=lambda: 0.0) == pytest.approx(0.1)
    assert backoff_delay(0, 0.2, 30, rand=lambda: 1.0) == pytest.approx(0.2)
    assert backoff_delay(3, 0.2, 30, rand=lambda: 1.0) == pytest.approx(1.6)
    assert backoff_delay(20, 0.2, 30, rand=lambda: 1.0) == pytest.approx(30)
    assert backoff_delay(20, 0.2, 30, rand=lambda: 0.0) == pytest.approx(15)
