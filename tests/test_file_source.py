"""The `file` source through `edgeflow run` child processes: formats, tailing, stored offsets, rotation, bad lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import read_jsonl, run_cli, start_runtime, wait_until

pytestmark = pytest.mark.timeout(60)


def file_to_file(src: Path, out: Path, *, dead_letters: Path | None = None, **keys: object) -> str:
    """A topology reading `src` with the file source into a file sink at `out` (and a dead-letter file)."""
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
    text = f"""
[sources.f]
type = "file"
path = "{src}"
{extra}"""
    if dead_letters is not None:
        text += f"""dead_letter = "dl"

[sinks.dl]
type = "file"
path = "{dead_letters}"
"""
    text += f"""
[sinks.out]
type = "file"
inputs = ["f"]
path = "{out}"
"""
    return text


def append(path: Path, text: str | bytes) -> None:
    with open(path, "ab") as fh:
        fh.write(text.encode() if isinstance(text, str) else text)


def jsonl(*docs: object) -> str:
    return "".join(json.dumps(d) + "\n" for d in docs)


def wait_running(path: Path, actor: str = "f") -> None:
    """Wait until the runtime answers `status` with `actor` running (its on_start done)."""

    def running() -> bool:
        r = run_cli("status", str(path), "--json", timeout=10)
        return r.returncode == 0 and json.loads(r.stdout)["actors"][actor]["state"] == "running"

    wait_until(running, 20, f"{actor} running")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    return stderr


# -- reading a file to its end -----------------------------------------------------------------------


def test_jsonl_is_read_to_the_end_in_order_and_the_run_exits_0(topology, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    docs = [{"n": i, "text": "é" * (i % 7)} for i in range(5000)]
    src.write_text(jsonl(*docs) + "\n   \n")  # blank lines are skipped
    proc = run_cli("run", str(topology(file_to_file(src, out, follow=False))))
    assert proc.returncode == 0, proc.stderr
    assert read_jsonl(out) == docs


def test_a_last_line_without_newline_is_read_when_not_following(topology, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text('{"a": 1}\n{"a": 2}')
    proc = run_cli("run", str(topology(file_to_file(src, out, follow=False))))
    assert proc.returncode == 0, proc.stderr
    assert read_jsonl(out) == [{"a": 1}, {"a": 2}]


def test_lines_format_gives_each_line_as_text_without_its_line_ending(topology, tmp_path):
    src, out = tmp_path / "in.log", tmp_path / "out.jsonl"
    src.write_bytes(b"first line\r\n\nthird {not json}\n")
    proc = run_cli("run", str(topology(file_to_file(src, out, format="lines", follow=False))))
    assert proc.returncode == 0, proc.stderr
    assert read_jsonl(out) == [{"line": "first line"}, {"line": ""}, {"line": "third {not json}"}]


def test_csv_with_a_header_gives_rows_keyed_by_column(topology, tmp_path):
    src, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    src.write_text('device;temp;note\ns1;21.5;"a; b"\n\ns2;19;\n')
    proc = run_cli("run", str(topology(file_to_file(src, out, format="csv", delimiter=";", follow=False))))
    assert proc.returncode == 0, proc.stderr
    assert read_jsonl(out) == [
        {"device": "s1", "temp": "21.5", "note": "a; b"},
        {"device": "s2", "temp": "19", "note": ""},
    ]


def test_csv_without_a_header_gives_lists(topology, tmp_path):
    src, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    src.write_text("a,b\nc,d,e\n")
    proc = run_cli("run", str(topology(file_to_file(src, out, format="csv", header=False, follow=False))))
    assert proc.returncode == 0, proc.stderr
    assert read_jsonl(out) == [["a", "b"], ["c", "d", "e"]]


def test_each_message_has_the_path_as_topic(topology, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(jsonl({"a": 1}))
    text = file_to_file(src, out, follow=False).replace(
        'path = "' + str(out) + '"', f'path = "{out}"\ninclude_meta = true'
    )
    proc = run_cli("run", str(topology(text)))
    assert proc.returncode == 0, proc.stderr
    (row,) = read_jsonl(out)
    assert row["topic"] == str(src)
    assert row["source"] == "f"
    assert row["payload"] == {"a": 1}


# -- the stored offset --------------------------------------------------------------------------------


def test_a_second_run_reads_only_what_was_appended_since_the_first(topology, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    path = topology(file_to_file(src, out, follow=False))
    src.write_text(jsonl(*({"n": i} for i in range(3000))))
    first = run_cli("run", str(path))
    assert first.returncode == 0, first.stderr
    append(src, jsonl(*({"n": i} for i in range(3000, 3500))))
    second = run_cli("run", str(path))
    assert second.returncode == 0, second.stderr
    assert [r["n"] for r in read_jsonl(out)] == list(range(3500))


def test_a_tail_stopped_with_sigterm_resumes_where_it_stopped_without_reading_anything_twice(topology, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    path = topology(file_to_file(src, out, poll_interval="20ms"))
    src.write_text(jsonl(*({"n": i} for i in range(2000))))
    proc = start_runtime(path)
    try:
        wait_until(lambda: len(read_jsonl(out)) == 2000, 20, "the first 2000 lines")
    finally:
        stop(proc)
    append(src, jsonl(*({"n": i} for i in range(2000, 2100))))
    proc = start_runtime(path)
    try:
        wait_until(lambda: len(read_jsonl(out)) >= 2100, 20, "the appended lines")
    finally:
        stop(proc)
    assert [r["n"] for r in read_jsonl(out)] == list(range(2100))


def test_a_csv_resumed_mid_file_keeps_its_header(topology, tmp_path):
    src, out = tmp_path / "in.csv", tmp_path / "out.jsonl"
    path = topology(file_to_file(src, out, format="csv", follow=False))
    src.write_text("k,v\na,1\n")
    assert run_cli("run", str(path)).returncode == 0
    append(src, "b,2\n")
    assert run_cli("run", str(path)).returncode == 0
    assert read_jsonl(out) == [{"k": "a", "v": "1"}, {"k": "b", "v": "2"}]


def test_start_at_end_skips_what_the_file_held_and_reads_what_is_appended(topology, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(jsonl({"old": 1}, {"old": 2}))
    path = topology(file_to_file(src, out, start_at="end", poll_interval="20ms"))
    proc = start_runtime(path)
    try:
        wait_running(path)
        append(src, jsonl({"new": 3}))
        wait_until(lambda: read_jsonl(out), what="the appended line")
    finally:
        stop(proc)
    assert read_jsonl(out) == [{"new": 3}]


# -- following ------------------------------------------------------------------------------------------


def test_follow_reads_lines_as_they_are_appended_and_waits_for_a_line_to_be_finished(topology, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(jsonl({"n": 0}))
    proc = start_runtime(topology(file_to_file(src, out, poll_interval="20ms")))
    try:
        wait_until(lambda: read_jsonl(out) == [{"n": 0}], 20, "the first line")
        append(src, '{"n": 1}\n{"n"')  # a writer caught half-way through its line
        wait_until(lambda: len(read_jsonl(out)) == 2, what="the second line")
        append(src, ": 2}\n")
        wait_until(lambda: len(read_jsonl(out)) == 3, what="the completed third line")
    finally:
        stop(proc)
    assert read_jsonl(out) == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_a_file_that_does_not_exist_yet_is_read_once_it_appears(topology, tmp_path):
    src, out = tmp_path / "later.jsonl", tmp_path / "out.jsonl"
    path = topology(file_to_file(src, out, poll_interval="20ms"))
    proc = start_runtime(path)
    try:
        wait_running(path)
        src.write_text(jsonl({"n": 1}))
        wait_until(lambda: read_jsonl(out), what="the line of the new file")
    finally:
        stderr = stop(proc)
    assert read_jsonl(out) == [{"n": 1}]
    assert "does not exist; waiting for it" in stderr


def test_a_rotated_file_is_finished_through_its_descriptor_before_the_new_one_is_read(topology, tmp_path):
    src, out = tmp_path / "app.log", tmp_path / "out.jsonl"
    src.write_text(jsonl({"n": 0}))
    proc = start_runtime(topology(file_to_file(src, out, poll_interval="20ms")))
    try:
        wait_until(lambda: len(read_jsonl(out)) == 1, 20, "the first line")
        rotated = tmp_path / "app.log.1"
        os.rename(src, rotated)  # logrotate's order: rename, create the new file, then tell the writer
        src.write_text(jsonl({"n": 3}))
        assert proc.stderr is not None
        for line in proc.stderr:  # bounded by the test's timeout
            if "was rotated" in line:
                break
        append(rotated, jsonl({"n": 1}, {"n": 2}))  # seen after the new file: its writer had not reopened
        wait_until(lambda: len(read_jsonl(out)) == 4, what="the old file's tail and the new file")
        append(src, jsonl({"n": 4}))
        wait_until(lambda: len(read_jsonl(out)) == 5, what="a line appended to the new file")
    finally:
        stop(proc)
    assert [r["n"] for r in read_jsonl(out)] == [0, 1, 2, 3, 4]


def test_a_rotation_while_stopped_finishes_the_old_file_found_by_inode_then_reads_the_new(topology, tmp_path):
    src, out = tmp_path / "app.log", tmp_path / "out.jsonl"
    path = topology(file_to_file(src, out, follow=False))
    src.write_text(jsonl({"n": 0}))
    assert run_cli("run", str(path)).returncode == 0
    rotated = tmp_path / "app.log.1"
    append(src, jsonl({"n": 1}))
    os.rename(src, rotated)
    src.write_text(jsonl({"n": 2}))
    proc = run_cli("run", str(path))
    assert proc.returncode == 0, proc.stderr
    assert [r["n"] for r in read_jsonl(out)] == [0, 1, 2]


def test_a_truncated_file_is_read_again_from_its_start(topology, tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    src.write_text(jsonl(*({"n": i, "pad": "x" * 50} for i in range(10))))
    proc = start_runtime(topology(file_to_file(src, out, poll_interval="20ms")))
    try:
        wait_until(lambda: len(read_jsonl(out)) == 10, 20, "the first ten lines")
        src.write_text(jsonl({"n": 100}))  # opens with O_TRUNC: far shorter than our offset
        wait_until(lambda: len(read_jsonl(out)) == 11, what="the line written after truncation")
    finally:
        stderr = stop(proc)
    assert [r["n"] for r in read_jsonl(out)] == [*range(10), 100]
    assert "was truncated" in stderr


# -- bad lines ----------------------------------------------------------------------------------------


def test_bad_lines_are_dead_lettered_with_their_reason_and_the_rest_flows(topology, tmp_path):
    src, out, dl = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "dl.jsonl"
    long_line = b'{"long": "' + b"x" * 300 + b'"}'
    src.write_bytes(b'{"n": 1}\n{not json\n{"n": 2}\n{"bad": "\xff\xfe"}\n' + long_line + b'\n{"n": 3}\n')
    path = topology(file_to_file(src, out, dead_letters=dl, follow=False, max_line="200B"))
    proc = run_cli("run", str(path))
    assert proc.returncode == 0, proc.stderr
    assert read_jsonl(out) == [{"n": 1}, {"n": 2}, {"n": 3}]
    dead = read_jsonl(dl)
    assert [d["actor"] for d in dead] == ["f", "f", "f"]
    reasons = sorted(d["error"] for d in dead)
    assert reasons[0].startswith("invalid JSON: Expecting property name enclosed in double quotes")
    assert reasons[1].startswith("invalid UTF-8: invalid start byte at byte 9")
    assert reasons[2] == f"line longer than max_line (200 B): {len(long_line)} bytes"
    texts = {d["error"].split(":")[0]: d["payload"] for d in dead}
    assert texts["invalid JSON"] == "{not json"
    assert texts["invalid UTF-8"] == '{"bad": "\ufffd\ufffd"}'
    assert texts["line longer than max_line (200 B)"].startswith('{"long": "xxx')
    # The bad lines count as read: a second run reads nothing again.
    again = run_cli("run", str(path))
    assert again.returncode == 0, again.stderr
    assert len(read_jsonl(out)) == 3
    assert len(read_jsonl(dl)) == 3


def test_an_over_long_line_spanning_many_reads_is_dead_lettered_once_and_the_next_line_is_read(topology, tmp_path):
    src, out, dl = tmp_path / "in.log", tmp_path / "out.jsonl", tmp_path / "dl.jsonl"
    src.write_bytes(b"before\n" + b"y" * (3 * 2**20) + b"\nafter\n")
    path = topology(file_to_file(src, out, dead_letters=dl, format="lines", follow=False))
    proc = run_cli("run", str(path))
    assert proc.returncode == 0, proc.stderr
    assert read_jsonl(out) == [{"line": "before"}, {"line": "after"}]
    (dead,) = read_jsonl(dl)
    assert dead["error"] == f"line longer than max_line (1 MiB): {3 * 2**20} bytes"
    assert len(dead["payload"]) < 2000


def test_a_csv_row_with_the_wrong_number_of_columns_is_dead_lettered(topology, tmp_path):
    src, out, dl = tmp_path / "in.csv", tmp_path / "out.jsonl", tmp_path / "dl.jsonl"
    src.write_text("a,b\n1,2\n1,2,3\n4,5\n")
    path = topology(file_to_file(src, out, dead_letters=dl, format="csv", follow=False))
    proc = run_cli("run", str(path))
    assert proc.returncode == 0, proc.stderr
    assert read_jsonl(out) == [{"a": "1", "b": "2"}, {"a": "4", "b": "5"}]
    (dead,) = read_jsonl(dl)
    assert dead["error"] == "expected 2 columns, got 3"
    assert dead["payload"] == "1,2,3"
    assert dead["topic"] == str(src)


def test_a_missing_file_without_follow_is_reported_as_not_ready(topology, tmp_path):
    src, out = tmp_path / "missing.jsonl", tmp_path / "out.jsonl"
    proc = start_runtime(topology(file_to_file(src, out, follow=False)))
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # bounded by the test's timeout
            if "does not exist" in line:
                break
        else:
            pytest.fail("the runtime ended without saying the file is missing")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=15)
    assert "not ready" in line
    assert "Traceback" not in line
