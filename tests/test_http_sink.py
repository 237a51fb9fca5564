"""The `http` sink through `edgeflow run` child processes against a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
from pathlib import Path

import pytest
from conftest import read_jsonl, run_cli, start_runtime, wait_until
from http_server import RecordingServer
from mqtt_broker import make_tls

from edgeflow.store import Store

pytestmark = pytest.mark.timeout(60)

FAST_BACKOFF = """
[supervisor]
backoff = { initial = "20ms", max = "200ms" }
"""


def toml_value(v: object) -> str:
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(v)


def sim_to_http(url: str, *, count: int | None, rate: int = 0, dead_letters: Path | None = None, **keys: object) -> str:
    """A topology: the simulator (seq 0, 1, 2...; devices dev-0..dev-3) into an http sink."""
    extra = "".join(f"{k} = {toml_value(v)}\n" for k, v in keys.items())
    text = (
        FAST_BACKOFF
        + f"""
[sources.sim]
type = "simulator"
rate = {rate}
seed = 1
{f"count = {count}" if count is not None else ""}

[sinks.http]
type = "http"
inputs = ["sim"]
url = "{url}"
{extra}"""
    )
    if dead_letters is not None:
        text += f"""dead_letter = "dl"

[sinks.dl]
type = "file"
path = "{dead_letters}"
"""
    return text


def buffered(data_dir: Path, name: str = "http") -> tuple[bool, int]:
    """Whether the store holds a buffer for sink `name`, and how many messages are in it."""

    async def look() -> tuple[bool, int]:
        async with await Store.open(data_dir / "edgeflow.db") as store:
            return name in store.buffer_names(), store.buffer(name).stats().count

    return asyncio.run(look())


def status(path: Path) -> dict | None:
    r = run_cli("status", str(path), "--json", timeout=10)
    return json.loads(r.stdout) if r.returncode == 0 else None


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_each_payload_is_posted_as_json_once_in_order_through_the_persisting_buffer(topology, tmp_path):
    with RecordingServer() as server:
        proc = run_cli("run", str(topology(sim_to_http(server.url + "/ingest", count=500))))
    assert proc.returncode == 0, proc.stderr
    assert [b["seq"] for b in server.bodies] == list(range(500))
    assert {path for path, _ in server.accepted} == {"/ingest"}
    assert server.headers[0]["Content-Type"] == "application/json"
    assert buffered(tmp_path / "data") == (True, 0)  # persisted (the default for http), and drained


def test_retry_statuses_are_retried_until_2xx_and_each_message_is_delivered_once_in_order(topology, tmp_path):
    refusals = range(3, 8)  # part-way through the first batch: the first three were accepted

    def respond(path, body):
        return 503 if len(server.attempts) in refusals else 200

    with RecordingServer(respond) as server:
        proc = run_cli("run", str(topology(sim_to_http(server.url, count=40))))
    assert proc.returncode == 0, proc.stderr
    assert [b["seq"] for b in server.bodies] == list(range(40))
    assert [status for _, _, status in server.attempts[:10]] == [200] * 3 + [503] * 5 + [200] * 2
    assert len(server.attempts) == 40 + len(refusals)
    assert "delivery failed, will retry: Retryable: HTTP 503" in proc.stderr


def test_a_4xx_answer_dead_letters_that_message_with_the_status_and_the_rest_is_delivered_once(topology, tmp_path):
    dl = tmp_path / "dl.jsonl"

    def respond(path, body):
        return 400 if body["seq"] % 7 == 3 else 200

    with RecordingServer(respond) as server:
        proc = run_cli("run", str(topology(sim_to_http(server.url, count=100, dead_letters=dl))))
    assert proc.returncode == 0, proc.stderr
    rejected = [s for s in range(100) if s % 7 == 3]
    assert [b["seq"] for b in server.bodies] == [s for s in range(100) if s % 7 != 3]
    dead = read_jsonl(dl)
    assert [d["payload"]["seq"] for d in dead] == rejected
    assert {d["error"] for d in dead} == {"Permanent: HTTP 400: rejected: status 400 for this payload"}
    assert all(d["actor"] == "http" for d in dead)


def test_batch_size_sends_json_arrays_of_up_to_that_many_payloads(topology, tmp_path):
    with RecordingServer() as server:
        proc = run_cli("run", str(topology(sim_to_http(server.url, count=10, batch_size=3))))
    assert proc.returncode == 0, proc.stderr
    bodies = server.bodies
    assert all(isinstance(b, list) for b in bodies)
    assert [len(b) for b in bodies] == [3, 3, 3, 1]
    assert [p["seq"] for b in bodies for p in b] == list(range(10))


def test_a_templated_url_sends_each_message_to_its_own_path_keeping_order_per_path(topology, tmp_path):
    with RecordingServer() as server:
        text = sim_to_http(server.url + "/ingest/{device}", count=200, batch_size=4)
        proc = run_cli("run", str(topology(text)))
    assert proc.returncode == 0, proc.stderr
    by_path: dict[str, list[int]] = {}
    for path, body in server.accepted:
        assert {p["device"] for p in body} == {path.rsplit("/", 1)[1]}
        by_path.setdefault(path, []).extend(p["seq"] for p in body)
    assert sorted(by_path) == [f"/ingest/dev-{i}" for i in range(4)]
    for i in range(4):
        assert by_path[f"/ingest/dev-{i}"] == list(range(i, 200, 4))


def test_headers_and_a_bearer_token_from_a_file_are_sent(topology, tmp_path):
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    with RecordingServer() as server:
        text = sim_to_http(server.url, count=1, headers={"X-Site": "north"}, bearer_token_file=str(token))
        proc = run_cli("run", str(topology(text)))
    assert proc.returncode == 0, proc.stderr
    assert server.headers[0]["Authorization"] == "Bearer s3cret-token"
    assert server.headers[0]["X-Site"] == "north"
    assert "s3cret" not in proc.stderr


def test_while_the_server_is_down_the_buffer_grows_on_disk_not_in_memory_then_drains_in_order(topology, tmp_path):
    server = RecordingServer()  # not started: nothing listens on its port yet
    path = topology(sim_to_http(server.url, count=None, rate=20000, batch_size=100))
    proc = start_runtime(path)
    try:

        def buffer_holds(n: int) -> dict | None:
            doc = status(path)
            return doc if doc and doc["actors"]["http"]["buffer"]["messages"] >= n else None

        wait_until(lambda: buffer_holds(5_000), 30, "5,000 buffered messages")
        rss_before = rss_kib(proc.pid)
        doc = wait_until(lambda: buffer_holds(100_000), 40, "100,000 buffered messages")
        rss_after = rss_kib(proc.pid)
        assert doc["actors"]["http"]["buffer"]["bytes"] > 100_000 * 50
        growth_mib = (rss_after - rss_before) / 1024
        print(f"RSS {rss_before / 1024:.1f} MiB at 5k buffered, {rss_after / 1024:.1f} MiB at 100k")
        assert growth_mib < 10, f"RSS grew {growth_mib:.1f} MiB while 95,000 messages were buffered"
        server.start()
        server.wait_for(lambda s: sum(len(b) for _, b in s.accepted) >= 100_000, 60, "the backlog to drain")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        server.stop()
    assert proc.returncode == 0, stderr
    seqs = [p["seq"] for b in server.bodies for p in b]
    assert seqs == list(range(len(seqs)))


def mutual_tls_server(tmp_path: Path):
    tls = make_tls(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca))
    ctx.load_cert_chain(str(tls.server_cert), str(tls.server_key))
    ctx.verify_mode = ssl.CERT_REQUIRED  # the sink must present a client certificate signed by our CA
    return tls, RecordingServer(ssl_context=ctx)


def test_https_with_a_private_ca_and_a_client_certificate_delivers(topology, tmp_path):
    tls, server = mutual_tls_server(tmp_path)
    with server:
        text = sim_to_http(
            server.url, count=20, ca_file=str(tls.ca), cert_file=str(tls.client_cert), key_file=str(tls.client_key)
        )
        proc = run_cli("run", str(topology(text)))
    assert proc.returncode == 0, proc.stderr
    assert [b["seq"] for b in server.bodies] == list(range(20))


def test_a_server_certificate_from_an_untrusted_ca_is_refused_and_retried_not_dead_lettered(topology, tmp_path):
    tls, server = mutual_tls_server(tmp_path)
    dl = tmp_path / "dl.jsonl"
    text = sim_to_http(
        server.url,
        count=5,
        dead_letters=dl,
        ca_file=str(tls.other_ca),
        cert_file=str(tls.client_cert),
        key_file=str(tls.client_key),
    )
    # The stop gives up delivering after half of stop_timeout: keep the test short.
    path = topology(f'[node]\nid = "test"\ndata_dir = "{tmp_path / "data"}"\nstop_timeout = "2s"\n' + text)
    with server:
        proc = start_runtime(path)
        try:

            def refused() -> dict | None:
                doc = status(path)
                http = doc["actors"]["http"] if doc else None
                return http if http and http["last_error"] and http["buffer"]["messages"] == 5 else None

            http = wait_until(refused, 20, "a TLS failure")
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = proc.communicate(timeout=30)
    assert "certificate verify failed" in http["last_error"]
    assert server.attempts == []
    assert not dl.exists()
    assert "delivery failed, will retry" in stderr
    assert buffered(tmp_path / "data") == (True, 5)  # kept for the next run


def test_verify_false_accepts_a_server_certificate_it_cannot_verify(topology, tmp_path):
    tls, server = mutual_tls_server(tmp_path)
    with server:
        text = sim_to_http(
            server.url,
            count=3,
            verify=False,
            ca_file=str(tls.other_ca),
            cert_file=str(tls.client_cert),
            key_file=str(tls.client_key),
        )
        proc = run_cli("run", str(topology(text)))
    assert proc.returncode == 0, proc.stderr
    assert [b["seq"] for b in server.bodies] == [0, 1, 2]
