"""`edgeflow status`: a running runtime answers on a unix socket in its data directory.

The protocol is one line of JSON per connection: the client connects, the runtime writes its status
document and closes. A unix socket (mode 0660) keeps it local to the device and to the service's
user and group, with no port to open or secure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any, Protocol

__all__ = ["query_status", "serve_status", "socket_path"]


class _HasStatus(Protocol):
    def status(self) -> dict[str, Any]: ...


def socket_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / "edgeflow.sock"


async def serve_status(runtime: _HasStatus, path: Path) -> asyncio.Server | None:
    """Serve status documents on `path`; None (with a log line) when the socket cannot be made."""
    import logging

    if len(os.fsencode(path)) > 100:  # sun_path is 108 bytes; leave room rather than fail oddly
        logging.getLogger("edgeflow.runtime").warning("status socket path too long, status disabled: %s", path)
        return None
    with contextlib.suppress(FileNotFoundError):
        path.unlink()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(json.dumps(runtime.status(), default=str).encode() + b"\n")
            await writer.drain()
        finally:
            writer.close()

    try:
        server = await asyncio.start_unix_server(answer, path=str(path))
    except OSError as exc:
        logging.getLogger("edgeflow.runtime").warning("cannot serve status on %s: %s", path, exc)
        return None
    with contextlib.suppress(OSError):
        os.chmod(path, 0o660)
    return server


def query_status(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """Ask a running runtime for its status (blocking; for the CLI). Raises OSError when none runs."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    doc: dict[str, Any] = json.loads(b"".join(chunks))
    return doc
