"""At-least-once through SIGKILL: file source (tailing) -> persisting http sink -> a recording server.

A writer thread appends JSON lines with increasing ids while the runtime is killed with SIGKILL at
random moments and restarted, once while the HTTP server is down (so messages sit in the sink's
buffer on disk when the process dies). At the end every id written must have reached the server, and
the first time each id arrived must be in the order written; duplicates are allowed and counted.

It runs twice: with the sink's persisting buffer (the default for http), and without one, where
lines are durable only once the server answered, so the file source's offset alone must hold them.

The seed is printed; rerun one with EDGEFLOW_KILL_SEED=<seed>.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import EDGEFLOW, child_env, run_cli, wait_until
from http_server import RecordingServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

LINES = 30_000
CHUNK = 60  # lines per write
KILLS = 8


def write_lines(path: Path, done: threading.Event, pace: threading.Event) -> None:
    """Append LINES lines in chunks, about 4,000 lines a second, then set `done`."""
    n = 0
    with open(path, "ab", buffering=0) as fh:
        while n < LINES:
            end = min(n + CHUNK, LINES)
            fh.write("".join(json.dumps({"id": i, "pad": "p" * (i % 40)}) + "\n" for i in range(n, end)).encode())
            n = end
            pace.wait(0.015)  # the writer's own pace (an event nobody sets), not a synchronisation
    done.set()


@pytest.mark.parametrize("persist", [True, False], ids=["buffered", "unbuffered"])
def test_every_line_written_arrives_at_least_once_and_in_order_through_repeated_sigkills(
    topology, tmp_path, record_property, persist
):
    seed = int(os.environ.get("EDGEFLOW_KILL_SEED") or random.SystemRandom().randrange(2**32))
    print(f"kill harness seed: {seed}")
    rng = random.Random(seed)
    src = tmp_path / "readings.jsonl"
    src.touch()
    server = RecordingServer()
    path = topology(
        f"""
[supervisor]
backoff = {{ initial = "20ms", max = "200ms" }}

[sources.tail]
type = "file"
path = "{src}"
poll_interval = "20ms"

[sinks.http]
type = "http"
inputs = ["tail"]
url = "{server.url}/ingest"
batch_size = 20
buffer = {{ persist = {str(persist).lower()} }}
"""
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    runs = 0

    def start() -> subprocess.Popen[bytes]:
        nonlocal runs
        runs += 1
        with open(logs / f"run-{runs}.log", "wb") as log:
            return subprocess.Popen([*EDGEFLOW, "run", str(path)], stdout=log, stderr=log, env=child_env())

    def received() -> list[int]:
        return [p["id"] for b in server.bodies for p in b]

    def status() -> dict | None:
        r = run_cli("status", str(path), "--json", timeout=10)
        return json.loads(r.stdout) if r.returncode == 0 else None

    done, pace = threading.Event(), threading.Event()
    writer = threading.Thread(target=write_lines, args=(src, done, pace), daemon=True)
    t0 = time.monotonic()
    server.start()
    proc = start()
    writer.start()
    outage_at = rng.randrange(1, KILLS - 1)
    try:
        for k in range(KILLS):
            # A random amount of progress, then a random instant: mid-read, mid-commit, mid-request.
            target = len(server.accepted) + rng.randint(5, 60)
            server.wait_for(lambda s, t=target: len(s.accepted) >= t, 30, "progress before a kill")
            pace.wait(rng.uniform(0, 0.3))
            if k == outage_at:
                server.stop()

                def held() -> bool:
                    doc = status()
                    if not doc:
                        return False
                    http = doc["actors"]["http"]
                    return (http["buffer"]["messages"] if persist else http["mailbox"]["depth"]) > 0

                wait_until(held, 20, "messages held while the server is down")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            proc = start()
            if k == outage_at:
                wait_until(status, 20, "the restarted runtime")
                server.start()
        writer.join(60)
        assert done.is_set()
        server.wait_for(lambda s: bool(s.accepted) and LINES - 1 in received(), 40, "the last id")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        finally:
            proc.kill()
            server.stop()
    took = time.monotonic() - t0
    ids = received()
    seen: set[int] = set()
    first: list[int] = []
    for i in ids:
        if i not in seen:
            seen.add(i)
            first.append(i)
    duplicates = len(ids) - len(seen)
    print(f"{LINES} lines, {KILLS} SIGKILLs ({runs} runs), {duplicates} duplicates, {took:.1f}s, seed {seed}")
    record_property("duplicates", duplicates)
    record_property("seed", seed)
    assert proc.returncode == 0, (logs / f"run-{runs}.log").read_text()
    assert seen == set(range(LINES)), f"missing ids: {sorted(set(range(LINES)) - seen)[:20]}"
    assert first == list(range(LINES)), "ids first arrived out of order"
    assert duplicates < LINES  # finite: a restart re-reads from the stored offset, not from the start
