"""The store's writer thread: one SQLite connection, group commit, futures resolved in batches.

Callers on the event loop put requests on a queue and await a future. The thread takes every queued
request (up to `MAX_GROUP_WEIGHT` messages' worth), runs them all in ONE transaction, commits once,
then resolves all their futures with one `call_soon_threadsafe` callback. While a commit runs, the
next requests accumulate, so the batch grows with the load and no delay is ever added on purpose.

Reads run on this thread too, inside the same transactions: there is one connection, so a read always
sees every write queued before it (a sink reading right after an append finds it), nothing needs a
second connection, WAL reader locks or checkpoint coordination, and a read costs one thread hop like
a write. Reads are short index-range scans, so they never hold back commits for long.

Failure model: an `sqlite3.Error` anywhere in a group rolls back the whole transaction and fails every
request of the group (reads included, since they may have seen the rolled-back writes) with the
translated error (`StoreFull`, `StoreUnavailable`, `StoreError`); the in-memory counters are reloaded
from the file before the next group. Any other exception fails only the request that raised it (a
message msgpack cannot encode: `Permanent`); its transaction goes on.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeflow.errors import EdgeflowError, Permanent, StoreError
from edgeflow.message import Message, decode, encode
from edgeflow.store.faults import translate
from edgeflow.store.schema import buffer_table, open_database

__all__ = ["MAX_GROUP_WEIGHT", "BufferStats", "Op", "Request", "Writer"]

log = logging.getLogger("edgeflow.store")

# Bounds one transaction (and so the latency of everyone in it, and the WAL growth) to ~10-30 ms of work.
MAX_GROUP_WEIGHT = 10_000


@dataclass(frozen=True, slots=True)
class BufferStats:
    """A buffer's committed content: messages, bytes of their stored form, and `oldest_ts`, the ts of
    the message at the head (the next to deliver, the one that has waited longest)."""

    count: int = 0
    bytes: int = 0
    oldest_ts: float | None = None


class Op:
    APPEND, READ, DELETE, DROP_OLDEST, EXPIRE, GET_STATE, PUT_STATE, CLOSE = range(8)
    WRITES = frozenset({APPEND, DELETE, DROP_OLDEST, EXPIRE, PUT_STATE})


class Request:
    __slots__ = ("arg", "fut", "name", "op", "weight")

    def __init__(self, op: int, name: str, arg: Any, fut: asyncio.Future[Any], weight: int = 1) -> None:
        self.op = op
        self.name = name
        self.arg = arg
        self.fut = fut
        self.weight = weight


# (future, value or exception, True when it is an exception)
Result = tuple["asyncio.Future[Any]", Any, bool]
Deliver = Callable[[list[Result], dict[str, BufferStats]], None]


class _Buf:
    """Writer-side state of one buffer: committed counters plus the SQL naming its table."""

    __slots__ = (
        "bytes",
        "count",
        "id",
        "last_seq",
        "oldest",
        "shrunk",
        "sql_count_between",
        "sql_count_upto",
        "sql_delete_between",
        "sql_delete_upto",
        "sql_first_fresh",
        "sql_insert",
        "sql_nth",
        "sql_oldest",
        "sql_read",
    )  # fmt: skip

    def __init__(self, id_: int, count: int, nbytes: int, last_seq: int, oldest: float | None) -> None:
        self.id = id_
        self.count = count
        self.bytes = nbytes
        self.last_seq = last_seq
        self.oldest = oldest
        self.shrunk = False
        t = f"buffer_{id_:d}"
        sums = "SELECT count(*), coalesce(sum(length(data)), 0) FROM " + t
        self.sql_insert = f"INSERT INTO {t} (seq, ts, data) VALUES (?, ?, ?)"
        self.sql_read = f"SELECT seq, data FROM {t} WHERE seq > ? ORDER BY seq LIMIT ?"
        self.sql_count_between = f"{sums} WHERE seq BETWEEN ? AND ?"
        self.sql_delete_between = f"DELETE FROM {t} WHERE seq BETWEEN ? AND ?"
        self.sql_nth = f"SELECT max(seq) FROM (SELECT seq FROM {t} WHERE seq > ? ORDER BY seq LIMIT ?)"
        self.sql_count_upto = f"{sums} WHERE seq <= ?"
        self.sql_delete_upto = f"DELETE FROM {t} WHERE seq <= ?"
        self.sql_first_fresh = f"SELECT seq FROM {t} WHERE seq > ? AND ts >= ? ORDER BY seq LIMIT 1"
        self.sql_oldest = f"SELECT ts FROM {t} ORDER BY seq LIMIT 1"

    def stats(self) -> BufferStats:
        return BufferStats(self.count, self.bytes, self.oldest)


def _runs(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted, de-duplicated `seqs` as inclusive (first, last) runs of consecutive integers."""
    ss = sorted(set(seqs))
    if ss[-1] - ss[0] + 1 == len(ss):
        return [(ss[0], ss[-1])]
    runs = []
    first = prev = ss[0]
    for s in ss[1:]:
        if s != prev + 1:
            runs.append((first, prev))
            first = s
        prev = s
    runs.append((first, prev))
    return runs


