"""`topology.get`, `topology.validate` and `topology.apply`: the topology file, changed from afar, safely.

`apply` never leaves a node worse off than it found it:

1. The new text is written next to the topology file (a hidden staging file: write, fsync) and
   validated as a reload would; an invalid text, or one that would cut this node off (no `[control]`
   table, or no control connection), changes nothing.
2. It is applied as a reload *from the staging file*: only what changed is touched.
3. It must then settle: for `settle` seconds no added or changed actor may crash, and at the end
   each of them must be running (or finished, for a finite source; or paused), and each added or
   changed connection connected (a sink's broker that cannot be reached fails the apply, rather than
   buffering silently from then on). The first crash ends the wait at once.
4. Settled: the current file is copied to `<file>.prev` (write, fsync, rename), and the staging file
   renamed over the topology file (then the directory is fsynced). Not settled: the topology file,
   untouched all along, is reloaded again (the rollback), and the rejected text is kept as
   `<file>.failed` for inspection.

The topology file is replaced only once the new topology proved itself, so if the process dies
while settling (a restart storm past `max_restarts`, a power cut), it comes back with the previous
topology, not with the one that killed it.

Under the shipped systemd unit `/etc/edgeflow` is read-only to the service; `apply` then fails with
a message saying so, before anything changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import ConfigError, ConfigProblem

if TYPE_CHECKING:
    from ..runtime import Runtime
    from ..topology import Topology

__all__ = ["CommandError", "TopologyFiles", "inline_secrets"]

log = logging.getLogger("edgeflow.control")

HEALTHY = frozenset({"running", "finished", "paused"})
CRASHED = frozenset({"crashed", "failed"})
_POLL = 0.02  # seconds between looks at the actors while settling; a crash ends the wait sooner

# `password = "..."` and friends: a secret written into the file itself (`password_file` does not match).
_INLINE_SECRET = re.compile(
    r"""(?:^|[\s{,])(password|passwd|secret|token|api_key|apikey|private_key)\s*=\s*["']""", re.IGNORECASE
)


class CommandError(Exception):
    """A command that failed in a way its sender can act on; `details` goes into the reply as is."""

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.details = details


def inline_secrets(text: str) -> list[str]:
    """`line N: key` for every line that writes a secret into the topology itself."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        found += [f"line {number}: {m.group(1)}" for m in _INLINE_SECRET.finditer(line)]
    return found


def sha256(text: str | bytes) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


@dataclass
class _Watch:
    """Why an actor being settled is unhealthy, from its log lines (ERROR and WARNING)."""

    names: set[str]
    crashed: dict[str, str] = field(default_factory=dict)
    last: dict[str, str] = field(default_factory=dict)


class _Capture(logging.Handler):
    """Collects the watched actors' warnings and errors while a new topology settles."""

    def __init__(self, watch: _Watch) -> None:
        super().__init__(logging.WARNING)
        self.watch = watch

    def emit(self, record: logging.LogRecord) -> None:
        name = record.name.removeprefix("edgeflow.actor.")
        if name not in self.watch.names:
            return
        try:
            text = record.getMessage()
        except Exception:  # a malformed log call must not break the settling
            text = str(record.msg)
        self.watch.last[name] = text
        if record.levelno >= logging.ERROR and str(record.msg).startswith("crashed"):
            self.watch.crashed.setdefault(name, text)


class TopologyFiles:
    """The runtime's topology file as the control plane reads, checks and replaces it."""

    def __init__(
        self, runtime: Runtime, control_connection: str, after_reload: Callable[[], Any] | None = None
    ) -> None:
        self.runtime = runtime
        self.control_connection = control_connection
        self._after_reload = after_reload or (lambda: None)  # the plane follows a replaced connection
        self._applying = asyncio.Lock()

    @property
    def path(self) -> Path:
        return Path(self.runtime.topology.file)

    # -- get -------------------------------------------------------------------------------------

    def get(self) -> dict[str, Any]:
        """The running topology's text; refused if it writes a secret inline (it would go over MQTT)."""
        text = self.runtime.topology.text
        found = inline_secrets(text)
        if found:
            raise CommandError(
                "the topology writes secrets inline (" + ", ".join(found) + "); edgeflow does not send "
                "secrets over the control topic: move them to password_file or password_env"
            )
        try:
            on_disk: str | None = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            on_disk = None
        return {"file": str(self.path), "text": text, "sha256": sha256(text), "file_differs": on_disk != text}

    # -- validate --------------------------------------------------------------------------------

    async def validate(self, text: str) -> dict[str, Any]:
        """`{"valid", "problems", "warnings"}` for `text`, checked as a reload would; changes nothing."""
        staged = await asyncio.to_thread(self._stage, text, False)
        try:
            topo, problems = await self._load(staged)
        finally:
            _unlink(staged)
        warnings = self._warnings(topo) if topo is not None else []
        return {"valid": not problems, "problems": problems, "warnings": warnings}

    # -- apply -----------------------------------------------------------------------------------

    async def apply(
        self, text: str, settle: float, expect_sha256: str | None = None, force: bool = False
    ) -> dict[str, Any]:
        """Validate, reload from a staging file, settle, then commit or roll back (see the module doc).

        Raises `CommandError` for everything the sender should hear about as a failure, including a
        rollback (with its details); returns what was applied.
        """
        if self._applying.locked():
            raise CommandError("another topology.apply is in progress")
        async with self._applying:
            return await self._apply(text, settle, expect_sha256, force)

    async def _apply(self, text: str, settle: float, expect_sha256: str | None, force: bool) -> dict[str, Any]:
        runtime = self.runtime
        path = self.path
        try:
            current = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
        if expect_sha256 is not None and sha256(current) != expect_sha256:
            raise CommandError(f"{path} changed since it was read (sha256 differs); get it again")
        if current.decode("utf-8", "replace") != runtime.topology.text and not force:
            raise CommandError(
                f"{path} on disk differs from the running topology (edited but not reloaded?); "
                "reload it first, or pass force=true to replace it anyway"
            )
        try:
            staged = await asyncio.to_thread(self._stage, text, True)
        except OSError as exc:
            raise CommandError(_write_hint(path, exc)) from None
        committed = False
        try:
            topo, problems = await self._load(staged)
            if problems:
                n = len(problems)
                raise CommandError(f"invalid topology: {n} problem{'s' if n != 1 else ''}", {"problems": problems})
            assert topo is not None
            cut_off = self._cut_off(topo)
            if cut_off:
                raise CommandError(cut_off)
            warnings = self._warnings(topo)
            before = dict(runtime.connections)
            try:
                result = await runtime.reload(str(staged))
            except Exception as exc:  # a bug below us; whatever got applied, go back to the file
                log.error("topology.apply: the reload raised %s: %s", type(exc).__name__, exc, exc_info=exc)
                await self._roll_back(path, staged, f"the reload failed: {type(exc).__name__}: {exc}", {})
            self._after_reload()
            if not result.get("ok"):
                # Nothing was applied (the file changed under us, or the runtime is stopping).
                raise CommandError(
                    "the reload refused it: " + str(result.get("error") or "; ".join(result.get("problems", []))),
                    {"reload": result},
                )
            watched = [*result["added"], *result["changed"]]
            new_conns = [n for n, c in runtime.connections.items() if before.get(n) is not c]
            reason = await self._settle(watched, settle, new_conns)
            if reason is not None:
                await self._roll_back(path, staged, reason, result)
            try:
                await asyncio.to_thread(self._commit, path, staged, current)
            except OSError as exc:  # a full or read-only disk: the file must match what runs
                await self._roll_back(path, staged, f"cannot replace {path}: {exc.strerror or exc}", result)
            committed = True
            runtime.topology.file = str(path)  # the staging file is now the topology file
            log.info("topology.apply: %s replaced (previous kept as %s.prev)", path, path.name)
            return {
                "applied": True,
                "file": str(path),
                "sha256": sha256(text),
                "added": result["added"],
                "changed": result["changed"],
                "removed": result["removed"],
                "connections": new_conns,  # started again with new settings (or added)
                "settled_s": settle,
                "warnings": warnings,
            }
        finally:
            if not committed:
                _unlink(staged)

    async def _roll_back(self, path: Path, staged: Path, reason: str, applied: dict[str, Any]) -> NoReturn:
        """Reload the untouched topology file, keep the rejected text as `.failed`; raises `CommandError`."""
        log.error("topology.apply: the new topology did not settle (%s); rolling back", reason)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(os.replace, staged, path.with_name(path.name + ".failed"))
        rollback = await self.runtime.reload(str(path))
        self._after_reload()
        after = {n: c.state for n, c in self.runtime.cells.items()}
        if not rollback.get("ok"):
            log.critical("topology.apply: the rollback failed too: %s", rollback)
        raise CommandError(
            f"rolled back: {reason}",
            {
                "rolled_back": bool(rollback.get("ok")),
                "reason": reason,
                "applied": applied,
                "rollback": rollback,
                "actors": after,
                "failed_file": str(path.with_name(path.name + ".failed")),
            },
        )

    async def _settle(self, names: list[str], settle: float, connections: list[str]) -> str | None:
        """None once every added or changed actor stayed healthy for `settle` seconds, else why not.

        `connections` (added or changed by the reload) must be connected by then, where the connection
        type has a notion of it.
        """
        runtime = self.runtime
        if not names and not connections:
            return None  # only removals: nothing new that could fail to start
        watch = _Watch(set(names))
        capture = _Capture(watch)
        actor_log = logging.getLogger("edgeflow.actor")
        actor_log.addHandler(capture)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settle
        try:
            while True:
                if watch.crashed:
                    name, text = next(iter(watch.crashed.items()))
                    return f"actor {name!r} {text}"
                for name in names:
                    cell = runtime.cells.get(name)
                    if cell is not None and cell.state in CRASHED:
                        return f"actor {name!r} {cell.state}" + _why(watch, name)
                if runtime.state == "stopping":
                    return "the runtime is stopping"
                if loop.time() >= deadline:
                    break
                await asyncio.sleep(_POLL)
        finally:
            actor_log.removeHandler(capture)
        for name in names:
            cell = runtime.cells.get(name)
            if cell is None:
                return f"actor {name!r} is gone"
            if cell.state not in HEALTHY:
                return f"actor {name!r} is {cell.state}, not running, after {settle:g}s" + _why(watch, name)
        for name in connections:
            conn = runtime.connections.get(name)
            client = getattr(conn, "conn", conn)
            if getattr(client, "connected", True) is False:
                error = (getattr(client, "metrics", None) or {}).get("last_error")
                why = f" ({error})" if error else ""
                return f"connection {name!r} is not connected after {settle:g}s{why}"
        return None

    # -- helpers ---------------------------------------------------------------------------------

    async def _load(self, staged: Path) -> tuple[Topology | None, list[dict[str, Any]]]:
        from ..topology import load_topology

        try:
            topo = await asyncio.to_thread(load_topology, staged, self.runtime.registry)
        except ConfigError as exc:
            return None, [self._problem(p) for p in exc.problems]
        return topo, []

    def _problem(self, p: ConfigProblem) -> dict[str, Any]:
        where = f":{p.line}" if p.line is not None else ""
        key = f" {p.path}:" if p.path else ""
        text = f"{self.path.name}{where}:{key} {p.message}"
        return {"line": p.line, "key": p.path, "message": p.message, "text": text}

    def _cut_off(self, topo: Topology) -> str | None:
        """Why applying `topo` would leave this node unreachable over the control plane, or None."""
        if topo.control is None:
            return "the new topology has no [control] table: this node could no longer be steered; refused"
        if self.control_connection not in topo.connections:
            return (
                f"the new topology drops the connection {self.control_connection!r} that carries the control "
                "plane; refused"
            )
        return None

    def _warnings(self, topo: Topology) -> list[str]:
        old = self.runtime.topology
        out = []
        if topo.control is None:
            out.append("no [control] table: this node could no longer be steered (topology.apply refuses this)")
        elif old.control is not None:
            if (topo.control.prefix, topo.control.connection) != (old.control.prefix, old.control.connection):
                out.append("control.prefix and control.connection apply at the next start")
            if topo.control.hmac_key_file != old.control.hmac_key_file:
                out.append("the control key changes: the next commands must be signed with the new key")
        if (topo.node.id, topo.node.data_dir, topo.node.synchronous) != (
            old.node.id,
            old.node.data_dir,
            old.node.synchronous,
        ):
            out.append("node.id, node.data_dir and node.synchronous apply at the next start")
        found = inline_secrets(topo.text)
        if found:
            out.append("secrets written inline (" + ", ".join(found) + "): topology.get will refuse to send it")
        return out

    def _stage(self, text: str, same_dir: bool) -> Path:
        """Write `text` to a new hidden file beside the topology (or in /tmp for a mere validation)."""
        data = text.encode("utf-8")
        directories = [self.path.parent] if same_dir else [self.path.parent, Path(_tmpdir())]
        error: OSError | None = None
        for directory in directories:
            staged = directory / f".{self.path.name}.{secrets.token_hex(4)}.staged"
            try:
                _write_new(staged, data, _mode_of(self.path))
                return staged
            except OSError as exc:
                error = exc
        assert error is not None
        raise error

    def _commit(self, path: Path, staged: Path, previous: bytes) -> None:
        """Keep `previous` as `<file>.prev`, then move the staged file over `path`; fsync the directory."""
        prev = path.with_name(path.name + ".prev")
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.prev")
        try:
            _write_new(tmp, previous, _mode_of(path))
            os.replace(tmp, prev)
        finally:
            _unlink(tmp)
        os.replace(staged, path)
        _fsync_dir(path.parent)


def _why(watch: _Watch, name: str) -> str:
    last = watch.last.get(name)
    return f" ({last})" if last else ""


def _mode_of(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o644


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` (it must not exist) holding `data`, durably (fsync)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink(path)
        raise
    os.close(fd)
    os.chmod(path, mode)  # the umask may have narrowed it


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def _tmpdir() -> str:
    import tempfile

    return tempfile.gettempdir()


def _write_hint(path: Path, exc: OSError) -> str:
    text = f"cannot write beside {path}: {exc.strerror or exc}"
    if exc.errno in (errno.EPERM, errno.EACCES, errno.EROFS):
        text += (
            f" (the service must be able to write {path.parent}; under the shipped systemd unit add a "
            f"drop-in with ReadWritePaths={path.parent} and make the directory writable by the service's group)"
        )
    return text
