#!/usr/bin/env python3
"""Benchmark: what edgeflow costs before it moves a single message. Not a test: it prints a table.

- `edgeflow validate config/demo.toml`: wall time of the command as a person runs it (a child
  process: interpreter start, imports, loading the actors the file uses), the median of --runs runs
  after one warm-up run. Target: under 300 ms.
- `python -X importtime -c "import edgeflow.runtime"`: the import cost, summed per top-level package
  (median of --import-runs runs), to say where start-up time goes.
- The demo at rest: `edgeflow run` on a copy of config/demo.toml made endless at a slow rate, in a
  temporary directory; once its status socket answers and it has settled, VmRSS / VmHWM / RssAnon
  from /proc/PID/status and the CPU it burns over --idle seconds. Target: idle RSS under 35 MB.
  Then SIGTERM, and the time until it exits.

    .venv/bin/python scripts/bench_startup.py [--runs 15] [--idle 5]

Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "config" / "demo.toml"
VALIDATE_TARGET_MS = 300.0
RSS_TARGET_MB = 35.0


def edgeflow_cmd() -> list[str]:
    """The `edgeflow` console script next to this interpreter (what a user runs), else `-m`."""
    script = Path(sys.executable).parent / "edgeflow"
    return [str(script)] if script.exists() else [sys.executable, "-m", "edgeflow.cli"]


# -- validate --------------------------------------------------------------------------------------


def time_validate(runs: int) -> list[float]:
    cmd = [*edgeflow_cmd(), "validate", str(DEMO)]
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
        elapsed = (time.perf_counter() - t0) * 1000
        if done.returncode != 0:
            raise SystemExit(f"edgeflow validate failed ({done.returncode}): {done.stderr.strip()}")
        if i:  # the first run warms the page cache
            times.append(elapsed)
    return times


# -- import time -----------------------------------------------------------------------------------

_IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def import_profile(module: str, runs: int) -> tuple[float, dict[str, float], dict[str, float]]:
    """Median total import time (ms), median self time (ms) per top-level package, and per edgeflow module."""
    totals: list[float] = []
    per_pkg: dict[str, list[float]] = {}
    per_mod: dict[str, list[float]] = {}
    for _ in range(runs):
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", f"import {module}"],
            capture_output=True,
            text=True,
            check=True,
        )
        sums: dict[str, float] = {}
        for line in done.stderr.splitlines():
            m = _IMPORT_LINE.match(line)
            if m is None:
                continue
            self_ms, name = int(m[1]) / 1000, m[4]
            top = name.split(".")[0]
            sums[top] = sums.get(top, 0.0) + self_ms
            if top in ("edgeflow", "edgeflow_actors"):
                per_mod.setdefault(name, []).append(self_ms)
        totals.append(sum(sums.values()))
        for pkg, ms in sums.items():
            per_pkg.setdefault(pkg, []).append(ms)

    def medians(d: dict[str, list[float]]) -> dict[str, float]:
        return {k: statistics.median(v + [0.0] * (runs - len(v))) for k, v in d.items()}

    return statistics.median(totals), medians(per_pkg), medians(per_mod)


def baseline_import_ms(runs: int) -> float:
    """What the interpreter imports on its own (site, encodings...), for comparison."""
    total, _, _ = import_profile("sys", runs)
    return total


# -- the demo at rest ------------------------------------------------------------------------------


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def dump_topology(data: dict[str, Any]) -> str:
    """TOML text for a topology: top-level tables, and one table per actor or connection."""
    out: list[str] = []
    for section, body in data.items():
        if section in ("sources", "operators", "sinks", "connections"):
            for name, table in body.items():
                out.append(f"[{section}.{_toml_key(name)}]")
                out.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items())
                out.append("")
        else:
            out.append(f"[{section}]")
            out.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in body.items())
            out.append("")
    return "\n".join(out)


def endless_demo(tmp: Path, rate: float) -> Path:
    """config/demo.toml with its simulators made endless at `rate`/s, and all its files under `tmp`."""
    data = tomllib.loads(DEMO.read_text(encoding="utf-8"))

    def relocate(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("./data"):
            return str(tmp / "data" / value[len("./data") :].lstrip("/"))
        return value

    data.setdefault("node", {})["data_dir"] = str(tmp / "data")
    for section in ("sources", "operators", "sinks"):
        for table in data.get(section, {}).values():
            for key, value in table.items():
                table[key] = relocate(value)
            if section == "sources" and table.get("type") == "simulator":
                table.pop("count", None)
                table["rate"] = rate
    path = tmp / "demo-endless.toml"
    path.write_text(dump_topology(data), encoding="utf-8")
    return path


def proc_status(pid: int) -> dict[str, int]:
    """The kB figures of /proc/PID/status that matter here."""
    wanted = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat(5)
    return (utime + stime) / os.sysconf("SC_CLK_TCK")


def interpreter_rss(code: str) -> int:
    """VmRSS (kB) of a fresh interpreter after running `code`."""
    probe = (
        f"{code}\nimport pathlib\n"
        "print([l.split()[1] for l in pathlib.Path('/proc/self/status').read_text().splitlines() "
        "if l.startswith('VmRSS:')][0])"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


def demo_at_rest(idle: float, rate: float, settle: float) -> dict[str, Any]:
    from edgeflow.status import query_status, socket_path

    with tempfile.TemporaryDirectory(prefix="edgeflow-bench-") as tmpdir:
        tmp = Path(tmpdir)
        topo = endless_demo(tmp, rate)
        log = (tmp / "run.log").open("w")
        t0 = time.perf_counter()
        proc = subprocess.Popen([*edgeflow_cmd(), "run", str(topo)], stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
        try:
            sock = socket_path(tmp / "data")
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"edgeflow run exited with {proc.returncode}: {(tmp / 'run.log').read_text()}")
                try:
                    doc = query_status(sock, timeout=1.0)
                    if doc.get("state") == "running":
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("edgeflow run did not answer on its status socket within 30 s")
                time.sleep(0.01)
            ready_ms = (time.perf_counter() - t0) * 1000
            time.sleep(settle)  # let the first batches, the log handler and the file sink settle
            status_cli = subprocess.run(
                [*edgeflow_cmd(), "status", "--data-dir", str(tmp / "data")],
                capture_output=True,
                text=True,
                check=False,
            )
            c0, w0 = cpu_seconds(proc.pid), time.monotonic()
            time.sleep(idle)
            c1, w1 = cpu_seconds(proc.pid), time.monotonic()
            mem = proc_status(proc.pid)
            t_term = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
            stop_ms = (time.perf_counter() - t_term) * 1000
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    return {
        "ready_ms": ready_ms,
        "cpu_s_per_min": (c1 - c0) / (w1 - w0) * 60,
        "rss_mb": mem["VmRSS"] / 1024,
        "hwm_mb": mem["VmHWM"] / 1024,
        "anon_mb": mem["RssAnon"] / 1024,
        "file_mb": mem["RssFile"] / 1024,
        "stop_ms": stop_ms,
        "exit_code": code,
        "status_rc": status_cli.returncode,
        "status_out": status_cli.stdout,
    }


# -- report ----------------------------------------------------------------------------------------


def verdict(value: float, target: float) -> str:
    return "ok" if value < target else "MISSED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="edgeflow start-up cost: validate time, imports, idle demo.")
    parser.add_argument("--runs", type=int, default=15, help="runs of `edgeflow validate` (median)")
    parser.add_argument("--import-runs", type=int, default=5, help="runs of -X importtime (median)")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measurement")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after start before measuring")
    parser.add_argument("--rate", type=float, default=1.0, help="records/s of the endless demo")
    parser.add_argument("--top", type=int, default=10, help="packages to list in the import profile")
    args = parser.parse_args(argv)

    print(f"edgeflow start-up benchmark  (python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    print(f"command: {' '.join(edgeflow_cmd())}\n")

    validate = time_validate(args.runs)
    total_ms, per_pkg, per_mod = import_profile("edgeflow.runtime", args.import_runs)
    base_ms = baseline_import_ms(args.import_runs)
    rss_bare = interpreter_rss("pass") / 1024
    rss_import = interpreter_rss("import edgeflow.runtime") / 1024
    demo = demo_at_rest(args.idle, args.rate, args.settle)

    med = statistics.median(validate)
    rows = [
        (
            f"edgeflow validate demo.toml, wall (median of {len(validate)})",
            f"{med:.0f} ms (min {min(validate):.0f}, max {max(validate):.0f})",
            f"< {VALIDATE_TARGET_MS:.0f} ms",
            verdict(med, VALIDATE_TARGET_MS),
        ),
        ("import edgeflow.runtime (-X importtime, sum)", f"{total_ms:.0f} ms", "", ""),
        ("  of which the bare interpreter (import sys)", f"{base_ms:.0f} ms", "", ""),
        ("demo: start until status answers", f"{demo['ready_ms']:.0f} ms", "", ""),
        (
            "demo idle RSS (VmRSS)",
            f"{demo['rss_mb']:.1f} MB (anon {demo['anon_mb']:.1f}, file {demo['file_mb']:.1f})",
            f"< {RSS_TARGET_MB:.0f} MB",
            verdict(demo["rss_mb"], RSS_TARGET_MB),
        ),
        ("demo peak RSS (VmHWM)", f"{demo['hwm_mb']:.1f} MB", "", ""),
        ("  python -c pass / import edgeflow.runtime", f"{rss_bare:.1f} MB / {rss_import:.1f} MB", "", ""),
        (
            f"demo idle CPU ({args.rate:g} rec/s, over {args.idle:g} s)",
            f"{demo['cpu_s_per_min']:.2f} CPU s/min (resolution {60 / os.sysconf('SC_CLK_TCK') / args.idle:.2f})",
            "",
            "",
        ),
        ("demo SIGTERM until exit", f"{demo['stop_ms']:.0f} ms (exit {demo['exit_code']})", "", ""),
    ]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    header = ("measure", "figure", "target", "")
    print(f"{header[0]:<{w[0]}}  {header[1]:<{w[1]}}  {header[2]:<{w[2]}}")
    print("-" * (sum(w) + 6))
    for r in rows:
        print(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}".rstrip())

    print(f"\nimport edgeflow.runtime, self time per top-level package (median of {args.import_runs}):")
    for pkg, ms in sorted(per_pkg.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {pkg:<28} {ms:6.1f} ms")
    print("edgeflow's own modules, self time (module body: dataclass creation, regex compiles...):")
    for mod, ms in sorted(per_mod.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"  {mod:<28} {ms:6.1f} ms")

    print(f"\n`edgeflow status` of the idle demo (exit {demo['status_rc']}):")
    for line in str(demo["status_out"]).splitlines():
        print("  " + line)
    missed = med >= VALIDATE_TARGET_MS or demo["rss_mb"] >= RSS_TARGET_MB
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
