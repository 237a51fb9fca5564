#!/usr/bin/env python3
"""Benchmark: the pipeline with a persisting sink buffer (SQLite store-and-forward).

Cases, each in its own child process (so CPU seconds and peak RSS are its own):
  memory      simulator(N) -> filter -> nop, buffer.persist = false
  normal      the same with buffer.persist = true, node.synchronous = "normal"
  full        the same with synchronous = "full" (survives a power cut)
  drain       a backlog of N messages already in the store (an outage that ended) drained by a nop sink

    .venv/bin/python scripts/bench_persist.py [--count 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

TOPOLOGY = """
[node]
id = "bench"
data_dir = "{data_dir}"
synchronous = "{sync}"

[sources.sim]
type = "simulator"
count = {count}
rate = 0
seed = 1

[operators.hot]
type = "filter"
inputs = ["sim"]
where = "seq >= 0"

[sinks.out]
type = "nop"
inputs = ["hot"]
buffer = {{ persist = {persist} }}
"""


def _loop_run(coro):  # type: ignore[no-untyped-def]
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def run_case(case: str, count: int) -> dict[str, float]:
    from edgeflow.runtime import Runtime
    from edgeflow.topology import load_topology

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        sync = "full" if case == "full" else "normal"
        persist = "false" if case == "memory" else "true"
        n = 0 if case == "drain" else count
        path = os.path.join(tmp, "t.toml")
        with open(path, "w") as fh:
            fh.write(TOPOLOGY.format(data_dir=tmp, sync=sync, count=n, persist=persist))
        db_bytes = 0.0
        if case == "drain":
            db_bytes = _loop_run(_fill(os.path.join(tmp, "edgeflow.db"), count))
        rt = Runtime(load_topology(path))
        t0, c0 = time.perf_counter(), time.process_time()
        code = _loop_run(rt.run())
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert code == 0
        delivered = rt.cells["out"].metrics.out
        assert delivered == count, (delivered, count)
    return {"wall": wall, "cpu": cpu, "bytes_per_msg": db_bytes / count if db_bytes else 0.0}


async def _fill(db: str, count: int) -> float:
    from edgeflow.message import Message
    from edgeflow.store import Store

    store = await Store.open(db)
    buf = store.buffer("out")
    ts = time.time()
    for start in range(0, count, 1000):
        await buf.append(
            [
                Message(
                    {"device": f"dev-{i % 4}", "temp": 20.5 + i % 13, "hum": 40.1, "seq": i, "ts": ts}, "sim", None, ts
                )
                for i in range(start, min(count, start + 1000))
            ]
        )
    size = float(buf.stats().bytes)
    await store.close()
    return os.path.getsize(db) if os.path.exists(db) else size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        result = run_case(args.child, args.count)
        result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    rows = {}
    for case in ("memory", "normal", "full", "drain"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", case, "--count", str(args.count)],
            check=True,
            capture_output=True,
            text=True,
        )
        rows[case] = json.loads(out.stdout.strip().splitlines()[-1])
    labels = {
        "memory": "simulator->filter->nop, persist=false",
        "normal": "same, persist=true, synchronous=normal",
        "full": "same, persist=true, synchronous=full",
        "drain": "drain a stored backlog (nop sink)",
    }
    print(f"persistence: {args.count:,} messages, {os.cpu_count()} cores")
    print(f"{'case':<42} {'msg/s':>10} {'CPU s':>7} {'us CPU/msg':>10} {'peak RSS MB':>12} {'disk B/msg':>10}")
    for case, r in rows.items():
        per = r["cpu"] / args.count * 1e6
        disk = f"{r['bytes_per_msg']:.0f}" if r["bytes_per_msg"] else "-"
        print(
            f"{labels[case]:<42} {args.count / r['wall']:>10,.0f} {r['cpu']:>7.2f} {per:>10.2f} "
            f"{r['rss_mb']:>12.1f} {disk:>10}"
        )
    ratio = rows["memory"]["wall"] / rows["normal"]["wall"]
    print(f"persist=true (normal) / persist=false throughput: {ratio:.2f}x (target >= 0.5x); ", end="")
    print(f"normal: {args.count / rows['normal']['wall']:,.0f} msg/s (target >= 100,000)")


if __name__ == "__main__":
    main()
