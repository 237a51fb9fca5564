"""A real HTTP server for tests: aiohttp on a free loopback port, in a thread, recording what it accepted.

Usage::

    server = RecordingServer(respond=lambda path, body: 503 if ... else 200)
    with server:                                   # start() ... stop()
        server.url                                 # http://127.0.0.1:<port>
        server.stop(); server.start()              # an outage: the same port again
        server.wait_for(lambda s: len(s.accepted) >= 10, timeout=20)

With `ssl_context` it serves HTTPS (client certificates as that context demands). `respond(path, body)`
picks the status of each request (200 by default); a 2xx request is added to `accepted` as (path,
decoded JSON body), every request to `attempts`. `wait_for` waits on a condition
variable notified by every request, never on a sleep.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from aiohttp import web

__all__ = ["RecordingServer", "free_port"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RecordingServer:
    def __init__(
        self,
        respond: Callable[[str, Any], int] | None = None,
        port: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.respond = respond or (lambda path, body: 200)
        self.port = port or free_port()
        self.ssl_context = ssl_context
        self.accepted: list[tuple[str, Any]] = []
        self.attempts: list[tuple[str, Any, int]] = []
        self.headers: list[dict[str, str]] = []
        self.changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def bodies(self) -> list[Any]:
        with self.changed:
            return [body for _, body in self.accepted]

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw)
        status = self.respond(request.path, body)
        with self.changed:
            self.attempts.append((request.path, body, status))
            self.headers.append(dict(request.headers))
            if 200 <= status < 300:
                self.accepted.append((request.path, body))
            self.changed.notify_all()
        text = "ok" if status < 400 else f"rejected: status {status} for this payload"
        return web.Response(status=status, text=text)

    def start(self) -> None:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            try:
                loop.run_until_complete(self._runner.setup())
                site = web.TCPSite(
                    self._runner, "127.0.0.1", self.port, reuse_address=True, ssl_context=self.ssl_context
                )
                loop.run_until_complete(site.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"http-server:{self.port}", daemon=True)
        self._thread.start()
        started.wait(10)
        if failure:
            raise failure[0]

    def stop(self) -> None:
        """Close the listening socket and every connection; returns once the port is free."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._loop = self._thread = None

    def wait_for(self, condition: Callable[[RecordingServer], Any], timeout: float, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not condition(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
                self.changed.wait(left)

    def __enter__(self) -> RecordingServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
