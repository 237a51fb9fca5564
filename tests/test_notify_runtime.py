"""The runtime speaks systemd's notify protocol: READY, RELOADING/READY, STOPPING, and a watchdog
that stops pinging when the event loop is stuck. Checked against a real NOTIFY_SOCKET the test binds."""

from __future__ import annotations

import itertools
import signal
import socket
import time

import pytest
from conftest import start_runtime

pytestmark = pytest.mark.timeout(60)


class NotifySocket:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.path = str(path)
        self.seen: list[tuple[float, str]] = []

    def wait_for(self, field: str, timeout: float = 15.0) -> float:
        """Receive datagrams until one holds `field`; returns its arrival time."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                pytest.fail(f"no {field} within {timeout}s; got {[t for _, t in self.seen]}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            now = time.monotonic()
            self.seen.append((now, data))
            if field in data.splitlines():
                return now


def test_ready_reloading_stopping_around_the_runtime_life(topology, tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    path = topology('[sources.s]\ntype = "simulator"\nrate = 50\n\n[sinks.o]\ntype = "nop"\ninputs = ["s"]\n')
    proc = start_runtime(path, NOTIFY_SOCKET=ns.path)
    try:
        ns.wait_for("READY=1")
        proc.send_signal(signal.SIGHUP)
        ns.wait_for("RELOADING=1")
        ns.wait_for("READY=1")
        proc.send_signal(signal.SIGTERM)
        ns.wait_for("STOPPING=1")
        proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0
    reloading = next(t for _, t in ns.seen if "RELOADING=1" in t)
    assert "MONOTONIC_USEC=" in reloading


def test_watchdog_pings_stop_while_the_loop_is_stuck_and_resume_after(topology, tmp_path):
    ns = NotifySocket(tmp_path / "notify.sock")
    path = topology(
        """
[sources.s]
type = "simulator"
rate = 100

[operators.stuck]
type = "stall"
inputs = ["s"]
at_seq = 150
seconds = 2.0

[sinks.o]
type = "nop"
inputs = ["stuck"]
"""
    )
    proc = start_runtime(path, NOTIFY_SOCKET=ns.path, WATCHDOG_USEC="200000")
    try:
        ns.wait_for("READY=1")
        end = time.monotonic() + 3.5  # the stall starts ~1.5 s in and lasts 2 s
        while time.monotonic() < end:
            ns.wait_for("WATCHDOG=1", timeout=5)
        ns.wait_for("WATCHDOG=1", timeout=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    pings = [t for t, text in ns.seen if "WATCHDOG=1" in text.splitlines()]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert len(pings) >= 8
    # Normally every 0.1 s; the 2 s stall shows as one long gap, i.e. systemd would have been told.
    assert max(gaps) > 1.5, gaps
    assert sorted(gaps)[len(gaps) // 2] < 0.3
