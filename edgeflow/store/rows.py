"""The row layout of a buffer table: a run of consecutive messages stored as ONE row.

Storing one SQLite row per message made the per-row cost (B-tree insert, delete, record header) dominate
a persisting sink; one row per appended batch pays it once per batch. A row covers the seqs
`seq..last` (its key is the first) and holds, column by column:

- `ts`: each message's timestamp as a little-endian float64 array (TTL expiry and `oldest_ts` read it
  without decoding messages);
- `sizes`: each record's length as a little-endian uint16 array, or uint32 when a record is 64 KiB or
  longer (told apart by the column's length: 2 or 4 bytes per message);
- `data`: the records concatenated, each exactly `edgeflow.message.encode(msg)`, so
  `edgeflow.message.decode` reads any of them.

A row is never modified in place (an UPDATE would rewrite its whole blob): which of its messages are
still there is kept beside it in the `trims` table (see `edgeflow.store.writer`). Rows are capped at
`ROW_MAX_MESSAGES` messages and `ROW_MAX_BYTES` of records (one larger message gets a row of its own),
which bounds the memory a cached row costs and what a rare rewrite copies.

`Encoder` and `decode` run on the event loop (`Buffer.append`, `Buffer.read`); the rest on the store's
writer thread (and in schema migrations).
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate, compress, islice

import msgpack

from edgeflow.errors import Permanent
from edgeflow.message import Message, new_id

__all__ = [
    "ROW_MAX_BYTES",
    "ROW_MAX_MESSAGES",
    "Encoded",
    "Encoder",
    "Records",
    "Row",
    "RowValues",
    "decode",
    "pack_rows",
    "row_values",
]

ROW_MAX_MESSAGES = 4096
ROW_MAX_BYTES = 256 * 1024

# (seq, last, ts, sizes, data): the columns of one row, in table order.
RowValues = tuple[int, int, bytes, bytes, bytes]

_SWAP = sys.byteorder != "little"
_U32 = "I" if array("I").itemsize == 4 else "L"  # "H" is 2 bytes and "d" 8 wherever Python runs


def row_values(first: int, tss: Sequence[float], sizes: Sequence[int], data: bytes) -> RowValues:
    """The column values of one row holding the records `data` (lengths `sizes`) from seq `first` on."""
    n = len(sizes)
    try:
        packed_sizes = struct.pack(f"<{n}H", *sizes)
    except struct.error:  # a record of 64 KiB or more
        packed_sizes = struct.pack(f"<{n}I", *sizes)
    return (first, first + n - 1, struct.pack(f"<{n}d", *tss), packed_sizes, data)


class Encoded:
    """A batch of messages encoded for `append`: the rows it fills, still without their seqs (the
    writer numbers them when it stores them), as (count, ts, sizes, data) column values."""

    __slots__ = ("count", "first_ts", "nbytes", "rows")

    def __init__(self, tss: list[float], parts: list[bytes]) -> None:
        sizes = list(map(len, parts))
        ends = list(accumulate(sizes))
        self.count = len(parts)
        self.nbytes = ends[-1] if ends else 0
        self.first_ts = tss[0] if tss else None
        self.rows: list[tuple[int, bytes, bytes, bytes]] = []
        i, n = 0, len(parts)
        while i < n:
            base = ends[i - 1] if i else 0
            # As many as fit in ROW_MAX_BYTES (at least one), at most ROW_MAX_MESSAGES.
            j = max(i + 1, bisect_right(ends, base + ROW_MAX_BYTES, i, min(n, i + ROW_MAX_MESSAGES)))
            _, _, ts, sz, data = row_values(0, tss[i:j], sizes[i:j], b"".join(parts[i:j]))
            self.rows.append((j - i, ts, sz, data))
            i = j

    def values(self, first: int) -> list[RowValues]:
        """The rows' column values with the messages numbered from seq `first` on."""
        out = []
        for n, ts, sizes, data in self.rows:
            out.append((first, first + n - 1, ts, sizes, data))
            first += n
        return out


def pack_rows(first: int, tss: list[float], parts: list[bytes]) -> list[RowValues]:
    """Encoded records `parts` (timestamps `tss`) from seq `first` on, cut into rows within the caps."""
    return Encoded(tss, parts).values(first)


