"""The control plane's figures: command round trip, a fleet sweep, and what a small node costs.

    .venv/bin/python scripts/bench_control.py [--nodes 20] [--pings 200] [--sweeps 10] [--nodelay]

Starts a private mosquitto on a free loopback port and `--nodes` runtimes (`edgeflow run`, each a
simulator at 1 record/s into a nop sink, with a signed `[control]`), then measures:

- startup: from spawning all nodes to the last full status document (the plane subscribed);
- ping: sequential signed pings to one node from an in-process `ControlClient` (p50, p99, max);
- sweep: `status` to `all`, waiting for every node's reply (in-process; median and max of `--sweeps`);
- ctl: the wall time of `edgeflow ctl --all status --expect N` (process start to exit);
- rss: the resident memory of each node after the sweeps.

`--nodelay` sets mosquitto's `set_tcp_nodelay true`: by default the broker's Nagle holds a reply
back while an earlier one to the same client awaits its (delayed) ACK, which shows in the sweep.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

KEY = "bench-control-key-0123456789abcdef"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--pings", type=int, default=200)
    parser.add_argument("--sweeps", type=int, default=10)
    parser.add_argument("--nodelay", action="store_true", help="mosquitto with set_tcp_nodelay true")
    opts = parser.parse_args()

    import paho.mqtt.client as mqtt
    from mqtt_broker import MosquittoBroker
    from paho.mqtt.enums import CallbackAPIVersion

    with tempfile.TemporaryDirectory(prefix="efb-") as tmp_name:
        tmp = Path(tmp_name)
        key_file = tmp / "key"
        key_file.write_text(KEY)
        extra = "set_tcp_nodelay true\n" if opts.nodelay else ""
        with MosquittoBroker(tmp, extra_config=extra) as broker:
            ready: set[str] = set()
            cond = threading.Condition()

            def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
                doc = json.loads(msg.payload)
                if doc.get("runtime") == "running":
                    with cond:
                        ready.add(doc["node"])
                        cond.notify_all()

            watcher = mqtt.Client(CallbackAPIVersion.VERSION2)
            watcher.on_message = on_message
            watcher.connect("127.0.0.1", broker.port)
            watcher.subscribe("bench/+/status", 1)
            watcher.loop_start()
            procs = []
            t0 = time.monotonic()
            for i in range(opts.nodes):
                node = f"n{i:03d}"
                path = tmp / f"{node}.toml"
                path.write_text(
                    f'[node]\nid = "{node}"\ndata_dir = "{tmp / node}"\n\n'
                    f'[control]\nconnection = "site"\nprefix = "bench"\nhmac_key_file = "{key_file}"\n\n'
                    f'[connections.site]\ntype = "mqtt"\nurl = "{broker.url}"\n\n'
                    '[sources.sim]\ntype = "simulator"\nrate = 1\n\n[sinks.out]\ntype = "nop"\ninputs = ["sim"]\n'
                )
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "edgeflow.cli", "run", str(path)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            with cond:
                if not cond.wait_for(lambda: len(ready) == opts.nodes, timeout=120):
                    sys.exit(f"only {len(ready)} of {opts.nodes} nodes came up")
            startup = time.monotonic() - t0
            try:
                pings, sweeps = asyncio.run(_measure(broker.url, opts))
                t1 = time.monotonic()
                ctl = [sys.executable, "-m", "edgeflow.cli", "ctl", "--broker", broker.url, "--prefix", "bench"]
                ctl += ["--key-file", str(key_file), "--all", "--expect", str(opts.nodes), "status"]
                done = subprocess.run(ctl, capture_output=True, text=True, timeout=60, check=False)
                ctl_wall = time.monotonic() - t1
                assert done.returncode == 0, done.stdout + done.stderr
                rss = [_rss_mib(p.pid) for p in procs]
            finally:
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.wait(30)
                watcher.loop_stop()
    ms = [p * 1000 for p in pings]
    print(f"nodes: {opts.nodes}; startup to the last full status document: {startup:.2f}s")
    print(
        f"ping round trip ({len(ms)} sequential, signed): p50 {statistics.median(ms):.2f} ms, "
        f"p99 {sorted(ms)[int(len(ms) * 0.99) - 1]:.2f} ms, max {max(ms):.2f} ms"
    )
    print(
        f"status sweep of {opts.nodes} nodes (in-process, {len(sweeps)} runs): median "
        f"{statistics.median(sweeps) * 1000:.1f} ms, max {max(sweeps) * 1000:.1f} ms"
    )
    print(f"edgeflow ctl --all status --expect {opts.nodes}: {ctl_wall:.2f}s wall (process start to exit)")
    print(f"node RSS: median {statistics.median(rss):.1f} MiB, max {max(rss):.1f} MiB, total {sum(rss):.0f} MiB")


async def _measure(url: str, opts: argparse.Namespace) -> tuple[list[float], list[float]]:
    from edgeflow.control_client import ControlClient

    pings: list[float] = []
    sweeps: list[float] = []
    async with ControlClient(ControlClient.settings_for(url), prefix="bench", key=KEY.encode()) as client:
        for _ in range(opts.pings):
            replies = await client.command("n000", "ping", timeout=5)
            assert replies, "no reply"
            assert replies[0].ok, replies[0].doc
            pings.append(replies[0].rtt)
        for _ in range(opts.sweeps):
            t = time.perf_counter()
            replies = await client.command("all", "status", timeout=10, expect=opts.nodes)
            assert len(replies) == opts.nodes, len(replies)
            sweeps.append(time.perf_counter() - t)
    return pings, sweeps


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


if __name__ == "__main__":
    os.environ.pop("NOTIFY_SOCKET", None)
    main()
