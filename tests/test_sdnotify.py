"""The sd_notify client against real AF_UNIX datagram sockets, standing in for systemd's."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator

import pytest

from edgeflow.sdnotify import Notifier, watchdog_loop

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def receiver() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket in a short temporary directory (sun_path is limited to 108 bytes)."""
    with tempfile.TemporaryDirectory(prefix="ef-notify-") as tmp:
        path = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(5)
        yield sock, path
        sock.close()


def datagram(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def fields(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.split("\n"))


def test_ready_reaches_a_path_socket(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready()
    assert datagram(sock) == "READY=1"


def test_ready_reaches_an_abstract_socket() -> None:
    name = f"edgeflow-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).ready(status="serving")
        assert datagram(sock) == "READY=1\nSTATUS=serving"


def test_each_message_sends_its_fields(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.stopping()
    notifier.status("draining 3 mailboxes")
    notifier.watchdog()
    notifier.notify(EXTEND_TIMEOUT_USEC=5_000_000, STATUS="replaying")
    assert [datagram(sock) for _ in range(4)] == [
        "STOPPING=1",
        "STATUS=draining 3 mailboxes",
        "WATCHDOG=1",
        "EXTEND_TIMEOUT_USEC=5000000\nSTATUS=replaying",
    ]


def test_reloading_carries_the_current_monotonic_clock_in_microseconds(
    receiver: tuple[socket.socket, str],
) -> None:
    sock, path = receiver
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier({"NOTIFY_SOCKET": path}).reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    got = fields(datagram(sock))
    assert got["RELOADING"] == "1"
    assert before <= int(got["MONOTONIC_USEC"]) <= after


def test_a_newline_in_a_value_cannot_inject_a_field(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    Notifier({"NOTIFY_SOCKET": path}).status("bad\nREADY=1")
    assert datagram(sock) == "STATUS=bad READY=1"


def test_a_key_that_cannot_be_a_field_name_is_refused(receiver: tuple[socket.socket, str]) -> None:
    _, path = receiver
    with pytest.raises(ValueError, match="field name"):
        Notifier({"NOTIFY_SOCKET": path}).notify(**{"A=B": 1})


def test_sends_reuse_one_socket(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path})
    notifier.watchdog()
    descriptors = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        assert notifier.watchdog()
        datagram(sock)
    assert len(os.listdir("/proc/self/fd")) == descriptors


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not notifier.stopping()


def test_a_relative_or_empty_socket_address_disables_notifications() -> None:
    for value in ("relative/path", "@", ""):
        assert not Notifier({"NOTIFY_SOCKET": value}).enabled


def test_a_send_error_never_raises_and_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="edgeflow.sdnotify")
    with tempfile.TemporaryDirectory(prefix="ef-notify-") as tmp:
        notifier = Notifier({"NOTIFY_SOCKET": os.path.join(tmp, "nobody-listens")})
        assert not notifier.ready()
        assert not notifier.watchdog()
    failures = [r for r in caplog.records if "sd_notify" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].levelno == logging.DEBUG


def test_a_full_systemd_queue_drops_the_datagram_instead_of_blocking(
    receiver: tuple[socket.socket, str],
) -> None:
    _, path = receiver  # bound, never read: its queue fills up
    notifier = Notifier({"NOTIFY_SOCKET": path})
    started = time.monotonic()
    results = [notifier.status("x" * 1000) for _ in range(5000)]
    assert time.monotonic() - started < 5
    assert results[0]
    assert not results[-1]


def test_watchdog_interval_is_watchdog_usec_in_seconds(receiver: tuple[socket.socket, str]) -> None:
    _, path = receiver
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(env).watchdog_interval() == 30.0


def test_watchdog_applies_when_watchdog_pid_is_absent(receiver: tuple[socket.socket, str]) -> None:
    _, path = receiver
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}).watchdog_interval() == 0.2


def test_watchdog_meant_for_another_process_is_disabled(receiver: tuple[socket.socket, str]) -> None:
    _, path = receiver
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getppid())}
    assert Notifier(env).watchdog_interval() is None


@pytest.mark.parametrize("usec", ["0", "-5", "soon", ""])
def test_a_watchdog_usec_that_is_not_a_positive_integer_disables_it(
    receiver: tuple[socket.socket, str], usec: str
) -> None:
    _, path = receiver
    assert Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": usec}).watchdog_interval() is None