class Encoder:
    """Encodes batches for `append`, on the event loop: encoding is CPU work that the GIL would
    serialize with the loop anyway, and done there the writer thread holds the GIL only briefly
    between SQLite calls, so the two threads do not wait on each other's turns.

    A reused `msgpack.Packer` costs half of a call to `edgeflow.message.encode` (which finds its
    packer in a thread-local), with the same options and the same tuple, so every record is byte for
    byte `encode(msg)`. One per store; not thread-safe.
    """

    __slots__ = ("_pack",)

    def __init__(self) -> None:
        self._pack = msgpack.Packer(use_bin_type=True).pack

    def encode(self, msgs: Sequence[Message]) -> Encoded:
        """`msgs` as rows. Raises `Permanent` naming the first message msgpack cannot encode or whose
        `ts` is not a number."""
        pack = self._pack
        try:
            tss = [float(m.ts) for m in msgs]
            parts = [pack((m.id, m.source, m.topic, m.ts, m.headers, m.payload)) for m in msgs]
        except (TypeError, ValueError, OverflowError):
            for m in msgs:  # the batch failed: find the message to blame (rare, so not on the fast path)
                try:
                    float(m.ts)
                    pack((m.id, m.source, m.topic, m.ts, m.headers, m.payload))
                except (TypeError, ValueError, OverflowError) as exc:
                    raise Permanent(f"message {m.id} cannot be stored: {exc}") from exc
            raise
        return Encoded(tss, parts)


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


# (seq of the first, msgpack array of the records): what a read sends to the loop to decode.
Records = tuple[int, bytes]


def decode(chunks: list[Records]) -> list[tuple[int, Message]]:
    """(seq, message) for every record of `chunks`, in order: one msgpack call per chunk, with the
    options of `edgeflow.message.decode`, whose construction is inlined (this is the per-message cost
    of replaying a backlog). Runs on the loop (`Buffer.read`), for the reason `Encoder` does."""
    out = []
    new = Message.__new__
    for first, blob in chunks:
        seq = first
        for id_, source, topic, ts, headers, payload in msgpack.unpackb(blob, raw=False, strict_map_key=False):
            m = new(Message)
            m.payload = payload
            m.source = source
            m.topic = topic
            m.ts = ts
            m.id = new_id() if id_ is None else id_
            m.headers = headers
            m.ack = None
            out.append((seq, m))
            seq += 1
    return out


class Row:
    """One row as the writer caches it: timestamps and record offsets always, the records only once a
    read needed them. Indexes `i`, `j` are positions in the row (seq - `seq`), `j` exclusive.

    Raises `ValueError` at construction when the columns do not agree (a damaged row)."""

    __slots__ = ("data", "ends", "last", "seq", "sizes", "tss")

    def __init__(self, seq: int, last: int, ts: bytes, sizes: bytes, data: bytes | None = None) -> None:
        n = last - seq + 1
        self.seq = seq
        self.last = last
        self.tss = array("d")
        self.tss.frombytes(ts)
        self.sizes = array("H" if len(sizes) == 2 * n else _U32)
        self.sizes.frombytes(sizes)
        if _SWAP:
            self.tss.byteswap()
            self.sizes.byteswap()
        self.ends = list(accumulate(self.sizes, initial=0))
        if len(self.tss) != n or len(self.sizes) != n or (data is not None and len(data) != self.ends[-1]):
            raise ValueError(f"row {seq}..{last} is damaged (its columns disagree)")
        self.data = data

    def set_data(self, data: bytes) -> None:
        if len(data) != self.ends[-1]:
            raise ValueError(f"row {self.seq}..{self.last} is damaged (its columns disagree)")
        self.data = data

    def nbytes(self, i: int, j: int) -> int:
        """Stored bytes of the records i..j-1."""
        return self.ends[j] - self.ends[i]

    def first_fresh(self, i: int, j: int, cutoff: float) -> int | None:
        """The first position in i..j-1 whose ts is at or after `cutoff`, or None."""
        hit = next(compress(range(i, j), map(cutoff.__le__, islice(self.tss, i, j))), None)
        return hit

    def records(self, i: int, j: int) -> Records:
        """The records i..j-1 for `decode` (on the loop); needs `data`."""
        assert self.data is not None
        blob = b"".join((_array_header(j - i), memoryview(self.data)[self.ends[i] : self.ends[j]]))
        return (self.seq + i, blob)

    def piece(self, i: int, j: int) -> RowValues:
        """The column values of a new row holding only the records i..j-1 (a rewrite); needs `data`."""
        assert self.data is not None
        return row_values(self.seq + i, self.tss[i:j], self.sizes[i:j], self.data[self.ends[i] : self.ends[j]])
