"""Opening the store file: directory, corruption check and quarantine, forward schema migrations.

Everything here runs on the store's writer thread (`edgeflow.store.writer`) when `Store.open` is awaited,
so no file I/O touches the event loop.

Layout (schema version 3). One table per buffer keeps the hot paths to a single B-tree each (append is
an insert at the right edge of `buffer_<id>`, a delivered prefix is a range delete):

- `buffers(id, name, count, bytes, last_seq)`: one row per buffer; the counters are updated in the same
  transaction as the rows they count, so opening a store with a large backlog reads no backlog.
  `last_seq` makes sequence numbers strictly increasing for the life of the file, never reused, even
  after a buffer was emptied.
- `buffer_<id>(seq INTEGER PRIMARY KEY, last, ts, sizes, data)`: one row per appended batch (cut at
  `rows.ROW_MAX_MESSAGES` / `rows.ROW_MAX_BYTES`) holding the messages `seq..last`; see
  `edgeflow.store.rows` for the columns. `data` is the concatenation of `edgeflow.message.encode(msg)`.
- `trims(buffer, seq, lo, hi)`: for a row of which some messages were removed, the seqs `lo..hi` it
  still holds (always a contiguous range; a row whose remainder would not be is rewritten instead).
  Acknowledging part of a row updates this small row rather than rewriting the row's blob.
- `state(key TEXT PRIMARY KEY, value BLOB)`: source offsets, operator state.

`PRAGMA user_version` holds the schema version. `MIGRATIONS[i]` takes a file from version `i` to `i + 1`
inside one transaction (version 0 is an empty file); a migration that touches buffer tables loops over
`SELECT id FROM buffers`. A file newer than this code is refused, never rewritten.
"""

from __future__ import annotations

import datetime
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from edgeflow.errors import StoreError
from edgeflow.store.faults import is_corruption
from edgeflow.store.rows import ROW_MAX_MESSAGES, pack_rows

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "buffer_table", "open_database", "quarantine"]

log = logging.getLogger("edgeflow.store")


def _to_v1(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE buffers (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
        " count INTEGER NOT NULL DEFAULT 0, bytes INTEGER NOT NULL DEFAULT 0,"
        " last_seq INTEGER NOT NULL DEFAULT 0)"
    )
    conn.execute("CREATE TABLE state (key TEXT PRIMARY KEY, value BLOB NOT NULL)")


def _to_v2(conn: sqlite3.Connection) -> None:
    # The ts index doubled the cost of every delete (the hot path: each delivered batch) to serve
    # `expire`, which runs at most once a second and now walks the buffer from its head instead.
    for (id_,) in conn.execute("SELECT id FROM buffers").fetchall():
        conn.execute(f"DROP INDEX IF EXISTS buffer_{int(id_):d}_ts")


_V3_BUFFER = (
    "(seq INTEGER PRIMARY KEY, last INTEGER NOT NULL, ts BLOB NOT NULL, sizes BLOB NOT NULL, data BLOB NOT NULL)"
)


def _to_v3(conn: sqlite3.Connection) -> None:
    # One row per message -> one row per run of consecutive messages (see `edgeflow.store.rows`): the
    # per-row cost, not the bytes, bounded a persisting sink. The records themselves are unchanged.
    conn.execute(
        "CREATE TABLE trims (buffer INTEGER NOT NULL, seq INTEGER NOT NULL, lo INTEGER NOT NULL,"
        " hi INTEGER NOT NULL, PRIMARY KEY (buffer, seq)) WITHOUT ROWID"
    )
    for (id_,) in conn.execute("SELECT id FROM buffers").fetchall():
        table = f"buffer_{int(id_):d}"
        conn.execute(f"ALTER TABLE {table} RENAME TO {table}_v2")
        conn.execute(f"CREATE TABLE {table} {_V3_BUFFER}")
        insert = f"INSERT INTO {table} (seq, last, ts, sizes, data) VALUES (?, ?, ?, ?, ?)"
        chunk_sql = f"SELECT seq, ts, data FROM {table}_v2 WHERE seq > ? ORDER BY seq LIMIT {ROW_MAX_MESSAGES:d}"
        first = prev = 0
        tss: list[float] = []
        parts: list[bytes] = []
        # Chunk by chunk, deleting what was copied, so the new rows reuse the old rows' pages and the
        # file does not grow to hold both.
        while chunk := conn.execute(chunk_sql, (prev,)).fetchall():
            for seq, ts, data in chunk:
                if parts and (seq != prev + 1 or len(parts) >= ROW_MAX_MESSAGES):
                    conn.executemany(insert, pack_rows(first, tss, parts))
                    tss, parts = [], []
                if not parts:
                    first = seq
                tss.append(float(ts))
                parts.append(bytes(data))
                prev = seq
            conn.execute(f"DELETE FROM {table}_v2 WHERE seq <= ?", (prev,))
        if parts:
            conn.executemany(insert, pack_rows(first, tss, parts))
        conn.execute(f"DROP TABLE {table}_v2")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_to_v1, _to_v2, _to_v3]
