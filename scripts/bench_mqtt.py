#!/usr/bin/env python3
"""Benchmark: MQTT in -> filter -> MQTT out through mosquitto, edgeflow beside a bare paho relay.

A fresh mosquitto on a free loopback port per case; JSON sensor readings of ~124 bytes (device, temp,
hum, seq, ts_ns...) go in on `bench/in`, the relay keeps those with `temp > 20` (90%) and publishes
them on `bench/out`. The relay is either `edgeflow run` with a generated topology (mqtt source ->
filter -> mqtt sink, one shared connection, MQTT 5; the sink buffer persists at QoS 1 only) or a bare
paho-mqtt script in the same run (`bare_relay`: one thread, `loop_forever`, `json.loads`, test,
publish the received bytes; MQTT 5, 100 QoS 1 publishes in flight as edgeflow's default).

Load: floods are `mosquitto_pub -l` (C; ~100k msg/s at QoS 0, ~40k at QoS 1 here) fed through a pipe
kept open until the end (mosquitto_pub 2.0.11 exits at EOF with its QoS 1 queue unsent, losing ~65%);
paced runs are a Python paho publisher on a precise schedule stamping `ts_ns` when it sends. Output is
`mosquitto_sub -F '%U %p'` into a file, stamped on receipt; latency = that stamp - ts_ns (one clock).
The broker gets `max_inflight_messages 1000` and `max_queued_messages 100000` (mosquitto's defaults,
20 in flight per client and 1000 queued, would throttle QoS 1 and drop the flood).

Per case: end-to-end msg/s (input, and output, over first publish -> last output); CPU microseconds
per input (and per output) message of the relay process only (/proc/<pid>/stat utime+stime, all
threads, from "ready" to "all output arrived and the relay went idle"); its peak RSS (VmHWM); lost
(expected seq never seen) and duplicates; p50/p99/max latency when paced; the 1-minute load average
(other work on a 2-core box skews everything: compare within one run). Not a test: it prints a table.

    .venv/bin/python scripts/bench_mqtt.py [--count 100000] [--rate 5000]
        [--cases q0-flood,q1-flood,q0-paced,q1-paced] [--impls bare,edgeflow]
        [--profile [q0-flood,q1-flood]] [--keep DIR] [--broker-option 'set_tcp_nodelay true']
        [--edgeflow-cmd 'python other_build.py']

`--profile` then runs edgeflow again on those cases under `py-spy record --threads --nonblocking`
and prints the top self-time frames (not part of the table). With uvloop, `Runner.run` self time is
the loop's own C code. `--cases ''` profiles only.

mosquitto 2.0.11 (this box) does not hold to a client's Receive Maximum when acknowledgements come in
bursts: PUBACKs release more queued messages than the window allows (see RECEIVE_MAXIMUM). The bare
relay holds that backlog in its deque; edgeflow stops reading while its source is backlogged, reading
on only for its own PUBACKs and a bounded number of messages (edgeflow/mqtt/connection.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

TOPIC_IN = "bench/in"
TOPIC_OUT = "bench/out"
CASES = ("q0-flood", "q1-flood", "q0-paced", "q1-paced")
IMPLS = ("bare", "edgeflow")
PROBE = b'{"device":"probe","temp":99.0,"hum":0.0,"seq":-1,"ts_ns":0,"site":"plant-a","unit":"C"}'
CLK_TCK = os.sysconf("SC_CLK_TCK")
# QoS 1 messages the broker may send the bare relay before it acknowledges any (an MQTT 5 client that
# does not say gets mosquitto's max_inflight_messages). mosquitto 2.0.11 overshoots it by far when the
# client also publishes QoS 1: one PUBACK from the client released ten deliveries in a trace, and a
# client with Receive Maximum 10 held 12,000 unacknowledged messages in a flood.
RECEIVE_MAXIMUM = 1000
WINDOW = 100  # QoS 1 publishes in flight, as edgeflow's connection allows by default

TOPOLOGY = """
[node]
id = "bench"
data_dir = "{data_dir}"
log_level = "warning"

[connections.broker]
type = "mqtt"
url = "mqtt://127.0.0.1:{port}"
client_id = "edgeflow-bench"

[sources.in]
type = "mqtt"
connection = "broker"
topics = ["{topic_in}"]
qos = {qos}
format = "json"

