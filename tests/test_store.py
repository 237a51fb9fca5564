"""The durable store: order, replay after restarts and crashes, counters, faults (full disk, corruption)."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeflow.errors import Permanent, Retryable, StoreError
from edgeflow.message import Message, decode, encode
from edgeflow.store import SCHEMA_VERSION, BufferStats, Store, StoreFull, rows, schema

pytestmark = pytest.mark.timeout(60)


def run(coro):
    async def bounded():
        async with asyncio.timeout(45):
            return await coro

    return asyncio.run(bounded())


def msgs(start: int, n: int, ts: float | None = None, pad: int = 0) -> list[Message]:
    return [Message({"i": i, "pad": "x" * pad}, source="t", ts=ts) for i in range(start, start + n)]


def payloads(rows) -> list[int]:
    return [m.payload["i"] for _, m in rows]


async def read_all(store: Store, name: str) -> list[tuple[int, Message]]:
    return await store.buffer(name).read(10**9)


# -- order, acknowledgement, replay ---------------------------------------------------------------


def test_read_returns_appended_messages_oldest_first_with_increasing_seqs(tmp_path):
    async def main():
        async with await Store.open(tmp_path / "s.db") as store:
            buf = store.buffer("cloud")
            first = await buf.append(msgs(0, 3))
            second = await buf.append(msgs(3, 2))
            rows = await buf.read(10)
            assert payloads(rows) == [0, 1, 2, 3, 4]
            assert [seq for seq, _ in rows] == [*first, *second]
            assert first[0] < first[-1] < second[0] < second[-1]

    run(main())


def test_messages_come_back_equal_to_what_was_appended(tmp_path):
    async def main():
        original = Message({"t": 21.5, "tags": ["a"]}, source="temps", topic="plant/1/temp", headers={"k": 1})
        async with await Store.open(tmp_path / "s.db") as store:
            await store.buffer("b").append([original])
            [(_, back)] = await store.buffer("b").read(1)
            assert back == original

    run(main())


def test_read_after_a_seq_skips_everything_up_to_it_and_removes_nothing(tmp_path):
    async def main():
        async with await Store.open(tmp_path / "s.db") as store:
            buf = store.buffer("b")
            seqs = await buf.append(msgs(0, 10))
            assert payloads(await buf.read(3, after=seqs[4])) == [5, 6, 7]
            assert payloads(await buf.read(100)) == list(range(10))

    run(main())


def test_delete_removes_exactly_the_acknowledged_seqs(tmp_path):
    async def main():
        async with await Store.open(tmp_path / "s.db") as store:
            buf = store.buffer("b")
            seqs = await buf.append(msgs(0, 10))
            await buf.delete([seqs[0], seqs[1], seqs[5], seqs[9], 10**6])
            assert payloads(await buf.read(100)) == [2, 3, 4, 6, 7, 8]
            assert buf.stats().count == 6

    run(main())


def test_buffers_are_independent_queues(tmp_path):
    async def main():
        async with await Store.open(tmp_path / "s.db") as store:
            a, b = store.buffer("a"), store.buffer("b")
            await a.append(msgs(0, 3))
            await b.append(msgs(100, 2))
            await a.delete([seq for seq, _ in await a.read(10)])
            assert payloads(await a.read(10)) == []
            assert payloads(await b.read(10)) == [100, 101]
            assert store.buffer_names() == ["a", "b"]

    run(main())


def test_seqs_are_never_reused_even_after_the_buffer_empties_and_the_store_reopens(tmp_path):
    async def main():
        async with await Store.open(tmp_path / "s.db") as store:
            buf = store.buffer("b")
            used = list(await buf.append(msgs(0, 5)))
            await buf.delete(used)
        async with await Store.open(tmp_path / "s.db") as store:
            again = await store.buffer("b").append(msgs(5, 1))
            assert again[0] > max(used)

    run(main())


def test_unacknowledged_messages_replay_in_order_after_close_and_reopen(tmp_path):
    async def main():
        async with await Store.open(tmp_path / "s.db") as store:
            buf = store.buffer("b")
            seqs = await buf.append(msgs(0, 100))
            await buf.delete(seqs[:40])
        async with await Store.open(tmp_path / "s.db") as store:
            assert payloads(await read_all(store, "b")) == list(range(40, 100))

    run(main())


# A child that appends batches to `buffers` buffers concurrently and reports each committed batch as
# "<buffer> <last seq> <last i>"; it exits without closing the store after `limit` batches per buffer
# (0 = never; the parent kills it).
CHILD = r"""
import asyncio, os, sys
from edgeflow.message import Message
from edgeflow.store import Store