SCHEMA_VERSION = len(MIGRATIONS)
#: SQLite's page cache, KiB (its default is 2000). The store appends batches, reads back the oldest and
#: deletes them: a large cache buys little and costs resident memory on a small device.
CACHE_KIB = 512


def buffer_table(conn: sqlite3.Connection, buffer_id: int) -> None:
    """Create the table of one buffer (current schema). `buffer_id` is an integer: no quoting issue."""
    conn.execute(f"CREATE TABLE buffer_{buffer_id:d} {_V3_BUFFER}")


class _Corrupt(Exception):
    """Carries the still-open connection: SQLite deletes a -wal file when its last connection closes,
    so the files are moved aside first and the connection closed after, keeping the evidence whole."""

    def __init__(self, reason: str, conn: sqlite3.Connection) -> None:
        super().__init__(reason)
        self.conn = conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise StoreError(
            f"store {path} has schema version {version}, newer than this edgeflow knows"
            f" ({len(MIGRATIONS)}); upgrade edgeflow or move the file away"
        )
    for target in range(version + 1, len(MIGRATIONS) + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[target - 1](conn)
            conn.execute(f"PRAGMA user_version = {target:d}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if version:
            log.info("store %s migrated to schema version %d", path, target)


def _hint(path: Path) -> str:
    if not os.access(path.parent, os.W_OK):
        return f"{path.parent} is not writable (permissions, or a read-only filesystem)"
    return f"check that {path} and {path.parent} are writable by this user"


def _connect(path: Path, synchronous: str, max_bytes: int | None) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=5.0)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open store {path}: {exc}; {_hint(path)}") from exc
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        check = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if check != ["ok"]:
            raise _Corrupt("; ".join(check), conn)
        _migrate(conn, path)
        if mode != "wal":
            log.warning("store %s: the filesystem refused WAL mode (%s); commits will be slower", path, mode)
        conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        conn.execute("PRAGMA journal_size_limit = 16777216")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB:d}")
        if max_bytes is not None:
            page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {max(2, max_bytes // page_size):d}")
    except _Corrupt:
        raise
    except sqlite3.DatabaseError as exc:
        if is_corruption(exc):
            raise _Corrupt(str(exc), conn) from exc
        conn.close()
        raise StoreError(f"cannot open store {path}: {exc}; {_hint(path)}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def quarantine(path: Path, reason: str) -> Path:
    """Move a damaged store (and its -wal/-shm files) aside as `<name>.corrupt-<UTC time>`; log loudly."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    try:
        for suffix in ("", "-wal", "-shm", "-journal"):
            src = Path(f"{path}{suffix}")
            if src.exists():
                os.replace(src, f"{target}{suffix}")
    except OSError as exc:
        raise StoreError(f"store {path} is corrupt ({reason}) and cannot be moved aside: {exc}") from exc
    log.error(
        "STORE CORRUPT: %s (%s). Moved it to %s and started an empty store; the messages it held are"
        " not replayed. Keep the moved file for inspection.",
        path,
        reason,
        target,
    )
    return target


def open_database(path: Path, synchronous: str, max_bytes: int | None) -> sqlite3.Connection:
    """Open (creating directory and file as needed) and migrate the store; quarantine it if corrupt.

    Raises `StoreError` when the directory or file cannot be created or opened, or when the file is
    newer than this code. Must be called on the thread that will use the connection.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the store directory {path.parent}: {exc.strerror}") from exc
    try:
        return _connect(path, synchronous, max_bytes)
    except _Corrupt as exc:
        try:
            quarantine(path, str(exc))
        finally:
            exc.conn.close()
    try:
        return _connect(path, synchronous, max_bytes)
    except _Corrupt as exc:
        exc.conn.close()
        raise StoreError(f"store {path}: a fresh file is corrupt too ({exc}); check the disk") from exc
