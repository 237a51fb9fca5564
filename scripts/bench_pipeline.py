#!/usr/bin/env python3
"""Benchmark: the in-process pipeline simulator -> filter -> map -> nop against a bare queue chain.

Each case runs in its own child process so that CPU seconds and peak RSS belong to that case alone.
The reference is a bare 3-hop `asyncio.Queue` chain moving the same number of sensor-like dicts one
at a time (what a naive actor runtime does). Not a test: it prints a table.

    .venv/bin/python scripts/bench_pipeline.py [--count 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
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

[sources.sim]
type = "simulator"
count = {count}
rate = 0
seed = 1

[operators.hot]
type = "filter"
inputs = ["sim"]
where = "temp > 25 and device != 'dev-3'"

[operators.enrich]
type = "map"
inputs = ["hot"]
set = {{ temp_f = "temp * 9 / 5 + 32" }}

[sinks.out]
type = "nop"
inputs = ["enrich"]
"""


def case_edgeflow(count: int) -> dict[str, float]:
    import asyncio

    from edgeflow.runtime import Runtime
    from edgeflow.topology import load_topology

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.toml")
        with open(path, "w") as fh:
            fh.write(TOPOLOGY.format(count=count, data_dir=tmp))
        topo = load_topology(path)
        try:
            import uvloop

            run = uvloop.run
        except ImportError:
            run = asyncio.run
        rt = Runtime(topo)
        t0, c0 = time.perf_counter(), time.process_time()
        code = run(rt.run())
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert code == 0, code
        assert rt.cells["sim"].metrics.out == count
        delivered = rt.cells["out"].metrics.out
    return {"wall": wall, "cpu": cpu, "delivered": delivered}


def case_bare(count: int) -> dict[str, float]:
    import asyncio
    import random

    try:
        import uvloop

        run = uvloop.run
    except ImportError:
        run = asyncio.run

    async def main() -> int:
        q1: asyncio.Queue[dict[str, object] | None] = asyncio.Queue(1024)
        q2: asyncio.Queue[dict[str, object] | None] = asyncio.Queue(1024)
        q3: asyncio.Queue[dict[str, object] | None] = asyncio.Queue(1024)
        rng = random.Random(1)
        names = [f"dev-{i}" for i in range(4)]

        async def produce() -> None:
            for i in range(count):
                ts = time.time()
                await q1.put(
                    {
                        "device": names[i % 4],
                        "temp": round(rng.gauss(25.0, 6.0), 2),
                        "hum": round(rng.uniform(30.0, 70.0), 1),
                        "seq": i,
                        "ts": ts,
                    }
                )
            await q1.put(None)

        async def hop(a: asyncio.Queue[dict[str, object] | None], b: asyncio.Queue[dict[str, object] | None]) -> None:
            while True:
                item = await a.get()
                await b.put(item)
                if item is None:
                    return

        async def consume() -> int:
            n = 0
            while await q3.get() is not None:
                n += 1
            return n

        tasks = [
            asyncio.create_task(produce()),
            asyncio.create_task(hop(q1, q2)),
            asyncio.create_task(hop(q2, q3)),
        ]
        n = await consume()
        await asyncio.gather(*tasks)
        return n

    t0, c0 = time.perf_counter(), time.process_time()
    delivered = run(main())
    return {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0, "delivered": delivered}


def child(case: str, count: int) -> None:
    result = {"edgeflow": case_edgeflow, "bare": case_bare}[case](count)
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def run_case(case: str, count: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", case, "--count", str(count)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best is reported")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.count)
        return
    rows = {}
    for case in ("bare", "edgeflow"):
        runs = [run_case(case, args.count) for _ in range(args.repeat)]
        rows[case] = min(runs, key=lambda r: r["wall"])
    print(f"pipeline: {args.count:,} messages, best of {args.repeat}, {os.cpu_count()} cores")
    print(f"{'case':<44} {'msg/s':>12} {'CPU s':>8} {'us CPU/msg':>11} {'peak RSS MB':>12}")
    labels = {
        "bare": "bare 3-hop asyncio.Queue chain (1 msg/hop)",
        "edgeflow": "edgeflow simulator->filter->map->nop",
    }
    for case, r in rows.items():
        rate = args.count / r["wall"]
        per = r["cpu"] / args.count * 1e6
        print(f"{labels[case]:<44} {rate:>12,.0f} {r['cpu']:>8.2f} {per:>11.2f} {r['rss_mb']:>12.1f}")
    ratio = rows["bare"]["wall"] / rows["edgeflow"]["wall"]
    print(f"edgeflow / bare throughput: {ratio:.2f}x (target >= 1.0x)")


if __name__ == "__main__":
    main()