path, run, buffers, batch, limit, mode = sys.argv[1:7]
buffers, batch, limit = int(buffers), int(batch), int(limit)

async def writer(store, name):
    buf = store.buffer(name)
    i = 0
    while not limit or i < limit * batch:
        seqs = await buf.append([Message({"run": int(run), "i": i + k}) for k in range(batch)])
        i += batch
        sys.stdout.write(f"{name} {seqs[-1]} {i - 1}\n")
        sys.stdout.flush()

async def main():
    store = await Store.open(path, synchronous=mode)
    await asyncio.gather(*(writer(store, f"b{n}") for n in range(buffers)))
    os._exit(0)  # no close(): the WAL is left as a crash leaves it

asyncio.run(main())
"""


def start_child(path: Path, run_id: int, buffers: int, batch: int, limit: int = 0, mode: str = "normal"):
    args = [str(path), str(run_id), str(buffers), str(batch), str(limit), mode]
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, text=True)


def check_replay(rows, reported: dict[int, tuple[int, int]]) -> None:
    """Rows hold, for each run in order, the batches 0..M contiguous (M >= the last one reported)."""
    seqs = [seq for seq, _ in rows]
    assert seqs == sorted(seqs)
    by_run: dict[int, list[int]] = {}
    for _, m in rows:
        by_run.setdefault(m.payload["run"], []).append(m.payload["i"])
    assert list(by_run) == sorted(by_run)
    for run_id, (last_seq, last_i) in reported.items():
        got = by_run.get(run_id, [])
        assert got == list(range(len(got))), f"run {run_id}: a gap or reordering"
        assert len(got) > last_i, f"run {run_id}: reported i={last_i} (seq {last_seq}) is missing"
        assert last_seq in seqs


def test_messages_replay_after_the_process_exits_without_closing_the_store(tmp_path):
    path = tmp_path / "s.db"
    child = start_child(path, 0, buffers=1, batch=10, limit=5)
    child.communicate(timeout=30)
    assert child.returncode == 0
    assert Path(f"{path}-wal").exists()  # left unmerged, as a crash leaves it

    async def main():
        async with await Store.open(path) as store:
            rows = await read_all(store, "b0")
            assert [m.payload["i"] for _, m in rows] == list(range(50))
            assert store.buffer("b0").stats().count == 50

    run(main())


@pytest.mark.parametrize("mode", ["normal", "full"])
def test_sigkill_at_random_moments_loses_no_append_that_returned(tmp_path, mode):
    path = tmp_path / "s.db"
    seed = random.randrange(2**32)
    print(f"random seed {seed}")  # shown with a failure, to replay the same kill points
    rng = random.Random(seed)
    reported: dict[str, dict[int, tuple[int, int]]] = {"b0": {}, "b1": {}, "b2": {}}
    for run_id in range(4):
        child = start_child(path, run_id, buffers=3, batch=rng.choice([1, 7, 50]), mode=mode)
        assert child.stdout is not None
        for _ in range(rng.randint(1, 60)):
            line = child.stdout.readline()
            assert line, "the child died before it was killed"
            name, seq, i = line.split()
            reported[name][run_id] = (int(seq), int(i))
        child.send_signal(signal.SIGKILL)
        # Lines already written before the kill were committed too: count them as reported.
        for line in child.stdout:
            name, seq, i = line.split()
            reported[name][run_id] = (int(seq), int(i))
        child.wait(timeout=10)
        assert child.returncode == -signal.SIGKILL

    async def main():
        async with await Store.open(path) as store:
            for name, runs in reported.items():
                check_replay(await read_all(store, name), runs)

    run(main())


# -- counters, ttl, drop_oldest, state ------------------------------------------------------------


def test_stats_count_bytes_and_oldest_ts_of_committed_messages(tmp_path):
    async def main():
        async with await Store.open(tmp_path / "s.db") as store:
            buf = store.buffer("b")
            assert buf.stats() == BufferStats(0, 0, None)
            batch = [Message({"i": i}, ts=1000.0 + i) for i in range(4)]
            seqs = await buf.append(batch)
            size = sum(len(encode(m)) for m in batch)
            assert buf.stats() == BufferStats(4, size, 1000.0)
            await buf.delete(seqs[:1])
            assert buf.stats() == BufferStats(3, size - len(encode(batch[0])), 1001.0)
            await buf.delete(seqs[1:])
            assert buf.stats() == BufferStats(0, 0, None)

    run(main())


def test_stats_are_there_at_open_without_reading_the_buffer(tmp_path):
    async def main():
        async with await Store.open(tmp_path / "s.db") as store:
            await store.buffer("b").append(msgs(0, 5, ts=50.0))
            before = store.buffer("b").stats()
        async with await Store.open(tmp_path / "s.db") as store:
            assert store.buffer("b").stats() == before
            assert before.count == 5

    run(main())


def test_expire_removes_the_stale_head_of_the_buffer_in_delivery_order_and_counts_it(tmp_path):
    async def main():
        async with await Store.open(tmp_path / "s.db") as store:
            buf = store.buffer("b")
            # Out of ts order on purpose: an old message behind a fresher one waits until it is the head.
            await buf.append([Message({"i": i}, ts=ts) for i, ts in enumerate([5.0, 30.0, 4.0, 40.0])])
            assert await buf.expire(older_than_ts=10.0) == 1
            assert buf.stats().oldest_ts == 30.0
            assert await buf.expire(older_than_ts=35.0) == 2
            assert payloads(await buf.read(10)) == [3]
            assert buf.stats().oldest_ts == 40.0
            assert await buf.expire(older_than_ts=35.0) == 0

    run(main())


def test_drop_oldest_removes_from_the_head_and_returns_how_many(tmp_path):
    async def main():
        async with await Store.open(tmp_path / "s.db") as store:
            buf = store.buffer("b")
            seqs = await buf.append(msgs(0, 6))
            await buf.delete([seqs[1]])  # a gap is skipped, not counted
            assert await buf.drop_oldest(3) == 3
            assert payloads(await buf.read(10)) == [4, 5]
            assert await buf.drop_oldest(10) == 2
            assert await buf.drop_oldest(1) == 0
            assert buf.stats() == BufferStats(0, 0, None)

    run(main())


def test_state_values_are_put_read_and_deleted(tmp_path):
    async def main():
        async with await Store.open(tmp_path / "s.db") as store:
            await store.put_state({"file:/var/log/a": b"1024", "window:avg": b"\x00\x01"})
            await store.put_state({"file:/var/log/a": b"2048", "window:avg": None})
        async with await Store.open(tmp_path / "s.db") as store:
            assert await store.get_state("file:/var/log/a") == b"2048"
            assert await store.get_state("window:avg") is None
            assert await store.get_state("never") is None

    run(main())


def test_put_state_of_several_keys_is_one_commit(tmp_path):
    async def main():
        async with await Store.open(tmp_path / "s.db") as store:
            before = store.commits
            await store.put_state({f"k{i}": b"v" for i in range(50)})
            assert store.commits == before + 1

    run(main())


def test_an_unencodable_message_fails_its_append_as_permanent_and_stores_nothing_of_it(tmp_path):
    async def main():
        async with await Store.open(tmp_path / "s.db") as store:
            buf = store.buffer("b")
            with pytest.raises(Permanent, match="cannot be stored"):
                await buf.append([*msgs(0, 2), Message({"bad": {1, 2}})])
            await buf.append(msgs(2, 1))
            assert payloads(await buf.read(10)) == [2]

    run(main())


def test_a_message_with_a_non_numeric_ts_fails_its_append_as_permanent_and_stores_nothing_of_it(tmp_path):
    async def main():
        async with await Store.open(tmp_path / "s.db") as store:
            buf = store.buffer("b")
            with pytest.raises(Permanent, match="cannot be stored"):
                await buf.append([*msgs(0, 2), Message({"i": 2}, ts="yesterday")])  # type: ignore[arg-type]
            assert buf.stats() == BufferStats(0, 0, None)
            await buf.append(msgs(3, 1))
            assert payloads(await buf.read(10)) == [3]

    run(main())


# -- one row per batch ---------------------------------------------------------------------------


def test_a_batch_is_stored_as_the_concatenated_encode_form_of_its_messages(tmp_path):
    path = tmp_path / "s.db"
    batch = msgs(0, 50)

    async def main():
        async with await Store.open(path) as store:
            await store.buffer("b").append(batch)

    run(main())
    with sqlite3.connect(path) as conn:
        [(first, last, data)] = conn.execute("SELECT seq, last, data FROM buffer_1").fetchall()
    assert (first, last) == (1, 50)
    assert data == b"".join(encode(m) for m in batch)
    assert decode(data[: len(encode(batch[0]))]) == batch[0]


def test_a_batch_bigger_than_a_row_is_cut_into_rows_and_reads_back_whole(tmp_path):
    path = tmp_path / "s.db"
    n = rows.ROW_MAX_MESSAGES + 100

    async def main():
        async with await Store.open(path) as store:
            buf = store.buffer("b")
            await buf.append(msgs(0, n))
            assert payloads(await buf.read(n)) == list(range(n))
            assert buf.stats().count == n

    run(main())
    with sqlite3.connect(path) as conn:
        [(count, biggest)] = conn.execute("SELECT count(*), max(length(data)) FROM buffer_1").fetchall()
    assert count >= 2
    assert biggest <= rows.ROW_MAX_BYTES


def test_a_message_bigger_than_a_row_is_stored_alone_and_reads_back_equal(tmp_path):
    async def main():
        big = Message({"blob": "x" * (rows.ROW_MAX_BYTES + 1000)}, source="cam")
        async with await Store.open(tmp_path / "s.db") as store:
            buf = store.buffer("b")
            seqs = await buf.append([*msgs(0, 3), big, *msgs(3, 3)])
            assert [seq for seq, _ in await buf.read(3, after=seqs[2])] == list(seqs[3:6])
            got = await buf.read(10)
            assert got[3] == (seqs[3], big)
            assert payloads(got[:3] + got[4:]) == [0, 1, 2, 3, 4, 5]
            assert buf.stats().bytes == sum(len(encode(m)) for _, m in got)
            await buf.delete(seqs[:4])
            assert buf.stats().bytes == sum(len(encode(m)) for _, m in got[4:])

    run(main())


def test_messages_of_64_kib_or_more_share_a_row_with_small_ones_and_read_back_equal(tmp_path):
    async def main():
        batch = [*msgs(0, 2), Message({"blob": "y" * 70_000}), *msgs(2, 2), Message({"blob": "z" * 100_000})]
        async with await Store.open(tmp_path / "s.db") as store:
            buf = store.buffer("b")
            seqs = await buf.append(batch)
            assert [m for _, m in await buf.read(10)] == batch
            await buf.delete(seqs[:3])
            assert [m for _, m in await buf.read(10)] == batch[3:]
            assert buf.stats().bytes == sum(len(encode(m)) for m in batch[3:])
        async with await Store.open(tmp_path / "s.db") as store:
            assert [m for _, m in await store.buffer("b").read(10)] == batch[3:]

    run(main())


def wal_frames(path: Path) -> int:
    size = Path(f"{path}-wal").stat().st_size
    return max(0, size - 32) // (4096 + 24)  # header, then frames of one page plus a 24-byte header


def test_acknowledging_a_big_batch_a_few_messages_at_a_time_does_not_rewrite_it(tmp_path):
    path = tmp_path / "s.db"

    async def fill():
        async with await Store.open(path) as store:
            await store.buffer("b").append(msgs(0, 4000, pad=100))  # ~2 MB: rows of ROW_MAX_BYTES

    async def acknowledge():
        async with await Store.open(path) as store:  # close() checkpointed: the WAL starts empty
            buf = store.buffer("b")
            rows_ = await buf.read(40)
            for seq, _ in rows_:
                await buf.delete([seq])  # one commit each
            frames = wal_frames(path)
            # A commit writes the pages it changed: a trim and the counters, not the row's ~64 pages.
            assert frames <= 5 * len(rows_), f"{frames} WAL pages for {len(rows_)} acknowledgements"
            assert payloads(await buf.read(3)) == [40, 41, 42]
            assert buf.stats().count == 3960

    run(fill())
    run(acknowledge())


def test_reading_big_batches_a_few_messages_at_a_time_fetches_each_row_once_and_decodes_each_message_once(
    tmp_path, monkeypatch
):
    import msgpack

    from edgeflow.store import writer

    decoded = [0]
    fetched: list[int] = []
    real = msgpack.unpackb

    def counting(data, **kw):
        decoded[0] += len(data)
        return real(data, **kw)

    class CountingRow(rows.Row):
        __slots__ = ()

        def __init__(self, seq, last, ts, sizes, data=None):
            super().__init__(seq, last, ts, sizes, data)
            if data is not None:
                fetched.append(seq)

        def set_data(self, data):
            super().set_data(data)
            fetched.append(self.seq)

    async def main():
        async with await Store.open(tmp_path / "s.db") as store:
            buf = store.buffer("b")
            await buf.append(msgs(0, 2000, pad=150))  # ~2 rows
            stored = buf.stats().bytes
            monkeypatch.setattr(rows.msgpack, "unpackb", counting)
            monkeypatch.setattr(writer, "Row", CountingRow)
            after, got = 0, []
            while batch := await buf.read(7, after=after):
                got += payloads(batch)
                after = batch[-1][0]
                await buf.delete([seq for seq, _ in batch])  # acknowledged in between, as a sink does
            assert got == list(range(2000))
            assert len(fetched) >= 2
            assert len(fetched) == len(set(fetched)), f"rows fetched again: {fetched}"
            # Each read decodes what it returns (plus a 3-byte array header), nothing twice.
            assert decoded[0] <= stored + 3 * (2000 // 7 + 1), (decoded[0], stored)

    run(main())


# -- group commit ---------------------------------------------------------------------------------


def test_concurrent_appends_to_several_buffers_share_few_commits_and_keep_each_order(tmp_path):
    async def main():
        async with await Store.open(tmp_path / "s.db") as store:
            before = store.commits

            async def producer(k: int) -> None:
                for j in range(10):
                    await store.buffer(f"b{k % 4}").append(msgs(k * 1000 + j * 10, 10))

            await asyncio.gather(*(producer(k) for k in range(40)))  # 400 appends
            assert store.commits - before <= 40
            for n in range(4):
                got = payloads(await read_all(store, f"b{n}"))
                assert len(got) == 1000
                for k in range(n, 40, 4):  # each producer's messages in its own order
                    mine = [i for i in got if i // 1000 == k]
                    assert mine == list(range(k * 1000, k * 1000 + 100))

    run(main())


def test_one_transaction_holds_at_most_max_group_weight_messages(tmp_path):
    from edgeflow.store.writer import MAX_GROUP_WEIGHT

    async def main():
        async with await Store.open(tmp_path / "s.db") as store:
            before = store.commits
            n = 30
            await asyncio.gather(*(store.buffer("b").append(msgs(0, 1000)) for _ in range(n)))
            assert store.commits - before >= n * 1000 // MAX_GROUP_WEIGHT

    run(main())


# -- opening, schema, corruption ------------------------------------------------------------------


def user_version(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute("PRAGMA user_version").fetchone()[0]


def test_a_new_store_is_created_with_its_directory_in_wal_mode_at_the_current_schema(tmp_path):
    path = tmp_path / "deep" / "er" / "s.db"
    run(_open_close(path))
    assert user_version(path) == SCHEMA_VERSION
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def _open_close(path: Path, **kw) -> None:
    store = await Store.open(path, **kw)
    await store.close()


def test_an_empty_file_is_migrated_from_version_0(tmp_path):
    path = tmp_path / "s.db"
    path.write_bytes(b"")

    async def main():
        async with await Store.open(path) as store:
            await store.buffer("b").append(msgs(0, 1))

    run(main())
    assert user_version(path) == SCHEMA_VERSION


def test_a_version_2_store_with_one_row_per_message_is_migrated_and_replays_in_order(tmp_path):
    path = tmp_path / "s.db"
    kept = [(seq, Message({"i": seq}, source="old", ts=1000.0 + seq)) for seq in range(1, 10_001) if seq % 997]
    with sqlite3.connect(path, isolation_level=None) as conn:  # exactly what edgeflow wrote at version 2
        for migrate in schema.MIGRATIONS[:2]:
            migrate(conn)
        conn.execute("PRAGMA user_version = 2")
        conn.execute(
            "INSERT INTO buffers (id, name, count, bytes, last_seq) VALUES (1, 'b', ?, ?, 10050)",
            (len(kept), sum(len(encode(m)) for _, m in kept)),
        )
        conn.execute("INSERT INTO buffers (id, name, count, bytes, last_seq) VALUES (2, 'empty', 0, 0, 7)")
        for id_ in (1, 2):
            conn.execute(f"CREATE TABLE buffer_{id_} (seq INTEGER PRIMARY KEY, ts REAL NOT NULL, data BLOB NOT NULL)")
        conn.executemany("INSERT INTO buffer_1 VALUES (?, ?, ?)", [(s, m.ts, encode(m)) for s, m in kept])

    async def main():
        async with await Store.open(path) as store:
            buf = store.buffer("b")
            assert await buf.read(10**6) == kept
            assert buf.stats() == BufferStats(len(kept), sum(len(encode(m)) for _, m in kept), 1001.0)
            assert await store.buffer("empty").read(10) == []
            await buf.delete([seq for seq, _ in kept[:1500]])  # across the gaps the old rows had
            assert await buf.read(2) == kept[1500:1502]
            assert (await buf.append(msgs(0, 1)))[0] == 10051
            assert (await store.buffer("empty").append(msgs(0, 1)))[0] == 8

    run(main())
    assert user_version(path) == SCHEMA_VERSION


def test_a_new_migration_runs_once_on_an_existing_store_and_keeps_its_data(tmp_path, monkeypatch):
    path = tmp_path / "s.db"

    async def fill():
        async with await Store.open(path) as store:
            await store.buffer("b").append(msgs(0, 3))

    run(fill())
    calls = []

    def to_next(conn):
        calls.append(1)
        conn.execute("CREATE TABLE added (x)")

    monkeypatch.setattr(schema, "MIGRATIONS", [*schema.MIGRATIONS, to_next])

    async def reopen():
        async with await Store.open(path) as store:
            assert payloads(await read_all(store, "b")) == [0, 1, 2]

    run(reopen())
    run(reopen())
    assert calls == [1]
    assert user_version(path) == SCHEMA_VERSION + 1


def test_a_store_from_a_newer_edgeflow_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "s.db"
    run(_open_close(path))
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this edgeflow"):
        run(_open_close(path))
    assert user_version(path) == SCHEMA_VERSION + 1
    assert not quarantined(tmp_path)


def quarantined(directory: Path) -> list[Path]:
    return [p for p in directory.glob("s.db.corrupt-*") if not p.name.endswith(("-wal", "-shm"))]


def test_a_garbage_file_is_quarantined_with_its_wal_logged_and_replaced_by_a_fresh_store(tmp_path, caplog):
    path = tmp_path / "s.db"
    garbage = os.urandom(16384)
    path.write_bytes(garbage)
    Path(f"{path}-wal").write_bytes(b"junk")

    async def main():
        async with await Store.open(path) as store:
            assert store.buffer_names() == []
            await store.buffer("b").append(msgs(0, 1))
            assert payloads(await read_all(store, "b")) == [0]

    with caplog.at_level(logging.ERROR, logger="edgeflow.store"):
        run(main())
    [moved] = quarantined(tmp_path)
    assert moved.read_bytes() == garbage
    assert Path(f"{moved}-wal").read_bytes() == b"junk"
    assert any("CORRUPT" in r.message and str(moved) in r.getMessage() for r in caplog.records)


def test_a_store_with_damaged_pages_is_quarantined(tmp_path, caplog):
    path = tmp_path / "s.db"

    async def fill():
        async with await Store.open(path) as store:
            for k in range(20):
                await store.buffer("b").append(msgs(k * 100, 100, pad=100))

    run(fill())
    with open(path, "r+b") as f:  # keep the header (page 1) valid, trash pages in the middle
        f.seek(4096 * 3)
        f.write(os.urandom(4096 * 4))
    with caplog.at_level(logging.ERROR, logger="edgeflow.store"):
        run(_open_close(path))
    assert len(quarantined(tmp_path)) == 1
    assert any(r.levelno == logging.ERROR for r in caplog.records)


def test_an_uncreatable_directory_is_a_store_error_naming_it(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(StoreError, match=r"cannot create the store directory .*not-a-dir"):
        run(_open_close(blocker / "data" / "s.db"))


def test_synchronous_must_be_normal_or_full(tmp_path):
    with pytest.raises(ValueError, match="synchronous must be"):
        run(_open_close(tmp_path / "s.db", synchronous="off"))


def test_a_closed_store_refuses_requests(tmp_path):
    async def main():
        store = await Store.open(tmp_path / "s.db")
        await store.close()
        await store.close()
        with pytest.raises(StoreError, match="closed"):
            await store.buffer("b").append(msgs(0, 1))

    run(main())


# -- full disk ------------------------------------------------------------------------------------


async def fill_until_full(buf, acked: list[int], start: int, pad: int) -> None:
    """Append batches of 20 until StoreFull; the acknowledged payload ids go to `acked`."""
    for n in range(start, start + 100_000, 20):
        try:
            await buf.append(msgs(n, 20, pad=pad))
        except StoreFull:
            return
        acked.extend(range(n, n + 20))
    pytest.fail("the store never filled up")


def test_a_full_store_cap_fails_appends_as_retryable_store_full_and_recovers_after_deletes(tmp_path):
    path = tmp_path / "s.db"

    async def main():
        acked: list[int] = []
        async with await Store.open(path, max_bytes=256 * 1024) as store:
            buf = store.buffer("b")
            await fill_until_full(buf, acked, 0, pad=200)
            before = buf.stats()
            with pytest.raises(Retryable):
                await buf.append(msgs(10**6, 20, pad=200))
            assert buf.stats() == before  # the failed group left no trace, not even in the counters
            assert payloads(await read_all(store, "b")) == acked
            rows = await buf.read(len(acked) // 2)
            await buf.delete([seq for seq, _ in rows])
            del acked[: len(rows)]
            await buf.append(msgs(10**6, 20, pad=200))
            acked.extend(range(10**6, 10**6 + 20))
        async with await Store.open(path) as store:
            assert payloads(await read_all(store, "b")) == acked
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    run(main())


def test_a_write_that_fails_fails_every_request_committed_with_it_and_each_can_be_retried(tmp_path):
    from edgeflow.store.writer import MAX_GROUP_WEIGHT

    async def main():
        async with await Store.open(tmp_path / "s.db", max_bytes=4 * 1024 * 1024) as store:
            # The first append is a whole group and keeps the writer busy for a while; the next two,
            # quick to encode (a few big messages), queue behind it and share one transaction.
            first = store.buffer("a").append(msgs(0, 3 * MAX_GROUP_WEIGHT))
            fits = store.buffer("b").append(msgs(0, 1))
            too_big = store.buffer("c").append(msgs(0, 5, pad=1024 * 1024))
            results = await asyncio.gather(first, fits, too_big, return_exceptions=True)
            assert isinstance(results[0], range)
            assert isinstance(results[1], StoreFull)
            assert isinstance(results[2], StoreFull)
            assert store.buffer("b").stats().count == 0
            await store.buffer("b").append(msgs(0, 1))
            assert payloads(await read_all(store, "b")) == [0]

    run(main())


@pytest.fixture
def small_fs(tmp_path):
    """A real 1 MiB filesystem (tmpfs), so ENOSPC comes from the kernel."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root/CAP_SYS_ADMIN): {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_filesystem_fails_appends_as_store_full_and_they_succeed_once_space_is_freed(small_fs):
    path = small_fs / "s.db"
    filler = small_fs / "filler"

    async def main():
        acked: list[int] = []
        async with await Store.open(path) as store:
            buf = store.buffer("b")
            await buf.append(msgs(0, 1))
            acked.append(0)
            filler.write_bytes(b"\0" * (600 * 1024))  # something else eats the disk
            await fill_until_full(buf, acked, 1, pad=300)
            assert payloads(await read_all(store, "b")) == acked
            filler.unlink()
            await buf.append(msgs(10**6, 20, pad=300))
            acked.extend(range(10**6, 10**6 + 20))
        async with await Store.open(path) as store:
            assert payloads(await read_all(store, "b")) == acked
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    run(main())


def test_waiting_on_the_store_never_blocks_the_event_loop(tmp_path):
    async def main():
        async with await Store.open(tmp_path / "s.db", synchronous="full") as store:
            ticks = 0
            stop = asyncio.Event()

            async def ticker():
                nonlocal ticks
                while not stop.is_set():
                    ticks += 1
                    await asyncio.sleep(0)

            task = asyncio.create_task(ticker())
            t = time.perf_counter()
            for k in range(20):
                await store.buffer("b").append(msgs(k * 100, 100))
            stop.set()
            await task
            # Had the I/O run on the loop, the ticker would only run between appends (~20 turns).
            assert ticks >= 200, f"{ticks} loop turns in {time.perf_counter() - t:.3f}s of 20 fsynced commits"

    run(main())


def test_a_read_only_filesystem_at_open_is_a_store_error_naming_the_file(small_fs):
    path = small_fs / "s.db"
    run(_open_close(path))
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    with pytest.raises(StoreError, match=f"cannot open store {path}.*read-only filesystem"):
        run(_open_close(path))
