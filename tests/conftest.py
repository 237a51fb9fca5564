"""Shared test helpers: topology files in tmp dirs, the CLI as a real child process, waiting on conditions."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

PLUGINS = str(Path(__file__).parent / "plugins")
if PLUGINS not in sys.path:
    sys.path.insert(0, PLUGINS)  # test actors, found through their entry points like any plugin

EDGEFLOW = [sys.executable, "-m", "edgeflow.cli"]


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PLUGINS, env.get("PYTHONPATH", "")) if p)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("JOURNAL_STREAM", None)
    env.update(extra)
    return env


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)  # polling interval of a condition with a deadline, not a synchronisation guess


async def eventually(condition: Callable[[], Any], limit: float = 20.0) -> None:
    """Inside an in-process runtime test: let the runtime run until `condition()` holds (or fail)."""
    async with asyncio.timeout(limit):
        while not condition():
            await asyncio.sleep(0.01)  # yields to the runtime under test; bounded by the timeout


def read_jsonl(path: Path) -> list[Any]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def topology(tmp_path: Path) -> Callable[[str], Path]:
    """Write a topology (with node.data_dir in tmp_path unless given) and return its path."""

    def write(text: str, name: str = "topology.toml") -> Path:
        if "[node]" not in text:
            text = f'[node]\nid = "test"\ndata_dir = "{tmp_path / "data"}"\n\n' + text
        path = tmp_path / name
        path.write_text(text)
        return path

    return write


def run_cli(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGEFLOW, *args], capture_output=True, text=True, timeout=timeout, env=child_env(**env))


class RuntimeProcess:
    """`edgeflow run` as a child process whose log (stderr) a thread collects, for `wait_for_log`."""

    def __init__(self, path: Path, *, log: Path | None = None) -> None:
        self.path = path
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._log = log
        self.proc = subprocess.Popen(
            [*EDGEFLOW, "run", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
            if self._log is not None:
                with open(self._log, "a") as fh:
                    fh.write(line)

    def wait_for_log(self, pattern: str, timeout: float = 10.0, count: int = 1) -> list[str]:
        """The first `count` log lines matching `pattern`, waiting for them (the test fails after `timeout`)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [line for line in self.lines if regex.search(line)]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    pytest.fail(f"no log line matching {pattern!r} within {timeout}s:\n{self.log_text()}")
                self._changed.wait(remaining)

    def log_text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def start_runtime(path: Path, *extra: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*EDGEFLOW, "run", str(path), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(**env),
    )