def _fresh(err: EdgeflowError, cause: BaseException) -> EdgeflowError:
    """A copy of `err` per waiting caller: one exception object raised in several tasks would share
    (and grow) one traceback."""
    copy = type(err)(*err.args)
    copy.__cause__ = cause
    return copy


class Writer:
    """Owns the connection for the life of a `Store`; started by `Store.open`, ended by `Op.CLOSE`.

    `opened` resolves with every buffer's stats once the file is open (or with the `StoreError` that
    prevented it, after which the thread has ended). `deliver(results, stats)` is called on the event
    loop after each group. `commits` counts committed write transactions.
    """

    def __init__(
        self,
        path: Path,
        synchronous: str,
        max_bytes: int | None,
        loop: asyncio.AbstractEventLoop,
        deliver: Deliver,
    ) -> None:
        # A daemon thread: a store abandoned without close() must not keep the process alive.
        self.thread = threading.Thread(target=self._run, name=f"edgeflow-store[{path.name}]", daemon=True)
        self.path = path
        self.synchronous = synchronous
        self.max_bytes = max_bytes
        self.loop = loop
        self.deliver = deliver
        self.queue: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self.opened: asyncio.Future[dict[str, BufferStats]] = loop.create_future()
        self.commits = 0
        self.failed: str | None = None  # the failure being reported, so it is logged once, not per retry
        self._conn: sqlite3.Connection | None = None
        self._bufs: dict[str, _Buf] = {}
        self._stale = False

    # -- thread body ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._conn = open_database(self.path, self.synchronous, self.max_bytes)
            self._load()
        except BaseException as exc:
            if not isinstance(exc, EdgeflowError):
                exc = StoreError(f"cannot open store {self.path}: {exc}")
            self._post([(self.opened, exc, True)], {})
            return
        self._post([(self.opened, {n: b.stats() for n, b in self._bufs.items()}, False)], {})
        q = self.queue
        while True:
            group = [q.get()]
            weight = group[0].weight
            while weight < MAX_GROUP_WEIGHT:
                try:
                    req = q.get_nowait()
                except queue.Empty:
                    break
                group.append(req)
                weight += req.weight
            closing = group.pop() if group[-1].op == Op.CLOSE else None  # always the last request
            if group:
                try:
                    self._run_group(group)
                except Exception as exc:  # a bug here must not leave callers waiting forever
                    log.exception("store %s: internal error", self.path)
                    self._abort()
                    err = f"store {self.path}: internal error {exc!r}"
                    self._post([(r.fut, StoreError(err), True) for r in group], {})
            if closing is not None:
                self._shutdown()
                self._post([(closing.fut, None, False)], {})
                return

    def _post(self, results: list[Result], stats: dict[str, BufferStats]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.deliver, results, stats)
        except RuntimeError:
            pass  # the loop is closed: nobody is waiting any more

    def _shutdown(self) -> None:
        assert self._conn is not None
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("store %s: final checkpoint failed (%s); the WAL replays at next open", self.path, exc)
        self._conn.close()

    def _load(self) -> None:
        """(Re)read every buffer's counters from the file: at open and after a failed group."""
        assert self._conn is not None
        bufs = {}
        for id_, name, count, nbytes, last_seq in self._conn.execute(
            "SELECT id, name, count, bytes, last_seq FROM buffers"
        ).fetchall():
            b = _Buf(id_, count, nbytes, last_seq, None)
            row = self._conn.execute(b.sql_oldest).fetchone()
            b.oldest = row[0] if row else None
            bufs[name] = b
        self._bufs = bufs
        self._stale = False

    # -- one group ----------------------------------------------------------------------------------

    def _run_group(self, group: list[Request]) -> None:
        conn = self._conn
        assert conn is not None
        writes = any(r.op in Op.WRITES for r in group)
        results: list[Result] = []
        touched: dict[str, _Buf] = {}
        try:
            if self._stale:
                self._load()
            conn.execute("BEGIN IMMEDIATE" if writes else "BEGIN")
            for r in group:
                try:
                    results.append((r.fut, _HANDLERS[r.op](self, conn, r, touched), False))
                except sqlite3.Error:
                    raise
                except Exception as exc:
                    results.append((r.fut, exc, True))
            for b in touched.values():
                if b.shrunk:
                    b.oldest = conn.execute(b.sql_oldest).fetchone()[0] if b.count else None
                    b.shrunk = False
                conn.execute(
                    "UPDATE buffers SET count = ?, bytes = ?, last_seq = ? WHERE id = ?",
                    (b.count, b.bytes, b.last_seq, b.id),
                )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._abort()
            err = translate(exc, self.path)
            if str(err) != self.failed:
                self.failed = str(err)
                log.error("%s (%d requests failed, callers retry)", err, len(group))
            self._post([(r.fut, _fresh(err, exc), True) for r in group], {})
            return
        if writes:
            self.commits += 1
            if self.failed is not None:
                log.info("store %s: writes succeed again", self.path)
                self.failed = None
        self._post(results, {name: b.stats() for name, b in touched.items()})

    def _abort(self) -> None:
        """Roll back a failed group; the in-memory counters are reloaded before the next one."""
        assert self._conn is not None
        self._stale = True
        if self._conn.in_transaction:
            try:
                self._conn.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.error("store %s: rollback failed: %s", self.path, exc)

    def _buffer(self, conn: sqlite3.Connection, name: str) -> _Buf:
        b = self._bufs.get(name)
        if b is None:
            id_ = conn.execute("INSERT INTO buffers (name) VALUES (?)", (name,)).lastrowid
            assert id_ is not None
            buffer_table(conn, id_)
            b = self._bufs[name] = _Buf(id_, 0, 0, 0, None)
        return b

    # -- handlers: run inside the group's transaction; return the request's result -----------------
    # A handler may raise a non-SQLite error only before its first write: such an error fails just its
    # own request while the transaction goes on, so nothing of that request may have been written.

    def _op_append(self, conn: sqlite3.Connection, r: Request, touched: dict[str, _Buf]) -> range:
        msgs: Sequence[Message] = r.arg
        b = self._buffer(conn, r.name)
        first = seq = b.last_seq + 1
        if not msgs:
            return range(first, first)
        rows = []
        nbytes = 0
        try:
            for m in msgs:
                data = encode(m)
                rows.append((seq, float(m.ts), data))
                nbytes += len(data)
                seq += 1
        except (TypeError, ValueError, OverflowError) as exc:
            raise Permanent(f"message {m.id} cannot be stored: {exc}") from exc
        conn.executemany(b.sql_insert, rows)
        b.last_seq = seq - 1
        b.count += len(rows)
        b.bytes += nbytes
        if b.oldest is None:  # the buffer was empty: the first of these is now its head
            b.oldest = rows[0][1]
        touched[r.name] = b
        return range(first, seq)

    def _op_read(self, conn: sqlite3.Connection, r: Request, touched: dict[str, _Buf]) -> list[tuple[int, Message]]:
        b = self._bufs.get(r.name)
        if b is None or b.count == 0:
            return []
        max_n, after = r.arg
        return [(seq, decode(data)) for seq, data in conn.execute(b.sql_read, (after, max_n)).fetchall()]

    def _remove(self, conn: sqlite3.Connection, b: _Buf, count_sql: str, delete_sql: str, arg: tuple[Any, ...]) -> int:
        n, nbytes = conn.execute(count_sql, arg).fetchone()
        if n:
            conn.execute(delete_sql, arg)
            b.count -= n
            b.bytes -= nbytes
            b.shrunk = True
        return int(n)

    def _op_delete(self, conn: sqlite3.Connection, r: Request, touched: dict[str, _Buf]) -> None:
        b = self._bufs.get(r.name)
        if b is None or not r.arg or b.count == 0:
            return
        for run in _runs(r.arg):
            self._remove(conn, b, b.sql_count_between, b.sql_delete_between, run)
        touched[r.name] = b

    def _op_drop_oldest(self, conn: sqlite3.Connection, r: Request, touched: dict[str, _Buf]) -> int:
        b = self._bufs.get(r.name)
        n, after = r.arg
        if b is None or n <= 0 or b.count == 0:
            return 0
        (cut,) = conn.execute(b.sql_nth, (after, n)).fetchone()
        if cut is None:
            return 0
        touched[r.name] = b
        return self._remove(conn, b, b.sql_count_between, b.sql_delete_between, (after + 1, cut))

    def _op_expire(self, conn: sqlite3.Connection, r: Request, touched: dict[str, _Buf]) -> int:
        b = self._bufs.get(r.name)
        cutoff, after = r.arg
        if b is None or b.count == 0 or (after == 0 and b.oldest is not None and b.oldest >= cutoff):
            return 0
        # Expiry walks from the head in delivery order and stops at the first message still fresh:
        # a message with an old timestamp queued behind fresher ones expires once it reaches the head.
        row = conn.execute(b.sql_first_fresh, (after, cutoff)).fetchone()
        cut = b.last_seq if row is None else row[0] - 1
        if cut <= after:
            return 0
        touched[r.name] = b
        return self._remove(conn, b, b.sql_count_between, b.sql_delete_between, (after + 1, cut))

    def _op_get_state(self, conn: sqlite3.Connection, r: Request, touched: dict[str, _Buf]) -> bytes | None:
        row = conn.execute("SELECT value FROM state WHERE key = ?", (r.name,)).fetchone()
        return None if row is None else bytes(row[0])

    def _op_put_state(self, conn: sqlite3.Connection, r: Request, touched: dict[str, _Buf]) -> None:
        items: dict[str, bytes | None] = r.arg
        puts = [(k, v) for k, v in items.items() if v is not None]
        if puts:
            conn.executemany(
                "INSERT INTO state (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                puts,
            )
        dels = [(k,) for k, v in items.items() if v is None]
        if dels:
            conn.executemany("DELETE FROM state WHERE key = ?", dels)


_HANDLERS: dict[int, Callable[[Writer, sqlite3.Connection, Request, dict[str, _Buf]], Any]] = {
    Op.APPEND: Writer._op_append,
    Op.READ: Writer._op_read,
    Op.DELETE: Writer._op_delete,
    Op.DROP_OLDEST: Writer._op_drop_oldest,
    Op.EXPIRE: Writer._op_expire,
    Op.GET_STATE: Writer._op_get_state,
    Op.PUT_STATE: Writer._op_put_state,
}
