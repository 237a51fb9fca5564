"""`file` source: lines of a local file (JSON lines, plain lines, CSV), read once or tailed.

At-least-once across crashes: the read position is stored in the node's store (key
`file-source:<name>`) and advanced only over lines that downstream made durable (see `file_offsets`),
so a restart, even after SIGKILL, resumes at the first line not yet durable and may re-read a few.

Each `produce` does at most one `read` of `READ_SIZE` bytes: whole lines become one batch, the partial
last line waits for the next read. Reads are plain blocking reads on the loop: a bounded read from a
local file costs tens of microseconds, far less than a thread hop per batch.

Tailing (`follow = true`) notices, at the end of the file:
- rotation (another file now at `path`): the old file is read through the descriptor we hold until
  it stayed at its end for `ROTATE_GRACE` (its writer may not have reopened yet), then the new one
  from its start;
- truncation (the file is shorter than our position): logged, then read from the start. A file
  truncated and refilled beyond our position between two looks cannot be told from one appended to.
A rotation while the runtime was down is found too: the stored file is looked for by inode among its
directory's entries (logrotate's `app.log.1`) and finished first.

Bad lines (not UTF-8, bad JSON, wrong CSV column count, longer than `max_line`) go to the
dead-letter destination with the reason, and the position moves past them like past any other line.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import IO, Any, Literal

from edgeflow import Config, Duration, Message, NotReady, Size, Source, field
from edgeflow.units import format_size

from .file_formats import CsvDecoder, make_decoder
from .file_offsets import OffsetTracker, Position

__all__ = ["FileSource"]

#: The most bytes one `produce` reads (and so the most text one batch is made of).
READ_SIZE = 64 * 1024
#: How much of an over-long line the dead-letter copy keeps.
PREVIEW = 1024
#: How long a rotated-away file must stay at its end before it counts as finished.
ROTATE_GRACE = 1.0
#: How long `on_stop` waits for the lines in flight to become durable before saving the position.
SETTLE_TIMEOUT = 2.0


class FileSourceConfig(Config):
    path: str = field(doc="the file to read")
    format: Literal["jsonl", "lines", "csv"] = field(
        "jsonl", doc='"jsonl": a JSON document per line; "lines": {"line": text}; "csv": a row per line'
    )
    delimiter: str = field(",", doc="the CSV field separator (one character)")
    header: bool = field(True, doc="CSV: the first line names the columns and rows become tables")
    follow: bool = field(True, doc="keep reading what is appended (tail); false: stop at the end of the file")
    poll_interval: Duration = field(0.25, doc="how often to look for new lines at the end of the file")
    start_at: Literal["beginning", "end"] = field(
        "beginning", doc="where to start when no position is stored for this source yet"
    )
    max_line: Size = field(2**20, doc="longer lines go to the dead-letter destination")


class FileSource(Source):
    """Reads `path` line by line; each line becomes a message with topic = path and ts = time of reading."""

    Config = FileSourceConfig
    config: FileSourceConfig
    acknowledges = True
    needs_store = True

    async def on_start(self) -> None:
        cfg = self.config
        if cfg.format == "csv" and len(cfg.delimiter) != 1:
            raise NotReady(f"delimiter must be one character, not {cfg.delimiter!r}")
        store = self.context.store
        if store is None:  # the runtime opens one for every actor with needs_store
            raise RuntimeError("the file source needs the node's store")
        self._path = cfg.path
        self._decoder = make_decoder(cfg.format, cfg.delimiter, cfg.header)
        self._fh: IO[bytes] | None = None
        self._dev = self._inode = 0
        self._pos = 0  # bytes of the current file consumed by reads
        self._tail = b""  # the partial last line read so far
        self._skipping = 0  # > 0: inside an over-long line, this many bytes of it seen so far
        self._preview = b""
        self._finish_then_switch = False  # reading a rotated-away file; `path` is next
        self._rotated_at: float | None = None  # when a new file was first seen at `path`
        self._ended = False
        self._waiting_logged = False
        key = f"file-source:{self.name}"
        stored = await store.get_state(key)
        position = Position.decode(stored) if stored is not None else None
        if position is not None and position.path != self._path:
            self.log.info("path changed from %s: position forgotten", position.path)
            position = None
        opened = self._open_initial(position)
        if not opened and not cfg.follow:
            raise NotReady(f"{self._path} does not exist")
        start = Position(self._path, self._dev, self._inode, self._pos)
        self._offsets = OffsetTracker(store, key, start if opened else position or start, self.log)
        # A fresh start (or a file replaced while we were down) makes its starting point durable at
        # once: with start_at = "end", a restart must not skip what was appended in between.
        self._offsets.start(save_now=position is None or position != start)

    # -- opening -----------------------------------------------------------------------------------

    def _open_initial(self, stored: Position | None) -> bool:
        """Open where the stored position says, or per `start_at`; False if `path` does not exist."""
        if stored is not None:
            try:
                st = os.stat(self._path)
            except FileNotFoundError:
                st = None
            if st is None or not stored.same_file(st.st_dev, st.st_ino):
                old = self._find_rotated(stored)
                if old is not None and self._open(old, stored.offset):
                    self.log.info("resuming %s (rotated from %s) at offset %d", old, self._path, stored.offset)
                    self._finish_then_switch = True
                    return True
                if st is None:
                    return False
                self.log.warning("%s was replaced since the last run: reading the new file from the start", self._path)
                return self._open(self._path, 0)
            return self._open(self._path, stored.offset)
        return self._open(self._path, None)

    def _find_rotated(self, stored: Position) -> str | None:
        """The file the stored position belongs to, if it is still in the same directory under another name."""
        directory = os.path.dirname(os.path.abspath(self._path))
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    if entry.inode() == stored.inode and entry.is_file():
                        st = entry.stat()
                        if st.st_dev == stored.dev:
                            return entry.path
        except OSError:
            pass
        return None

    def _open(self, path: str, offset: int | None) -> bool:
        """Open `path` at `offset` (None: per `start_at`); a shorter file is read from the start."""
        try:
            fh = open(path, "rb", buffering=0)  # noqa: SIM115 - held open across batches, closed in on_stop
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise NotReady(f"cannot open {path}: {exc.strerror or exc}") from exc
        st = os.fstat(fh.fileno())
        if offset is None:
            offset = st.st_size if self.config.start_at == "end" else 0
        elif st.st_size < offset:
            self.log.warning(
                "%s is shorter (%d bytes) than the stored offset %d: reading from the start", path, st.st_size, offset
            )
            offset = 0
        if offset:
            fh.seek(offset)
            if isinstance(self._decoder, CsvDecoder):
                self._decoder.read_header(self._first_line(fh))
        self._fh = fh
        self._dev, self._inode, self._pos = st.st_dev, st.st_ino, offset
        self._tail = b""
        self._skipping = 0
        return True

    def _first_line(self, fh: IO[bytes]) -> bytes:
        head = os.pread(fh.fileno(), min(self.config.max_line, READ_SIZE), 0)
        return head.split(b"\n", 1)[0]

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _switch(self, path: str) -> bool:
        """Leave the finished file for the one now at `path` (read from its start)."""
        self._close()
        self._decoder.reset()
        if not self._open(path, 0):
            return False
        self._offsets.batch(Position(self._path, self._dev, self._inode, 0), 0)
        return True

    # -- reading -----------------------------------------------------------------------------------

    async def produce(self) -> list[Message] | None:
        cfg = self.config
        while True:
            if self._ended:
                return None
            fh = self._fh
            if fh is None:  # following a file that does not exist (yet)
                if not cfg.follow:  # a resumed rotated file was finished and `path` is gone
                    return None
                if self._switch(self._path):
                    self._waiting_logged = False
                    continue
                if not self._waiting_logged:
                    self.log.warning("%s does not exist; waiting for it", self._path)
                    self._waiting_logged = True
                await asyncio.sleep(cfg.poll_interval)
                continue
            chunk = fh.read(READ_SIZE)
            if chunk:
                self._pos += len(chunk)
                if self._rotated_at is not None:
                    self._rotated_at = time.monotonic()  # the old file's writer is still at it
                return self._lines(chunk, final=False)
            # At the end of the file.
            if self._finish_then_switch:
                self._finish_then_switch = False
                batch = self._lines(b"", final=True)
                if not self._switch(self._path):
                    self._close()
                if batch:
                    return batch
                continue
            if not cfg.follow:
                self._ended = True
                return self._lines(b"", final=True)
            changed = self._check_rotation(fh)
            if changed is not None:
                return changed
            await asyncio.sleep(cfg.poll_interval)

    def _check_rotation(self, fh: IO[bytes]) -> list[Message] | None:
        """At the end of a followed file: switch on rotation, restart on truncation; the last batch of the old file."""
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return None  # renamed away and not yet recreated: keep the old one, something may still come
        if st.st_dev != self._dev or st.st_ino != self._inode:
            # Rotated. Its writer may still append to the old file until it is told to reopen (logrotate
            # creates the new file first, then signals), so the old one counts as finished only once it
            # stayed at its end for ROTATE_GRACE; the new file's lines wait, to keep the order.
            now = time.monotonic()
            if self._rotated_at is None:
                self.log.info("%s was rotated: finishing the old file, then reading the new one", self._path)
                self._rotated_at = now
            if now - self._rotated_at < ROTATE_GRACE:
                return None
            self._rotated_at = None
            batch = self._lines(b"", final=True)
            self._switch(self._path)
            return batch
        if os.fstat(fh.fileno()).st_size < self._pos:
            self.log.warning("%s was truncated: reading it from the start", self._path)
            fh.seek(0)
            self._pos = 0
            self._tail = b""
            self._skipping = 0
            self._decoder.reset()
            self._offsets.batch(Position(self._path, self._dev, self._inode, 0), 0)
        return None

    def _lines(self, chunk: bytes, final: bool) -> list[Message]:
        """Turn what was read into messages; `final`: the file is finished, a last unterminated line counts.

        Bytes after the last newline wait in `_tail`; the batch's position is the end of its last whole
        line, so a restart never starts in the middle of a line.
        """
        max_line = self.config.max_line
        rejected: list[tuple[str, str]] = []
        if self._skipping:
            cut = chunk.find(b"\n")
            if cut < 0 and not final:
                self._skipping += len(chunk)
                return []
            self._skipping += len(chunk) if cut < 0 else cut
            rejected.append(self._too_long(self._preview, self._skipping))
            self._skipping = 0
            chunk = b"" if cut < 0 else chunk[cut + 1 :]
        data = self._tail + chunk if self._tail else chunk
        block: bytes | None
        if final:
            block = data or None
            self._tail = b""
        else:
            cut = data.rfind(b"\n")
            block, tail = (None, data) if cut < 0 else (data[:cut], data[cut + 1 :])
            if len(tail) > max_line:
                self._skipping, self._preview, tail = len(tail), tail[:PREVIEW], b""
            self._tail = tail
        payloads: list[Any] = []
        if block is not None:
            if len(block) > max_line:
                block = self._drop_long_lines(block, rejected)
            payloads, bad = self._decoder.decode(block)
            rejected.extend(bad)
        elif not rejected:
            return []  # no whole line yet
        end = self._pos - len(self._tail) - self._skipping
        ack = self._offsets.batch(Position(self._path, self._dev, self._inode, end), len(payloads) + len(rejected))
        topic = self._path
        for text, reason in rejected:
            self.reject(text, reason, topic=topic, ack=ack)
        ts = time.time()
        name = self.name
        return [Message(p, name, topic, ts, None, None, ack) for p in payloads]

    def _drop_long_lines(self, block: bytes, rejected: list[tuple[str, str]]) -> bytes:
        max_line = self.config.max_line
        keep = []
        for line in block.split(b"\n"):
            if len(line) > max_line:
                rejected.append(self._too_long(line[:PREVIEW], len(line)))
            else:
                keep.append(line)
        return b"\n".join(keep)

    def _too_long(self, preview: bytes, length: int) -> tuple[str, str]:
        text = preview.decode(errors="replace") + "..."
        return text, f"line longer than max_line ({format_size(self.config.max_line)}): {length} bytes"

    # -- stopping ----------------------------------------------------------------------------------

    async def on_stop(self) -> None:
        offsets = getattr(self, "_offsets", None)
        if offsets is not None:
            await offsets.stop(SETTLE_TIMEOUT)
        if getattr(self, "_fh", None) is not None:
            self._close()

    def status(self) -> dict[str, Any]:
        offsets = getattr(self, "_offsets", None)
        if offsets is None:
            return {}
        return {
            "file": self._path,
            "offset": self._pos - len(self._tail),
            "committed_offset": offsets.committed.offset,
            "batches_in_flight": offsets.in_flight,
        }
