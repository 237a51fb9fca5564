"""`file` sink: JSON lines appended to a local file, rotated by size.

Each batch is written with one `write` call of whole lines and flushed before the batch counts as
delivered, so a stop or a crash never leaves half a line behind a delivered message (a crash can at
worst leave one partial batch after the last delivered one, which a replay writes again in full).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import IO, Literal

from edgeflow import Config, Message, Sink, Size, field
from edgeflow.jsoncodec import make_dumps

__all__ = ["FileSink"]


class FileSinkConfig(Config):
    path: str = field(doc="the file to append to (its directory is created)")
    format: Literal["jsonl"] = field("jsonl", doc="one JSON document per line")
    include_meta: bool = field(False, doc="write {id, source, topic, ts, payload} instead of the payload alone")
    max_bytes: Size = field(64 * 2**20, doc="rotate when the file would grow past this (0 = never)")
    max_files: int = field(5, ge=0, doc="rotated files to keep (path.1 is the newest)")
    fsync: bool = field(False, doc="fsync after every batch (survives a power cut; slower on SD cards)")


class FileSink(Sink):
    """Appends messages as JSON lines to `path`, rotating to path.1, path.2, ... by size."""

    Config = FileSinkConfig
    config: FileSinkConfig
    max_batch = 2048

    async def on_start(self) -> None:
        self._path = Path(self.config.path)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[bytes] | None = None
        self._size = 0
        self._dumps = make_dumps(default=repr, newline=True)

    def _open(self) -> IO[bytes]:
        if self._fh is None:
            self._fh = open(self._path, "ab")  # noqa: SIM115 - held open across batches, closed in on_stop
            self._size = self._fh.seek(0, os.SEEK_END)
        return self._fh

    def _rotate(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        keep = self.config.max_files
        if keep == 0:
            self._path.unlink(missing_ok=True)
            return
        for i in range(keep - 1, 0, -1):
            older = self._path.with_name(f"{self._path.name}.{i}")
            if older.exists():
                os.replace(older, self._path.with_name(f"{self._path.name}.{i + 1}"))
        os.replace(self._path, self._path.with_name(f"{self._path.name}.1"))

    def _encode(self, batch: list[Message]) -> list[bytes]:
        dumps = self._dumps
        if self.config.include_meta:
            return [
                dumps({"id": m.id, "source": m.source, "topic": m.topic, "ts": m.ts, "payload": m.payload})
                for m in batch
            ]
        return [dumps(m.payload) for m in batch]

    def _append(self, lines: list[bytes]) -> None:
        """Write whole lines, rotating between lines so that no file grows past `max_bytes`."""
        limit = self.config.max_bytes
        chunk: list[bytes] = []
        size = self._size
        for line in lines:
            if limit and size and size + len(line) > limit:
                if chunk:
                    self._write(b"".join(chunk))
                    chunk = []
                self._rotate()
                size = 0
            chunk.append(line)
            size += len(line)
        if chunk:
            self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        fh = self._open()
        start = self._size
        try:
            fh.write(data)
            fh.flush()
            if self.config.fsync:
                os.fsync(fh.fileno())
        except OSError:
            # A full disk may have taken part of the batch: cut it off, so the retry writes whole lines.
            self._fh = None
            fh.close()
            with open(self._path, "r+b") as again:
                again.truncate(start)
            raise
        self._size += len(data)

    async def write(self, batch: list[Message]) -> None:
        lines = self._encode(batch)
        # The write runs in a thread: a slow SD card must not stall every other actor's loop.
        await asyncio.to_thread(self._append, lines)

    async def on_stop(self) -> None:
        fh = getattr(self, "_fh", None)  # None also when on_start failed before opening anything
        if fh is not None:
            fh.close()
            self._fh = None
