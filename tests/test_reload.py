"""SIGHUP reloads: only what changed is touched; an invalid file changes nothing."""

from __future__ import annotations

import json
import signal

import pytest
from conftest import read_jsonl, run_cli, start_runtime, wait_until

pytestmark = pytest.mark.timeout(60)

TOPOLOGY = """
[node]
id = "reload"
data_dir = "{data}"

[sources.sim]
type = "simulator"
rate = 400

[operators.keep]
type = "filter"
inputs = ["sim"]
where = "{where}"

[sinks.all]
type = "file"
inputs = ["sim"]
path = "{all}"

[sinks.some]
type = "file"
inputs = ["keep"]
path = "{some}"
"""


def status(path):
    r = run_cli("status", "--data-dir", str(path.parent / "data"), "--json", timeout=10)
    return json.loads(r.stdout) if r.returncode == 0 else None


def test_sighup_restarts_only_the_changed_actor_and_the_others_lose_nothing(tmp_path):
    files = {"data": tmp_path / "data", "all": tmp_path / "all.jsonl", "some": tmp_path / "some.jsonl"}
    path = tmp_path / "t.toml"
    path.write_text(TOPOLOGY.format(where="device == 'dev-0'", **files))
    proc = start_runtime(path)
    try:
        wait_until(lambda: len(read_jsonl(files["some"])) >= 20, timeout=20, what="the first branch to flow")
        before = status(path)
        path.write_text(TOPOLOGY.format(where="device == 'dev-1'", **files))
        proc.send_signal(signal.SIGHUP)
        after = wait_until(
            lambda: (
                (s := status(path))
                and s["reloads"] == 1
                and s["actors"]["some"]["out"] > before["actors"]["some"]["out"]
                and s
            ),
            timeout=20,
            what="the reload to apply",
        )
        assert after["last_reload"]["ok"] is True
        assert after["last_reload"]["changed"] == ["keep"]
        # Unchanged actors kept their counters (they only grew) and were not restarted.
        for name in ("sim", "all", "some"):
            assert after["actors"][name]["restarts"] == 0
            assert after["actors"][name]["in"] >= before["actors"][name]["in"]
        assert after["actors"]["keep"]["restarts"] == 1
        wait_until(
            lambda: any(r["device"] == "dev-1" for r in read_jsonl(files["some"])), timeout=20, what="the new filter"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    seqs = [r["seq"] for r in read_jsonl(files["all"])]
    assert seqs == list(range(len(seqs)))  # the untouched branch lost nothing across the reload
    some = read_jsonl(files["some"])
    devices = [r["device"] for r in some]
    first_new = devices.index("dev-1")
    assert set(devices[:first_new]) == {"dev-0"}
    assert set(devices[first_new:]) <= {"dev-0", "dev-1"}  # a batch in flight may finish under the old rule


def test_an_invalid_file_on_sighup_leaves_everything_running(tmp_path):
    files = {"data": tmp_path / "data", "all": tmp_path / "all.jsonl", "some": tmp_path / "some.jsonl"}
    path = tmp_path / "t.toml"
    path.write_text(TOPOLOGY.format(where="true", **files))
    proc = start_runtime(path)
    try:
        wait_until(lambda: len(read_jsonl(files["all"])) >= 10, timeout=20, what="flow")
        path.write_text(TOPOLOGY.format(where="temp >", **files) + "\n[sinks.bad]\ntype = 'nope'\n")
        proc.send_signal(signal.SIGHUP)
        s = wait_until(lambda: (s := status(path)) and s["reloads"] == 1 and s, timeout=20, what="reload attempt")
        assert s["last_reload"]["ok"] is False
        problems = "\n".join(s["last_reload"]["problems"])
        assert "operators.keep.where" in problems
        assert "sinks.bad.type" in problems
        n = len(read_jsonl(files["all"]))
        wait_until(lambda: len(read_jsonl(files["all"])) > n + 10, timeout=20, what="flow to continue")
        assert all(a["restarts"] == 0 for a in s["actors"].values())
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert "reload refused" in stderr


def test_reload_adds_and_removes_actors(tmp_path):
    files = {"data": tmp_path / "data", "all": tmp_path / "all.jsonl", "some": tmp_path / "some.jsonl"}
    path = tmp_path / "t.toml"
    path.write_text(TOPOLOGY.format(where="true", **files))
    proc = start_runtime(path)
    extra = tmp_path / "extra.jsonl"
    try:
        wait_until(lambda: len(read_jsonl(files["some"])) >= 10, timeout=20, what="flow")
        text = TOPOLOGY.format(where="true", **files)
        text = text.replace(
            '[sinks.some]\ntype = "file"\ninputs = ["keep"]', '[sinks.some]\ntype = "file"\ninputs = ["sim"]'
        )
        text = text.replace('[operators.keep]\ntype = "filter"\ninputs = ["sim"]\nwhere = "true"\n', "")
        text += f'\n[sinks.extra]\ntype = "file"\ninputs = ["sim"]\npath = "{extra}"\n'
        path.write_text(text)
        proc.send_signal(signal.SIGHUP)
        s = wait_until(lambda: (s := status(path)) and s["reloads"] == 1 and s, timeout=20, what="reload")
        assert s["last_reload"]["added"] == ["extra"]
        assert s["last_reload"]["removed"] == ["keep"]
        assert s["last_reload"]["changed"] == ["some"]
        wait_until(lambda: len(read_jsonl(extra)) >= 10, timeout=20, what="the new sink to receive")
        wait_until(
            lambda: "keep" not in (status(path) or {"actors": {"keep": 1}})["actors"], timeout=20, what="keep to go"
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    seqs = [r["seq"] for r in read_jsonl(files["all"])]
    assert seqs == list(range(len(seqs)))


def test_an_actor_removed_by_a_reload_cannot_take_the_node_down_by_crashing_while_it_drains(tmp_path):
    import asyncio

    from conftest import eventually

    from edgeflow.runtime import Runtime
    from edgeflow.topology import load_topology

    good = f"""
[node]
id = "rm"
data_dir = "{tmp_path / "data"}"

[supervisor]
max_restarts = 3
within = "60s"
backoff = {{ initial = "50ms", max = "100ms" }}

[sources.sim]
type = "simulator"
rate = 200

[sinks.out]
type = "nop"
inputs = ["sim"]
"""
    bad = good + '\n[sinks.broken]\ntype = "file"\ninputs = ["sim"]\npath = "/proc/no/such/dir/x.jsonl"\n'
    path = tmp_path / "t.toml"

    async def main() -> None:
        path.write_text(bad)
        rt = Runtime(load_topology(path))
        task = asyncio.create_task(rt.run())
        await eventually(lambda: "broken" in rt.cells and rt.cells["broken"].metrics.restarts >= 1)
        path.write_text(good)
        result = await rt.reload()
        assert result["removed"] == ["broken"]
        await eventually(lambda: not rt.retiring)  # the removed sink gave up instead of restarting
        assert not task.done()  # and the node is still up
        delivered = rt.cells["out"].metrics.out
        await eventually(lambda: rt.cells["out"].metrics.out > delivered + 20)
        rt.request_stop()
        assert await task == 0

    asyncio.run(main())
