"""What a failed SQLite call means to the runtime: retry later, or the store is unusable.

`translate` runs on the writer thread for every `sqlite3.Error` a group of requests meets; each request
of the group then fails with a fresh copy of the translated error (see `edgeflow.store.writer`).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edgeflow.errors import EdgeflowError, Retryable, StoreError

__all__ = ["StoreFull", "StoreUnavailable", "is_corruption", "translate"]

# Primary SQLite result codes (the low byte of an extended code).
_PERM, _BUSY, _LOCKED, _NOMEM, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = (
    3, 5, 6, 7, 8, 10, 11, 13, 14, 26,
)  # fmt: skip
_UNAVAILABLE = {_PERM, _BUSY, _LOCKED, _NOMEM, _READONLY, _IOERR, _CANTOPEN}


class StoreFull(Retryable):
    """The disk, or the store's `max_bytes` cap, is full. Nothing of the failed group was written;
    retry once space is freed (acknowledged messages deleted, other files removed)."""


class StoreUnavailable(Retryable):
    """The store cannot be written right now: a read-only disk, an I/O error, a lock held by another
    process. Nothing of the failed group was written; retry later."""


def _primary(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_corruption(exc: sqlite3.Error) -> bool:
    """True when the file itself is damaged (not a database, malformed pages)."""
    return _primary(exc) in (_CORRUPT, _NOTADB)


def translate(exc: sqlite3.Error, path: Path) -> EdgeflowError:
    """The edgeflow error for `exc`: `StoreFull`, `StoreUnavailable` (both retryable) or `StoreError`."""
    code = _primary(exc)
    name = getattr(exc, "sqlite_errorname", "unknown")
    if code == _FULL:
        return StoreFull(f"store {path}: the disk is full ({exc}); free space, writes are retried")
    if code in _UNAVAILABLE:
        return StoreUnavailable(f"store {path}: cannot write right now ({exc}, {name}); retrying")
    if code in (_CORRUPT, _NOTADB):
        return StoreError(f"store {path} is corrupt ({exc}); restart to quarantine it and start afresh")
    return StoreError(f"store {path}: unexpected SQLite error ({exc}, {name})")