[operators.hot]
type = "filter"
inputs = ["in"]
where = "temp > 20"

[sinks.out]
type = "mqtt"
inputs = ["hot"]
connection = "broker"
topic = "{topic_out}"
qos = {qos}
format = "json"
buffer = {{ persist = {persist} }}
"""


def reading(i: int, ts_ns: int) -> bytes:
    """Message `i`: every tenth is cold (temp <= 20) and filtered out; the rest pass. ~120 bytes."""
    temp = 12.0 + (i % 7) / 10 if i % 10 == 0 else 20.5 + (i * 37 % 150) / 10
    return (
        f'{{"device":"dev-{i % 64:03d}","temp":{temp:.1f},"hum":{40 + (i % 400) / 10:.1f},'
        f'"seq":{i},"ts_ns":{ts_ns},"site":"plant-a","unit":"C","fw":"1.4.2"}}'
    ).encode()


def passes(i: int) -> bool:
    return i % 10 != 0


# --- child processes: the bare relay and the paced publisher ------------------------------------------


def bare_relay(port: int, qos: int, naive: bool = False) -> None:
    """The reference: paho's own loop in the main thread; parse, filter, publish the received bytes.

    At QoS 1 an input is acknowledged once its output's PUBACK came back (at once if filtered out),
    and at most `WINDOW` outputs are handed to paho, the rest wait in a deque. The naive relay
    (`--naive`: paho's automatic ack, every output handed to paho) loses messages in a flood: inputs
    are acknowledged faster than outputs leave, paho queues them all, and past 65,535 queued its 16-bit
    packet ids wrap and overwrite queued messages. Bounding paho's queue ourselves is needed even with
    manual acks, because mosquitto 2.0.11 does not hold to our Receive Maximum here (see `RECEIVE_MAXIMUM`).
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    manual = qos > 0 and not naive
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bare-relay", protocol=mqtt.MQTTv5, manual_ack=manual)
    client.max_inflight_messages_set(WINDOW)
    loads = json.loads
    publish = client.publish
    ack = client.ack
    waiting: dict[int, int] = {}  # output mid -> input mid
    backlog: deque[tuple[bytes | bytearray, int]] = deque()  # (payload, input mid) not yet handed to paho

    def on_message(c: mqtt.Client, userdata: Any, m: mqtt.MQTTMessage) -> None:
        if loads(m.payload)["temp"] > 20:
            if not manual:
                publish(TOPIC_OUT, m.payload, qos)
            elif len(waiting) < WINDOW:
                waiting[publish(TOPIC_OUT, m.payload, qos).mid] = m.mid
            else:
                backlog.append((m.payload, m.mid))
        elif manual:
            ack(m.mid, qos)

    def on_publish(c: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        source = waiting.pop(mid, None)
        if source is None:
            return
        ack(source, qos)
        if backlog:
            payload, source = backlog.popleft()
            waiting[publish(TOPIC_OUT, payload, qos).mid] = source

    client.on_message = on_message
    if manual:
        client.on_publish = on_publish
    client.on_connect = lambda c, u, f, r, p: c.subscribe(TOPIC_IN, qos)
    signal.signal(signal.SIGTERM, lambda *_: client.disconnect())
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    client.connect("127.0.0.1", port, properties=props)
    client.loop_forever()


def paced_publisher(port: int, qos: int, count: int, rate: float) -> None:
    """Publish `count` readings at `rate`/s, each stamped just before it is handed to paho.

    Prints "done" once all are published (QoS 1: acknowledged), then stays connected until stdin closes.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-paced", protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(1000)
    connected = threading.Event()
    client.on_connect = lambda c, u, f, r, p: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    connected.wait(10)
    interval = 1.0 / rate
    start = time.perf_counter()
    info = None
    for i in range(count):
        # Sleep to each message's slot; when a sleep overshoots, the late ones go at once (no drift).
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        info = client.publish(TOPIC_IN, reading(i, time.time_ns()), qos)
    if info is not None and qos:
        info.wait_for_publish(120)
    print("done", flush=True)
    sys.stdin.read()
    client.disconnect()
    client.loop_stop()


# --- the broker ------------------------------------------------------------------------------------------


class Broker:
    """A throwaway mosquitto for one case: quiet log (no per-message lines), generous windows."""

    def __init__(self, directory: Path, extra: list[str]) -> None:
        from mqtt_broker import MOSQUITTO, free_port

        self.port = free_port()
        self.directory = directory
        conf = directory / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence false",
            "max_inflight_messages 1000",
            "max_queued_messages 100000",
            *extra,
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n")
        self._log = open(directory / "mosquitto.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 10
        while True:  # a benchmark may poll: wait until it accepts connections
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((directory / "mosquitto.log").read_text()) from None
                time.sleep(0.02)

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


def stop_process(process: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
    return process.returncode


# --- measuring ---------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class OutputWatch:
    """Counts the readings `mosquitto_sub` has written since `mark()`, without parsing them."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        self.offset = 0
        self._lines = 0
        self._probes = 0

    def mark(self) -> None:
        self._file.seek(0, os.SEEK_END)
        self.offset = self._file.tell()

    def poll(self) -> int:
        data = self._file.read()
        self._lines += data.count(b"\n")
        self._probes += data.count(b'"probe"')
        return self._lines - self._probes

    def contains_probe(self) -> bool:
        self._file.seek(0)
        found = b'"probe"' in self._file.read()
        return found

    def close(self) -> None:
        self._file.close()


def wait_ready(port: int, watch: OutputWatch, relay: subprocess.Popen[Any], timeout: float = 30) -> None:
    """Send probes through the relay until one comes back, and `mosquitto_sub` has written it."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-probe")
    back = threading.Event()
    subscribed = threading.Event()
    client.on_message = lambda c, u, m: back.set()
    client.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
    client.on_connect = lambda c, u, f, r, p: c.subscribe(TOPIC_OUT, 1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + timeout
    try:
        subscribed.wait(10)
        while not back.is_set():
            if relay.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the relay did not pass a probe within {timeout}s (exit code {relay.poll()})")
            client.publish(TOPIC_IN, PROBE, 1)
            back.wait(0.5)
        while not watch.contains_probe():
            if time.monotonic() > deadline:
                raise RuntimeError("mosquitto_sub did not write the probe")
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()


@dataclass
class Result:
    impl: str
    case: str
    sent: int
    expected: int
    received: int = 0
    lost: int = 0
    dups: int = 0
    rate: float = 0.0  # input messages per second, first publish to last output
    out_rate: float = 0.0  # output messages per second, same interval
    cpu_us: float = 0.0  # per input message
    cpu_out_us: float = 0.0  # per output message
    rss_mb: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    exit_code: int | None = None
    load: float = 0.0  # 1-minute load average when the case ended: other work on the machine skews all
    notes: list[str] = field(default_factory=list)


def analyse(path: Path, offset: int, count: int, t0_ns: int, latency: bool, result: Result) -> None:
    seen: Counter[int] = Counter()
    lat: list[int] = []
    last_ns = t0_ns
    with open(path, "rb") as f:
        f.seek(offset)
        for line in f:
            stamp, _, payload = line.partition(b" ")
            try:
                msg = json.loads(payload)
            except ValueError:
                result.notes.append(f"undecodable output: {payload[:60]!r}")
                continue
            seq = msg.get("seq", -1)
            if seq < 0:
                continue
            sec, _, frac = stamp.partition(b".")
            recv_ns = int(sec) * 1_000_000_000 + int(frac.ljust(9, b"0"))
            last_ns = max(last_ns, recv_ns)
            seen[seq] += 1
            if latency:
                lat.append(recv_ns - msg["ts_ns"])
    expected = {i for i in range(count) if passes(i)}
    result.received = sum(seen.values())
    result.lost = len(expected - seen.keys())
    result.dups = result.received - len(seen)
    unexpected = len(seen.keys() - expected)
    if unexpected:
        result.notes.append(f"{unexpected} messages that the filter should have dropped")
    if last_ns > t0_ns:
        result.rate = count / ((last_ns - t0_ns) / 1e9)
        result.out_rate = result.received / ((last_ns - t0_ns) / 1e9)
    if lat:
        lat.sort()
        result.p50_ms = lat[len(lat) // 2] / 1e6
        result.p99_ms = lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1e6
        result.max_ms = lat[-1] / 1e6


# --- one case -------------------------------------------------------------------------------------------------


def start_relay(impl: str, qos: int, port: int, directory: Path, edgeflow_cmd: list[str]) -> subprocess.Popen[bytes]:
    stderr = open(directory / "relay.log", "wb")  # noqa: SIM115 - the child holds it
    if impl == "bare":
        cmd = [sys.executable, __file__, "--bare-relay", str(port), str(qos)]
    else:
        topo = directory / "bench.toml"
        data = directory / "data"
        data.mkdir()
        topo.write_text(
            TOPOLOGY.format(
                data_dir=data,
                port=port,
                qos=qos,
                persist="true" if qos else "false",
                topic_in=TOPIC_IN,
                topic_out=TOPIC_OUT,
            )
        )
        cmd = [*edgeflow_cmd, "run", str(topo)]
    process = subprocess.Popen(cmd, stdout=stderr, stderr=stderr)
    stderr.close()
    return process


def flood_lines(count: int) -> bytes:
    stamp = time.time_ns()
    return b"".join(reading(i, stamp) + b"\n" for i in range(count))


def run_case(impl: str, case: str, args: argparse.Namespace, tmp: Path, profile: Path | None = None) -> Result:
    qos = int(case[1])
    paced = case.endswith("paced")
    count = args.count
    directory = tmp / f"{impl}-{case}{'-profile' if profile else ''}"
    directory.mkdir()
    result = Result(impl, case, count, sum(1 for i in range(count) if passes(i)))
    broker = Broker(directory, args.broker_option or [])
    sub = relay = publisher = spy = None
    watch: OutputWatch | None = None
    out_path = directory / "out.txt"
    try:
        with open(out_path, "wb") as out:
            sub = subprocess.Popen(
                ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", TOPIC_OUT, "-q", str(qos),
                 "-i", "bench-sub", "-F", "%U %p", "--quiet"],
                stdout=out,
            )  # fmt: skip
        relay = start_relay(impl, qos, broker.port, directory, shlex.split(args.edgeflow_cmd))
        watch = OutputWatch(out_path)
        wait_ready(broker.port, watch, relay)
        watch.mark()
        if profile is not None:
            spy = subprocess.Popen(
                [str(ROOT / ".venv/bin/py-spy"), "record", "--pid", str(relay.pid), "--format", "raw",
                 "--output", str(profile), "--threads", "--nonblocking", "--rate", "200"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(1.0)  # py-spy attaches asynchronously; nothing is published yet
        published = threading.Event()
        blob = b"" if paced else flood_lines(count)
        cpu0 = cpu_seconds(relay.pid)
        t0_ns = time.time_ns()
        if paced:
            publisher = subprocess.Popen(
                [sys.executable, __file__, "--paced", str(broker.port), str(qos), str(count), str(args.rate)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            threading.Thread(target=_wait_line, args=(publisher.stdout, b"done", published), daemon=True).start()
        else:
            publisher = subprocess.Popen(
                ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", TOPIC_IN, "-q", str(qos),
                 "-M", "1000", "-i", "bench-pub", "-l", "--quiet"],
                stdin=subprocess.PIPE,
            )  # fmt: skip
            threading.Thread(target=_feed, args=(publisher.stdin, blob, published), daemon=True).start()
        # Wait for every expected output, or for the output to stop growing once all was published.
        idle_limit = 3.0 if qos == 0 else 10.0
        last_n, last_change = -1, time.monotonic()
        while True:
            time.sleep(0.1)
            n = watch.poll()
            now = time.monotonic()
            if n >= result.expected:
                break
            if relay.poll() is not None:
                result.notes.append(f"the relay exited with {relay.returncode} during the run")
                break
            if n != last_n:
                last_n, last_change = n, now
            elif now - last_change > (idle_limit if published.is_set() else 60.0):
                result.notes.append(f"output stopped at {n} of {result.expected}")
                break
        # Count the work the relay still does after the last output (acks, deletes), until it idles.
        cpu1 = cpu_seconds(relay.pid)
        for _ in range(20):
            time.sleep(0.25)
            cpu2 = cpu_seconds(relay.pid)
            if cpu2 - cpu1 < 0.011:
                cpu1 = cpu2
                break
            cpu1 = cpu2
        result.cpu_us = (cpu1 - cpu0) / count * 1e6
        result.cpu_out_us = (cpu1 - cpu0) / max(1, watch.poll()) * 1e6
        result.rss_mb = peak_rss_mb(relay.pid)
        result.load = os.getloadavg()[0]
        if spy is not None:
            stop_process(spy, signal.SIGINT, 30)
            spy = None
        result.exit_code = stop_process(relay)
        if publisher.stdin is not None:
            publisher.stdin.close()
        stop_process(publisher)
        time.sleep(0.2)  # mosquitto_sub writes what it has; nothing more is in flight
        stop_process(sub)
        analyse(out_path, watch.offset, count, t0_ns, paced, result)
    except Exception as exc:
        result.notes.append(f"failed: {exc}")
    finally:
        for process in (spy, publisher, relay, sub):
            stop_process(process, timeout=5)
        if watch is not None:
            watch.close()
        broker.stop()
    if result.exit_code not in (0, None):
        result.notes.append(f"relay exit code {result.exit_code}; see {directory / 'relay.log'}")
    return result


def _feed(stdin: IO[bytes] | None, blob: bytes, done: threading.Event) -> None:
    assert stdin is not None
    try:
        stdin.write(blob)
        stdin.flush()
    except BrokenPipeError:
        pass
    done.set()  # the pipe stays open: mosquitto_pub would exit at EOF with its QoS 1 queue unsent


def _wait_line(stdout: IO[bytes] | None, text: bytes, done: threading.Event) -> None:
    assert stdout is not None
    for line in stdout:
        if line.strip() == text:
            done.set()
            return


# --- profile ----------------------------------------------------------------------------------------------------


def top_frames(raw: Path, n: int = 15) -> list[str]:
    """Self time per function (file:function) and per file from py-spy's raw (collapsed) output."""
    frames: Counter[str] = Counter()
    files: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        leaf = stack.rsplit(";", 1)[-1]  # "function (path/file.py:line)"
        if leaf.startswith(("thread (", "process ")):
            func, short = "(no Python frame)", "-"
        else:
            func, _, where = leaf.partition(" (")
            short = _short_path(where.rsplit(":", 1)[0])
        frames[f"{func} ({short})"] += count
        files[short] += count
        total += count
    out = [f"  {total} active samples (idle threads excluded); self time:"]
    out += [f"  {c / total:6.1%}  {name}" for name, c in frames.most_common(n)]
    out.append("  by file:")
    out += [f"  {c / total:6.1%}  {name}" for name, c in files.most_common(10)]
    return out


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# --- the table ------------------------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(
        f"\nMQTT relay bench/in -> filter(temp > 20, 90% pass) -> bench/out: {args.count:,} JSON messages of "
        f"~{len(reading(12345, time.time_ns()))} bytes, paced at {args.rate:,.0f} msg/s, {os.cpu_count()} cores; "
        "mosquitto max_inflight_messages 1000, max_queued_messages 100000"
    )
    header = (
        f"{'case':<9} {'relay':<9} {'in msg/s':>8} {'out msg/s':>9} {'us CPU/in':>9} {'us CPU/out':>10} "
        f"{'RSS MB':>6} {'received':>8} {'lost':>6} {'dups':>5} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'load':>4}"
    )
    print(header)
    print("-" * len(header))
    by = {(r.impl, r.case): r for r in results}
    for r in results:
        print(
            f"{r.case:<9} {r.impl:<9} {r.rate:>8,.0f} {r.out_rate:>9,.0f} {r.cpu_us:>9.1f} {r.cpu_out_us:>10.1f} "
            f"{r.rss_mb:>6.1f} {r.received:>8,} {r.lost:>6,} {r.dups:>5,} {_fmt(r.p50_ms, '7.2f'):>7} "
            f"{_fmt(r.p99_ms, '7.2f'):>7} {_fmt(r.max_ms, '7.2f'):>7} {r.load:>4.1f}"
        )
        for note in r.notes:
            print(f"    ! {note}")
    print("\ntargets (edgeflow vs bare, same run):")

    def verdict(ok: bool) -> str:
        return "ok  " if ok else "MISS"

    ours, bare = by.get(("edgeflow", "q0-flood")), by.get(("bare", "q0-flood"))
    if ours and bare and bare.out_rate:
        ratio = ours.out_rate / bare.out_rate
        print(f"  {verdict(ratio >= 0.8)} q0-flood delivered msg/s {ratio:.2f}x bare (target >= 0.8x)")
    for case, limit in (("q0-flood", 1.2), ("q0-paced", 1.2), ("q1-flood", 1.5), ("q1-paced", 1.5)):
        ours, bare = by.get(("edgeflow", case)), by.get(("bare", case))
        if not (ours and bare and bare.cpu_us):
            continue
        # A relay that dropped input did less work per input message: compare per delivered message then.
        per_out = ours.lost != bare.lost
        a, b = (ours.cpu_out_us, bare.cpu_out_us) if per_out else (ours.cpu_us, bare.cpu_us)
        ratio = a / b
        unit = "delivered" if per_out else "input"
        print(
            f"  {verdict(ratio <= limit)} {case} CPU per {unit} message {a:.1f} vs {b:.1f} us = "
            f"{ratio:.2f}x (target <= {limit}x)"
        )
    for case in ("q0-flood", "q0-paced"):
        ours, bare = by.get(("edgeflow", case)), by.get(("bare", case))
        if ours and bare:
            # QoS 0 may drop, but a relay that drops what the bare one delivers has not kept up.
            print(f"  {verdict(ours.lost <= bare.lost)} {case} lost {ours.lost:,} vs bare {bare.lost:,}")
    for r in results:
        if r.case.startswith("q1"):
            print(f"  {verdict(r.lost == 0)} {r.case} {r.impl} lost {r.lost} (target 0), duplicates {r.dups}")
    for r in results:
        if r.impl == "edgeflow":
            print(f"  {verdict(r.rss_mb < 45)} {r.case} edgeflow peak RSS {r.rss_mb:.1f} MB (target < 45 MB)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--bare-relay":
        bare_relay(int(sys.argv[2]), int(sys.argv[3]), naive="--naive" in sys.argv)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--paced":
        paced_publisher(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--count", type=int, default=100_000, help="messages published per case")
    parser.add_argument("--rate", type=float, default=5000.0, help="msg/s of the paced cases")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--impls", default=",".join(IMPLS), help="comma-separated subset of bare,edgeflow")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="q0-flood,q1-flood",
        help="then profile edgeflow on these cases with py-spy (default: q0-flood,q1-flood)",
    )
    parser.add_argument("--keep", help="keep logs and outputs in this directory")
    parser.add_argument(
        "--broker-option", action="append", help="an extra mosquitto.conf line, e.g. 'set_tcp_nodelay true'"
    )
    parser.add_argument(
        "--edgeflow-cmd",
        default=str(Path(sys.executable).parent / "edgeflow"),
        help="the edgeflow command (to compare builds); `run <topology>` is appended",
    )
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    impls = [i for i in args.impls.split(",") if i]
    unknown = sorted(set(cases) - set(CASES)) + sorted(set(impls) - set(IMPLS))
    if unknown:
        parser.error(f"unknown case or relay: {', '.join(unknown)}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(args.keep) if args.keep else Path(scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        results = []
        for case in cases:
            for impl in impls:
                r = run_case(impl, case, args, tmp)
                print(
                    f"{case:<9} {impl:<9} in {r.rate:>8,.0f} msg/s out {r.out_rate:>8,.0f} msg/s "
                    f"{r.cpu_us:6.1f} us/msg {r.rss_mb:5.1f} MB "
                    f"lost {r.lost} dups {r.dups} p50 {_fmt(r.p50_ms, '.2f')} p99 {_fmt(r.p99_ms, '.2f')} ms"
                    + "".join(f"  ! {n}" for n in r.notes),
                    flush=True,
                )
                results.append(r)
        if results:
            report(results, args)
        if args.profile:
            for case in args.profile.split(","):
                raw = tmp / f"pyspy-{case}.txt"
                r = run_case("edgeflow", case, args, tmp, profile=raw)
                print(f"\npy-spy, edgeflow {case} ({r.rate:,.0f} msg/s, {r.cpu_us:.1f} us/msg while sampled):")
                if raw.exists():
                    print("\n".join(top_frames(raw)))
                else:
                    print("  (no profile written: is ptrace allowed?)", r.notes)
    print(f"\n(whole run {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
