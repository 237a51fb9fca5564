"""Micro-benchmark of the durable store (edgeflow.store).

Each row runs in a fresh child process so its peak RSS is its own. Prints: operation, messages/s,
CPU seconds (both threads), peak RSS MB, and notes (bytes on disk per message, commits).

The drain rows first build an (untimed) backlog of n messages appended in batches of `fill`, then
empty it: "read+delete" reads `batch` messages and deletes them (a sink catching up on a backlog);
"delete ranges" deletes `batch` seqs at a time without reading (a sink acknowledging the batches it was
handed from memory, in pieces of its `max_batch`).

    .venv/bin/python scripts/bench_store.py            # 1,000,000 messages per row
    .venv/bin/python scripts/bench_store.py -n 200000  # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (name, kind, batch, synchronous, producers, fill: the backlog's append size)
ROWS = [
    ("append batch=4096 normal", "append", 4096, "normal", 1, 0),
    ("append batch=1000 normal", "append", 1000, "normal", 1, 0),
    ("append batch=100 normal", "append", 100, "normal", 1, 0),
    ("append batch=1000 normal, 4 producers", "append", 1000, "normal", 4, 0),
    ("append batch=100 normal, 4 producers", "append", 100, "normal", 4, 0),
    ("append batch=1000 full", "append", 1000, "full", 1, 0),
    ("append batch=100 full", "append", 100, "full", 1, 0),
    ("drain read+delete 1000 (backlog n)", "drain", 1000, "normal", 1, 1000),
    ("drain read+delete 100 (fill 4096)", "drain", 100, "normal", 1, 4096),
    ("drain delete ranges of 1000 (fill 4096)", "ack", 1000, "normal", 1, 4096),
    ("open with a backlog of n (quick_check)", "open", 1000, "normal", 1, 1000),
]


def batch_of(k: int, size: int) -> list:
    from edgeflow.message import Message

    return [
        Message({"device": f"dev-{(k + i) % 50:03d}", "temp": 21.5, "hum": 40.2, "n": i}, "temps", "plant/1/temp")
        for i in range(size)
    ]


async def produce(store, name: str, n: int, batch: int) -> int:
    """Append n messages (rounded down to whole batches); returns how many."""
    buf = store.buffer(name)
    msgs = batch_of(0, batch)
    for _ in range(n // batch):
        now = time.time()
        for m in msgs:  # fresh timestamps, as a live source has (reused objects: no allocation noise)
            m.ts = now
        await buf.append(msgs)
    return n // batch * batch


async def child(kind: str, n: int, batch: int, mode: str, producers: int, fill: int, directory: Path) -> dict:
    from edgeflow.store import Store

    path = directory / "bench.db"
    notes = ""
    done = n
    if fill:  # untimed: build the backlog
        store = await Store.open(path)
        done = await produce(store, "b", n, fill)
        await store.close()
    t0, c0 = time.perf_counter(), time.process_time()
    if kind == "append":
        store = await Store.open(path, synchronous=mode)
        per = n // producers
        done = sum(await asyncio.gather(*(produce(store, f"b{p}", per, batch) for p in range(producers))))
        commits = store.commits
        elapsed = time.perf_counter() - t0
        await store.close()
        size = sum(p.stat().st_size for p in directory.iterdir())
        notes = f"{size / done:.0f} B/msg on disk, {commits} commits"
    elif kind == "drain":
        store = await Store.open(path)
        buf = store.buffer("b")
        while rows := await buf.read(batch):
            await buf.delete([seq for seq, _ in rows])
        elapsed = time.perf_counter() - t0
        assert buf.stats().count == 0
        await store.close()
    elif kind == "ack":
        store = await Store.open(path)
        buf = store.buffer("b")
        total = buf.stats().count
        for first in range(1, total + 1, batch):
            await buf.delete(range(first, min(total + 1, first + batch)))
        elapsed = time.perf_counter() - t0
        assert buf.stats().count == 0
        await store.close()
    else:
        store = await Store.open(path)
        elapsed = time.perf_counter() - t0
        notes = f"open took {elapsed * 1000:.0f} ms for {store.buffer('b').stats().count} messages"
        await store.close()
    return {
        "rate": done / elapsed if kind != "open" else None,
        "cpu": time.process_time() - c0,
        "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "notes": notes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1_000_000, help="messages per row (default 1,000,000)")
    parser.add_argument("--dir", default=None, help="where to put the store files (default: a temp dir)")
    parser.add_argument("--uvloop", action="store_true", help="run the children on uvloop")
    parser.add_argument("--row", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row is not None:
        _, kind, batch, mode, producers, fill = ROWS[args.row]
        if args.uvloop:
            import uvloop

            uvloop.install()
        print(json.dumps(asyncio.run(child(kind, args.n, batch, mode, producers, fill, Path(args.dir)))))
        return
    print(f"{'operation':44s} {'msg/s':>10s} {'CPU s':>7s} {'RSS MB':>7s}  notes  (n={args.n:,})")
    for i, (name, *_) in enumerate(ROWS):
        directory = Path(tempfile.mkdtemp(prefix="edgeflow-bench-", dir=args.dir))
        try:
            cmd = [sys.executable, __file__, "--row", str(i), "-n", str(args.n), "--dir", str(directory)]
            if args.uvloop:
                cmd.append("--uvloop")
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        rate = f"{r['rate']:,.0f}" if r["rate"] else "-"
        print(f"{name:44s} {rate:>10s} {r['cpu']:7.2f} {r['rss']:7.1f}  {r['notes']}", flush=True)
    print(f"python {sys.version.split()[0]}, sqlite {__import__('sqlite3').sqlite_version}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