def test_watchdog_loop_returns_at_once_without_a_watchdog(receiver: tuple[socket.socket, str]) -> None:
    _, path = receiver

    async def main() -> None:
        await asyncio.wait_for(watchdog_loop(Notifier({"NOTIFY_SOCKET": path}), lambda: True), 1)

    asyncio.run(main())


def test_watchdog_loop_pings_only_while_healthy(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    sock.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})  # pings every 50 ms
    health = {"ok": True}

    async def next_datagram(within: float) -> str:
        loop = asyncio.get_running_loop()
        return (await asyncio.wait_for(loop.sock_recv(sock, 4096), within)).decode()

    async def main() -> None:
        task = asyncio.create_task(watchdog_loop(notifier, lambda: health["ok"]))
        try:
            assert [await next_datagram(2) for _ in range(3)] == ["WATCHDOG=1"] * 3
            health["ok"] = False
            notifier.status("unhealthy now")  # pings already sent are read up to this marker
            while (await next_datagram(2)) != "STATUS=unhealthy now":
                pass
            with pytest.raises(TimeoutError):
                await next_datagram(0.5)  # ten periods without a ping
            health["ok"] = True
            assert await next_datagram(2) == "WATCHDOG=1"
        finally:
            task.cancel()

    asyncio.run(main())


def test_watchdog_loop_treats_a_raising_health_check_as_unhealthy(
    receiver: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture
) -> None:
    sock, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    checks = asyncio.Event()

    def broken() -> bool:
        checks.set()
        raise RuntimeError("health probe bug")

    async def main() -> None:
        task = asyncio.create_task(watchdog_loop(notifier, broken))
        await asyncio.wait_for(checks.wait(), 2)
        checks.clear()
        await asyncio.wait_for(checks.wait(), 2)  # a second round: the loop survived the first
        task.cancel()

    asyncio.run(main())
    sock.settimeout(0.2)
    with pytest.raises(TimeoutError):
        sock.recv(4096)
    assert "health check raised" in caplog.text


CHILD = textwrap.dedent(
    """
    import asyncio, os, sys, time
    os.environ["WATCHDOG_PID"] = str(os.getpid())
    from edgeflow.sdnotify import Notifier, watchdog_loop

    async def main():
        notifier = Notifier()
        loop = asyncio.get_running_loop()
        pinger = asyncio.create_task(watchdog_loop(notifier, lambda: True))
        await loop.run_in_executor(None, sys.stdin.readline)
        notifier.notify(TEST="blocking")
        time.sleep(float(sys.argv[1]))  # the fault: a synchronous call that blocks the loop
        notifier.notify(TEST="unblocked")
        await loop.run_in_executor(None, sys.stdin.readline)  # until the parent closes stdin
        pinger.cancel()

    asyncio.run(main())
    """
)


def test_a_blocked_event_loop_stops_the_watchdog_pings(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    block = 2.0
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}  # a ping every 100 ms
    env.pop("WATCHDOG_PID", None)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(block)], env=env, stdin=subprocess.PIPE, text=True)
    assert child.stdin is not None
    try:
        assert [datagram(sock) for _ in range(3)] == ["WATCHDOG=1"] * 3
        child.stdin.write("block\n")
        child.stdin.flush()
        while (got := datagram(sock)) == "WATCHDOG=1":
            pass
        assert got == "TEST=blocking"
        blocked_at = time.monotonic()
        sock.settimeout(block / 2)  # five watchdog intervals
        with pytest.raises(TimeoutError):
            datagram(sock)
        sock.settimeout(5)
        assert datagram(sock) == "TEST=unblocked"
        assert time.monotonic() - blocked_at >= block * 0.9
        assert datagram(sock) == "WATCHDOG=1"
        assert datagram(sock) == "WATCHDOG=1"
    finally:
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    assert child.returncode == 0


def test_a_child_watchdog_pid_stops_the_pings_of_a_process_that_inherited_it(
    receiver: tuple[socket.socket, str],
) -> None:
    _, path = receiver
    script = "from edgeflow.sdnotify import Notifier; print(Notifier().watchdog_interval())"
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=20, check=True
    )
    assert out.stdout.strip() == "None"
    assert Notifier(env).watchdog_interval() == 0.2
