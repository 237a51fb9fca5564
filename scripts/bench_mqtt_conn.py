"""CPU per message through edgeflow's MQTT connection versus bare paho (threaded loop).

    .venv/bin/python scripts/bench_mqtt_conn.py [-n 50000] [--payload 64] [--uvloop]

Starts a private mosquitto on a free loopback port and runs each case in a fresh process; the process
measures its own CPU time (all threads) from the first to the last message, so idle waiting does not
count. Cases:

- recv q0/q1: a generator process floods a topic; the measured client receives (and, at QoS 1, acks).
- pub q0/q1: the measured client publishes; done when the broker acknowledged the last message (a
  final QoS 1 message at QoS 0: it is sent after all the others).
- relay q0: receive on in/#, republish each message on out/# (the source->sink hot path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _result(cpu: float, wall: float, n: int) -> None:
    print(json.dumps({"cpu_us": cpu * 1e6 / n, "wall_s": wall, "rate": n / wall if wall else 0}), flush=True)


# --- measured processes: edgeflow ---------------------------------------------------------------------


async def _edgeflow(mode: str, qos: int, n: int, url: str, payload: bytes) -> None:
    from edgeflow.mqtt import InMessage, MqttConnection, MqttSettings

    conn = MqttConnection("bench", MqttSettings(url=url, client_id=f"bench-{mode}", clean_start=True))
    await conn.start()
    await conn.wait_connected(10)
    done = asyncio.Event()
    count = 0
    t0 = c0 = 0.0

    if mode in ("recv", "relay"):

        def handler(batch: list[InMessage]) -> None:
            nonlocal count, t0, c0
            if count == 0:
                t0, c0 = time.perf_counter(), time.process_time()
            for m in batch:
                if mode == "relay":
                    conn.publish_nowait("out/x", m.payload)
                m.ack()
            count += len(batch)
            if count >= n:
                done.set()

        await conn.subscribe("in/#", qos, handler).wait_active(10)
        print("ready", flush=True)
        await done.wait()
        if mode == "relay":
            await conn.publish("out/x", b"last", qos=1)  # everything before it has been written
    else:
        print("ready", flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        if qos == 0:
            for i in range(n - 1):
                if not conn.publish_nowait("in/x", payload):
                    await conn.publish("in/x", payload)
                if i % 256 == 255:
                    await asyncio.sleep(0)  # let the loop flush, as a sink between batches would
            await conn.publish("in/x", payload, qos=1)
        else:
            step = 1000
            for start in range(0, n, step):
                await conn.publish_many([("in/x", payload)] * min(step, n - start), qos=qos)
    _result(time.process_time() - c0, time.perf_counter() - t0, n)
    await conn.stop()


# --- measured processes: bare paho -----------------------------------------------------------------------


def _paho(mode: str, qos: int, n: int, url: str, payload: bytes) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    port = int(url.rsplit(":", 1)[1])
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"paho-{mode}", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)
    connected = threading.Event()
    done = threading.Event()
    state: dict[str, Any] = {"count": 0}
    client.on_connect = lambda c, u, f, r, p: connected.set()

    if mode in ("recv", "relay"):

        def on_message(c: mqtt.Client, u: Any, m: mqtt.MQTTMessage) -> None:
            if state["count"] == 0:
                state["t0"], state["c0"] = time.perf_counter(), time.process_time()
            if mode == "relay":
                c.publish("out/x", m.payload)
            state["count"] += 1
            if state["count"] >= n:
                if mode == "relay":
                    state["last"] = c.publish("out/x", b"last", qos=1)
                done.set()

        subscribed = threading.Event()
        client.on_message = on_message
        client.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
        client.connect("127.0.0.1", port)
        client.loop_start()  # loop_forever in paho's thread
        connected.wait(10)
        client.subscribe("in/#", qos)
        subscribed.wait(10)
        print("ready", flush=True)
        done.wait()
        if mode == "relay":
            state["last"].wait_for_publish(30)
        _result(time.process_time() - state["c0"], time.perf_counter() - state["t0"], n)
    else:
        client.connect("127.0.0.1", port)
        client.loop_start()
        connected.wait(10)
        print("ready", flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        for _ in range(n - 1):
            client.publish("in/x", payload, qos)
        client.publish("in/x", payload, 1).wait_for_publish(60)
        _result(time.process_time() - c0, time.perf_counter() - t0, n)
    client.disconnect()
    client.loop_stop()


# --- the load generator and the orchestrator ---------------------------------------------------------------


def _generate(qos: int, n: int, url: str, payload: bytes) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-generator", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", int(url.rsplit(":", 1)[1]))
    client.loop_start()
    info = None
    for _ in range(n):
        info = client.publish("in/x", payload, qos)
    if info is not None:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


def _case(impl: str, mode: str, qos: int, args: argparse.Namespace, url: str) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", impl, mode, str(qos), str(args.n), url, str(args.payload)]
    if args.uvloop:
        cmd.append("--uvloop")
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    generator = None
    if mode in ("recv", "relay"):
        gen_cmd = [sys.executable, __file__, "--generate", str(qos), str(args.n), url, str(args.payload)]
        generator = subprocess.Popen(gen_cmd)
    line = child.stdout.readline()
    child.wait(60)
    if generator is not None:
        generator.wait(60)
    return dict(json.loads(line))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        impl, child_mode, child_qos, child_n, child_url, size = sys.argv[2:8]
        payload = b"x" * int(size)
        if impl == "edgeflow":
            if "--uvloop" in sys.argv:
                import uvloop

                uvloop.install()
            asyncio.run(_edgeflow(child_mode, int(child_qos), int(child_n), child_url, payload))
        else:
            _paho(child_mode, int(child_qos), int(child_n), child_url, payload)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--generate":
        gen_qos, gen_n, gen_url, gen_size = sys.argv[2:6]
        _generate(int(gen_qos), int(gen_n), gen_url, b"x" * int(gen_size))
        return

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=50_000)
    parser.add_argument("--payload", type=int, default=64)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    from mqtt_broker import MosquittoBroker

    cases = [("recv", 0), ("recv", 1), ("pub", 0), ("pub", 1), ("relay", 0)]
    with tempfile.TemporaryDirectory() as tmp:
        config = "max_inflight_messages 100\nmax_queued_messages 0\nmax_queued_bytes 0\n"
        with MosquittoBroker(Path(tmp), extra_config=config) as broker:
            print(f"{args.n} messages of {args.payload} bytes; CPU us/msg of the measured process")
            print(f"{'case':<10}{'paho':>10}{'edgeflow':>10}{'ratio':>8}   (edgeflow msg/s)")
            for mode, qos in cases:
                paho = _case("paho", mode, qos, args, broker.url)
                ours = _case("edgeflow", mode, qos, args, broker.url)
                ratio = ours["cpu_us"] / paho["cpu_us"]
                print(
                    f"{mode} q{qos:<5}{paho['cpu_us']:>10.1f}{ours['cpu_us']:>10.1f}{ratio:>8.2f}"
                    f"   ({ours['rate']:,.0f})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
