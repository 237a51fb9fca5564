"""The systemd notification protocol (sd_notify), without libsystemd.

Under a `Type=notify` unit systemd passes `NOTIFY_SOCKET` (a datagram socket: a path, or `@name` for an
abstract one) and, when `WatchdogSec=` is set, `WATCHDOG_USEC` and `WATCHDOG_PID`. The service sends
newline-separated `KEY=value` datagrams: `READY=1` once it serves, `RELOADING=1` ... `READY=1` around a
reload, `STOPPING=1` when it begins to shut down, `STATUS=` for `systemctl status`, and `WATCHDOG=1` at
least every `WATCHDOG_USEC`, or systemd kills it (SIGABRT) and, with `Restart=on-failure`, restarts it.

Everything here is a no-op when the process is not under systemd (no `NOTIFY_SOCKET`), and no send ever
raises: notifications are advisory, and a runtime must not crash because systemd is restarting or its
socket is full. The first failure is logged at debug level, later ones silently.

`watchdog_loop` pings from the event loop itself, not from a thread: a loop that is blocked (a stuck
callback, a synchronous call that hangs) stops the pings, and systemd then kills and restarts the
process. That is the point of the watchdog.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping

__all__ = ["Notifier", "watchdog_loop"]

_log = logging.getLogger(__name__)


class Notifier:
    """A sender of sd_notify messages, configured from the environment when built.

    `environ` defaults to `os.environ`; it is read once, here. The socket is opened on the first send
    and kept for the life of the Notifier (one socket per Notifier; `close()` releases it). It is
    non-blocking: a datagram that systemd cannot take right now is dropped rather than stalling the
    event loop. Safe to use from the event loop and from threads (a send is one `sendto` call).
    """

    __slots__ = ("_address", "_failed", "_sock", "_watchdog_usec")

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address: str | bytes | None = _parse_address(env.get("NOTIFY_SOCKET", ""))
        self._watchdog_usec: int | None = _parse_watchdog(env) if self._address is not None else None
        self._sock: socket.socket | None = None
        self._failed = False
        if self._address is not None:
            try:
                self._open()
            except OSError:
                pass  # out of descriptors now: send() tries again and logs

    @property
    def enabled(self) -> bool:
        """True when there is a notification socket to talk to (running under systemd)."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds, or None when no watchdog applies to this process.

        None when `WATCHDOG_USEC` is absent, not a positive integer, or `WATCHDOG_PID` names another
        process (the variables were inherited from a parent that systemd supervises).
        """
        return None if self._watchdog_usec is None else self._watchdog_usec / 1_000_000

    def send(self, text: str) -> bool:
        """Send one raw notification (`KEY=value` lines); True when the datagram left.

        False, without raising, when not under systemd or on any socket error (systemd gone, its queue
        full): the first such error is logged at debug level.
        """
        if self._address is None:
            return False
        try:
            sock = self._sock if self._sock is not None else self._open()
            sock.sendto(text.encode(), self._address)
        except OSError as exc:
            if not self._failed:
                self._failed = True
                _log.debug("sd_notify to %r failed (further failures not logged): %s", self._address, exc)
            return False
        return True

    def notify(self, **fields: str | int) -> bool:
        """Send `KEY=value` fields in one datagram: `notify(READY=1, STATUS="serving")`.

        Newlines inside a value would end the field early, so they become spaces. Raises ValueError for
        a key that cannot be a field name (empty, or containing `=` or a newline): a programming error.
        """
        lines = []
        for key, value in fields.items():
            if not key or "=" in key or "\n" in key:
                raise ValueError(f"not an sd_notify field name: {key!r}")
            text = str(value).replace("\n", " ")
            lines.append(f"{key}={text}")
        return self.send("\n".join(lines))

    def ready(self, status: str | None = None) -> bool:
        """Tell systemd the service is up (also ends a reload); `systemctl start` returns on this."""
        return self.notify(READY=1) if status is None else self.notify(READY=1, STATUS=status)

    def reloading(self) -> bool:
        """Tell systemd a reload has begun; send `ready()` when it is done (or has failed).

        `MONOTONIC_USEC` is the current CLOCK_MONOTONIC, which systemd >= 253 requires with `RELOADING=1`
        to tell this reload from an older one under `Type=notify-reload`; older systemd ignores it.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec)

    def stopping(self) -> bool:
        """Tell systemd the service is shutting down (it then waits up to TimeoutStopSec)."""
        return self.notify(STOPPING=1)

    def status(self, text: str) -> bool:
        """Set the one-line status shown by `systemctl status`."""
        return self.notify(STATUS=text)

    def watchdog(self) -> bool:
        """Send one keep-alive ping (`WATCHDOG=1`)."""
        return self.send("WATCHDOG=1")

    def _open(self) -> socket.socket:
        # Non-blocking: when systemd's queue is full, drop the datagram instead of stalling the loop.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        self._sock = sock
        return sock

    def close(self) -> None:
        """Close the socket; a later send opens a new one."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def watchdog_loop(notifier: Notifier, healthy: Callable[[], bool]) -> None:
    """Ping the systemd watchdog every half interval while `healthy()` is true; run as a task.

    Returns at once when no watchdog applies (`notifier.watchdog_interval()` is None); otherwise runs
    until cancelled. It runs on the event loop on purpose: a blocked loop sends no pings. When
    `healthy()` is false, or raises (logged as a warning), that round's ping is skipped, so a runtime
    that stays unhealthy for a whole interval is killed and restarted by systemd.
    """
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    period = interval / 2
    while True:
        try:
            ok = healthy()
        except Exception:
            _log.warning("watchdog health check raised; not pinging this round", exc_info=True)
            ok = False
        if ok:
            notifier.watchdog()
        await asyncio.sleep(period)


def _parse_address(value: str) -> str | bytes | None:
    """The sendto() address for NOTIFY_SOCKET: a path, or the abstract name as bytes with a leading NUL."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value:
        # systemd >= 254 may also pass vsock:CID:PORT (for VMs); not a case for a gateway process.
        _log.debug("NOTIFY_SOCKET=%r is not a path or an abstract socket; notifications disabled", value)
    return None


def _parse_watchdog(env: Mapping[str, str]) -> int | None:
    """WATCHDOG_USEC when it is positive and meant for this process (WATCHDOG_PID absent or ours)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
        pid = env.get("WATCHDOG_PID")
        if pid is not None and int(pid) != os.getpid():
            return None
    except ValueError:
        return None
    return usec if usec > 0 else None
