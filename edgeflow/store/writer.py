"""The store's writer thread: one SQLite connection, group commit, futures resolved in batches.

Callers on the event loop put requests on a queue and await a future. The thread takes every queued
request (up to `MAX_GROUP_WEIGHT` messages' worth), runs them all in ONE transaction, commits once,
then resolves all their futures with one `call_soon_threadsafe` callback. While a commit runs, the
next requests accumulate, so the batch grows with the load and no delay is ever added on purpose.

Reads run on this thread too, inside the same transactions: there is one connection, so a read always
sees every write queued before it (a sink reading right after an append finds it), nothing needs a
second connection, WAL reader locks or checkpoint coordination, and a read costs one thread hop like
a write. Reads are short index-range scans, so they never hold back commits for long.

Each append is stored as one row per batch (`edgeflow.store.rows`), so the per-row cost of SQLite is
paid per batch, not per message. Removing messages never rewrites a row in the common cases: a row
wholly removed is deleted, a row left with one contiguous range gets a trim (`schema`); only a hole in
the middle of a row rewrites it. The last `ROW_CACHE` rows each buffer touched stay indexed in memory
(timestamps, record offsets, and the records once read), so a sink that reads or acknowledges a big
row in small pieces fetches it once; a read hands the loop just the records it returns, to decode.

Failure model: an `sqlite3.Error` anywhere in a group rolls back the whole transaction and fails every
request of the group (reads included, since they may have seen the rolled-back writes) with the
translated error (`StoreFull`, `StoreUnavailable`, `StoreError`); the in-memory counters, trims and
cached rows are reloaded from the file before the next group. Any other exception fails only the
request that raised it (a damaged row: `StoreError`); its transaction goes on. Messages are encoded on
the loop before they are queued (`rows.Encoder`): one that cannot be fails its `append` at once.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeflow.errors import EdgeflowError, StoreError
from edgeflow.store.faults import translate
from edgeflow.store.rows import ROW_MAX_BYTES, Encoded, Records, Row, RowValues
from edgeflow.store.schema import buffer_table, open_database

__all__ = ["MAX_GROUP_WEIGHT", "BufferStats", "Op", "Request", "Writer"]

log = logging.getLogger("edgeflow.store")

# Bounds one transaction (and so the latency of everyone in it, and the WAL growth) to ~10-30 ms of work.
MAX_GROUP_WEIGHT = 10_000
# Rows kept indexed (and, once read, with their records) per buffer: the head a sink reads and
# acknowledges in pieces, and the next one when a read or an acknowledgement spans two rows.
ROW_CACHE = 4


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
    """Writer-side state of one buffer: committed counters, the trims of its partly removed rows (as in
    the `trims` table), the rows it touched last (`ROW_CACHE`, least recently used first) and the SQL
    naming its table."""

    __slots__ = (
        "bytes",
        "count",
        "id",
        "last_seq",
        "oldest",
        "rows",
        "shrunk",
        "sql_blob",
        "sql_data",
        "sql_delete_between",
        "sql_from",
        "sql_head",
        "sql_insert",
        "sql_meta",
        "sql_span",
        "trims",
    )  # fmt: skip

    def __init__(self, id_: int, count: int, nbytes: int, last_seq: int, oldest: float | None) -> None:
        self.id = id_
        self.count = count
        self.bytes = nbytes
        self.last_seq = last_seq
        self.oldest = oldest
        self.shrunk = False
        self.trims: dict[int, tuple[int, int]] = {}  # row key -> (lo, hi), the seqs it still holds
        self.rows: OrderedDict[int, Row] = OrderedDict()
        t = f"buffer_{id_:d}"
        # Rows from the one holding seq ?1 (or the first after it) on: an index seek, then a range scan.
        start = f"seq >= coalesce((SELECT max(seq) FROM {t} WHERE seq <= ?1), 0)"
        self.sql_insert = f"INSERT INTO {t} (seq, last, ts, sizes, data) VALUES (?, ?, ?, ?, ?)"
        self.sql_from = f"SELECT seq, last FROM {t} WHERE {start} ORDER BY seq"
        self.sql_span = f"SELECT seq, last, length(data) FROM {t} WHERE {start} AND seq <= ?2 ORDER BY seq"
        self.sql_meta = f"SELECT ts, sizes FROM {t} WHERE seq = ?"
        self.sql_data = f"SELECT ts, sizes, data FROM {t} WHERE seq = ?"
        self.sql_blob = f"SELECT data FROM {t} WHERE seq = ?"
        self.sql_delete_between = f"DELETE FROM {t} WHERE seq BETWEEN ? AND ?"
        self.sql_head = f"SELECT seq, last FROM {t} ORDER BY seq LIMIT 1"

    def stats(self) -> BufferStats:
        return BufferStats(self.count, self.bytes, self.oldest)


_TRIM_PUT = (
    "INSERT INTO trims (buffer, seq, lo, hi) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (buffer, seq) DO UPDATE SET lo = excluded.lo, hi = excluded.hi"
)
_TRIM_DELETE = "DELETE FROM trims WHERE buffer = ? AND seq = ?"


def _runs(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted, de-duplicated `seqs` as inclusive (first, last) runs of consecutive integers."""
    if isinstance(seqs, range) and seqs.step == 1:  # what delivery acknowledges: no sorting, no set
        return [(seqs.start, seqs.stop - 1)] if seqs else []
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
        """(Re)read every buffer's counters and trims from the file: at open and after a failed group
        (which also drops the cached rows: the rolled-back group may have written or trimmed them)."""
        conn = self._conn
        assert conn is not None
        trims: dict[int, dict[int, tuple[int, int]]] = {}
        for id_, seq, lo, hi in conn.execute("SELECT buffer, seq, lo, hi FROM trims").fetchall():
            trims.setdefault(id_, {})[seq] = (lo, hi)
        bufs = {}
        for id_, name, count, nbytes, last_seq in conn.execute(
            "SELECT id, name, count, bytes, last_seq FROM buffers"
        ).fetchall():
            b = _Buf(id_, count, nbytes, last_seq, None)
            b.trims = trims.get(id_, {})
            b.oldest = self._head_ts(conn, b) if count else None
            bufs[name] = b
        self._bufs = bufs
        self._stale = False

    def _head_ts(self, conn: sqlite3.Connection, b: _Buf) -> float | None:
        """The ts of the buffer's head message (the next to deliver), or None if it is empty."""
        head = conn.execute(b.sql_head).fetchone()
        if head is None:
            return None
        seq, last = head
        lo, _ = b.trims.get(seq, (seq, last))
        ts: float = self._row(conn, b, seq, last).tss[lo - seq]
        return ts

    def _row(self, conn: sqlite3.Connection, b: _Buf, seq: int, last: int, data: bool = False) -> Row:
        """Row `seq` (whose last seq is `last`) from the cache or the file, with its records if `data`.

        Many small reads, or acknowledgements, of one big row fetch and index it once. Raises
        `StoreError` if the row's columns disagree (damage SQLite's own checks cannot see).
        """
        row = b.rows.get(seq)
        try:
            if row is None or row.last != last:
                if data:
                    ts, sizes, blob = conn.execute(b.sql_data, (seq,)).fetchone()
                    row = Row(seq, last, ts, sizes, blob)
                else:
                    ts, sizes = conn.execute(b.sql_meta, (seq,)).fetchone()
                    row = Row(seq, last, ts, sizes)
                b.rows[seq] = row
                if len(b.rows) > ROW_CACHE:
                    b.rows.popitem(last=False)
            else:
                b.rows.move_to_end(seq)
                if data and row.data is None:
                    row.set_data(conn.execute(b.sql_blob, (seq,)).fetchone()[0])
        except ValueError as exc:
            raise StoreError(f"store {self.path}: {exc}; restore it from a backup or move it away") from exc
        return row

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
                    b.oldest = self._head_ts(conn, b) if b.count else None
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
        batch: Encoded = r.arg  # encoded by `Buffer.append` on the loop
        b = self._buffer(conn, r.name)
        first = b.last_seq + 1
        if not batch.count:
            return range(first, first)
        conn.executemany(b.sql_insert, batch.values(first))
        b.last_seq = first + batch.count - 1
        b.count += batch.count
        b.bytes += batch.nbytes
        if b.oldest is None:  # the buffer was empty: the first of these is now its head
            b.oldest = batch.first_ts
        touched[r.name] = b
        return range(first, b.last_seq + 1)

    def _op_read(self, conn: sqlite3.Connection, r: Request, touched: dict[str, _Buf]) -> list[Records]:
        """The records to return, by row, for `Buffer.read` to decode on the loop."""
        b = self._bufs.get(r.name)
        max_n, after = r.arg
        out: list[Records] = []
        if b is None or b.count == 0 or max_n <= 0:
            return out
        cur = conn.execute(b.sql_from, (after + 1,))
        try:
            for seq, last in cur:
                lo, hi = b.trims.get(seq, (seq, last))
                lo = max(lo, after + 1)
                if lo > hi:
                    continue
                k = min(hi - lo + 1, max_n)
                row = self._row(conn, b, seq, last, data=True)
                out.append(row.records(lo - seq, lo - seq + k))
                if row.ends[-1] > ROW_MAX_BYTES:  # one huge message, read whole: not worth keeping
                    row.data = None
                max_n -= k
                if not max_n:
                    break
        finally:
            cur.close()
        return out

    def _remove(self, conn: sqlite3.Connection, b: _Buf, runs: list[tuple[int, int]]) -> int:
        """Remove the seqs in `runs` (sorted, disjoint, inclusive); returns how many were there.

        Per row: all of it gone -> the row is deleted; what is left is one contiguous range (a prefix or
        suffix removed, the common case) -> its trim is updated, the row itself is not touched; what is
        left is several ranges (a hole) -> the row is rewritten as one row per range. Everything that
        reads (and so may raise) runs before the first write.
        """
        span = conn.execute(b.sql_span, (runs[0][0], runs[-1][1])).fetchall()
        gone: list[int] = []  # positions in `span` of the rows to delete
        pieces_rows: list[RowValues] = []
        trims: dict[int, tuple[int, int]] = {}
        removed = nbytes = 0
        ri, nruns = 0, len(runs)
        for pos, (seq, last, size) in enumerate(span):
            lo, hi = b.trims.get(seq, (seq, last))
            while ri < nruns and runs[ri][1] < lo:
                ri += 1
            pieces = []  # what is left of lo..hi
            cur = lo
            j = ri
            while j < nruns and runs[j][0] <= hi:
                a, z = runs[j]
                if a > cur:
                    pieces.append((cur, a - 1))
                cur = max(cur, z + 1)
                if z >= hi:
                    break
                j += 1
            if cur <= hi:
                pieces.append((cur, hi))
            if len(pieces) == 1 and pieces[0] == (lo, hi):
                continue  # untouched
            removed += hi - lo + 1 - sum(y - x + 1 for x, y in pieces)
            if not pieces and lo == seq and hi == last:
                nbytes += size
                gone.append(pos)
                continue
            row = self._row(conn, b, seq, last, data=len(pieces) > 1)
            nbytes += row.nbytes(lo - seq, hi - seq + 1) - sum(row.nbytes(x - seq, y - seq + 1) for x, y in pieces)
            if len(pieces) == 1:
                trims[seq] = pieces[0]
            else:
                if pieces:
                    pieces_rows.extend(row.piece(x - seq, y - seq + 1) for x, y in pieces)
                gone.append(pos)
        if not removed:
            return 0
        # Deleted rows that are neighbours in the table go in one range delete.
        i = 0
        while i < len(gone):
            k = i
            while k + 1 < len(gone) and gone[k + 1] == gone[k] + 1:
                k += 1
            conn.execute(b.sql_delete_between, (span[gone[i]][0], span[gone[k]][0]))
            i = k + 1
        if pieces_rows:
            conn.executemany(b.sql_insert, pieces_rows)
        keys = [span[pos][0] for pos in gone]
        untrim = [(b.id, key) for key in keys if key in b.trims]
        if untrim:
            conn.executemany(_TRIM_DELETE, untrim)
        if trims:
            conn.executemany(_TRIM_PUT, [(b.id, key, lo, hi) for key, (lo, hi) in trims.items()])
        for key in keys:
            b.trims.pop(key, None)
            b.rows.pop(key, None)
        b.trims.update(trims)
        b.count -= removed
        b.bytes -= nbytes
        b.shrunk = True
        return removed

    def _op_delete(self, conn: sqlite3.Connection, r: Request, touched: dict[str, _Buf]) -> None:
        b = self._bufs.get(r.name)
        if b is None or not r.arg or b.count == 0:
            return
        if self._remove(conn, b, _runs(r.arg)):
            touched[r.name] = b

    def _op_drop_oldest(self, conn: sqlite3.Connection, r: Request, touched: dict[str, _Buf]) -> int:
        b = self._bufs.get(r.name)
        n, after = r.arg
        if b is None or n <= 0 or b.count == 0:
            return 0
        cut = None  # the n-th message after `after`, or the last one
        cur = conn.execute(b.sql_from, (after + 1,))
        try:
            for seq, last in cur:
                lo, hi = b.trims.get(seq, (seq, last))
                lo = max(lo, after + 1)
                if lo > hi:
                    continue
                if hi - lo + 1 >= n:
                    cut = lo + n - 1
                    break
                n -= hi - lo + 1
                cut = hi
        finally:
            cur.close()
        if cut is None:
            return 0
        removed = self._remove(conn, b, [(after + 1, cut)])
        if removed:
            touched[r.name] = b
        return removed

    def _op_expire(self, conn: sqlite3.Connection, r: Request, touched: dict[str, _Buf]) -> int:
        b = self._bufs.get(r.name)
        cutoff, after = float(r.arg[0]), r.arg[1]
        if b is None or b.count == 0 or (after == 0 and b.oldest is not None and b.oldest >= cutoff):
            return 0
        # Expiry walks from the head in delivery order and stops at the first message still fresh:
        # a message with an old timestamp queued behind fresher ones expires once it reaches the head.
        cut = None
        cur = conn.execute(b.sql_from, (after + 1,))
        try:
            for seq, last in cur:
                lo, hi = b.trims.get(seq, (seq, last))
                lo = max(lo, after + 1)
                if lo > hi:
                    continue
                fresh = self._row(conn, b, seq, last).first_fresh(lo - seq, hi - seq + 1, cutoff)
                if fresh is not None:
                    cut = seq + fresh - 1
                    break
                cut = hi
        finally:
            cur.close()
        if cut is None or cut <= after:
            return 0
        removed = self._remove(conn, b, [(after + 1, cut)])
        if removed:
            touched[r.name] = b
        return removed

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
