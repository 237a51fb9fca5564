"""Throughput of compiled expressions over 1,000,000 payloads (run: .venv/bin/python scripts/bench_expr.py).

Each figure is the best of 3 runs of a plain `for` loop calling the compiled function on every payload,
so loop overhead is included, as it is in an operator's batch loop. A hand-written lambda doing the same
work is timed as the floor the generated code can be compared with.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from edgeflow.expr import compile_expr, compile_map, compile_predicate, compile_template
from edgeflow.message import Message

N = 1_000_000


def payloads() -> list[dict[str, Any]]:
    return [
        {"device": f"dev-{i % 10}", "temp": 25.0 + (i % 100) / 10, "hum": 40.1, "seq": i, "ts": 1.7e9 + i}
        for i in range(N)
    ]


def bench(name: str, fn: Callable[[Any, Message], Any], data: list[dict[str, Any]], msg: Message) -> None:
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for p in data:
            fn(p, msg)
        best = min(best, time.perf_counter() - t0)
    print(f"{name:<58} {N / best / 1e6:6.2f} M/s  {best / N * 1e9:6.0f} ns/call")


def main() -> None:
    data = payloads()
    msg = Message(data[0], source="bench", topic="sensors/dev-3")
    where = "temp > 30 and device != 'test'"
    bench(f"predicate {where!r}", compile_predicate(where).fn, data, msg)
    bench("  hand-written lambda, same work", lambda p, m: p["temp"] > 30 and p["device"] != "test", data, msg)
    bench("  Expr.__call__ (not the hot path)", compile_predicate(where), data, msg)
    bench("expr 'temp * 9 / 5 + 32'", compile_expr("temp * 9 / 5 + 32").fn, data, msg)
    bench("map set={temp_f='temp * 9 / 5 + 32'}", compile_map({"temp_f": "temp * 9 / 5 + 32"}, []), data, msg)
    bench(
        "  hand-written lambda, same work",
        lambda p, m: {**p, "temp_f": p["temp"] * 9 / 5 + 32},
        data,
        msg,
    )
    bench(
        "map set={temp_f=..., dev=upper(device)} drop=['hum']",
        compile_map({"temp_f": "temp * 9 / 5 + 32", "dev": "upper(device)"}, ["hum"]),
        data,
        msg,
    )
    bench("template 'cloud/{device}/avg'", compile_template("cloud/{device}/avg"), data, msg)
    bench(
        "template 'cloud/{meta.source}/{round(temp, 1)}'",
        compile_template("cloud/{meta.source}/{round(temp, 1)}"),
        data,
        msg,
    )


if __name__ == "__main__":
    main()
