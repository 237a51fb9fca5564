"""The runtime: builds the cells from a topology, runs them, reloads them, and stops them in order.

Start: the store is opened (when something persists), connections start, then the cells start in
the order sinks, operators, sources, so that every actor's readers exist before it emits.

Stop (SIGTERM, SIGINT, or every source finished): sources stop producing and close their outputs;
end-of-stream then flows down the graph, each actor draining its mailbox before closing its own
outputs; sinks deliver or commit what they hold. `node.stop_timeout` bounds all of it; whatever is
still in memory then is reported, never dropped silently.

Reload (SIGHUP): the file is checked first; an invalid file changes nothing. Otherwise only what
changed is touched: unchanged actors keep running with their mailboxes and counters, changed ones
restart in place (same cell, same mailbox, same buffer), removed ones drain and go, new ones start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path
from typing import Any

from . import __version__
from .actor import Context
from .cell import Cell, Router
from .errors import ConfigError, RestartIntensityExceeded
from .mailbox import Mailbox
from .registry import Registry
from .sdnotify import Notifier, watchdog_loop
from .supervisor import Supervisor
from .topology import ActorSpec, Topology, load_topology

__all__ = ["Runtime"]

log = logging.getLogger("edgeflow.runtime")


class Runtime:
    def __init__(self, topology: Topology, *, registry: Registry | None = None) -> None:
        self.topology = topology
        self.registry = registry
        self.node_id = topology.node.id
        self.data_dir = Path(topology.node.data_dir)
        self.supervisor = Supervisor(topology.supervisor)
        self.cells: dict[str, Cell] = {}
        self.retiring: set[Cell] = set()  # removed by a reload, still draining
        self.boxes: dict[str, Mailbox] = {}
        self.connections: dict[str, Any] = {}
        self.store: Any = None
        self.notifier = Notifier()
        self.started_at = time.time()
        self.state = "starting"
        self.reloads = 0
        self.last_reload: dict[str, Any] | None = None
        self.context: Context | None = None
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._exit_code = 0
        self._tasks: dict[asyncio.Task[None], Cell] = {}
        self._tasks_changed = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._helpers: set[asyncio.Task[Any]] = set()

    # -- building --------------------------------------------------------------------------------

    def _new_cell(self, spec: ActorSpec) -> Cell:
        assert self.context is not None
        if spec.kind != "source" and spec.name not in self.boxes:
            self.boxes[spec.name] = Mailbox(spec.name, spec.mailbox, spec.overflow)
        cell = Cell(spec, self.context, self.supervisor, self.boxes.get(spec.name), Router([]), None)
        cell.stop_timeout = self.topology.node.stop_timeout
        return cell

    def _wire(self, topo: Topology) -> None:
        """Point every live cell's outputs (and dead letters) at the mailboxes the topology names."""
        dropped: list[Mailbox] = []
        for name, cell in self.cells.items():
            dropped += cell.router.retarget([self.boxes[c] for c in topo.consumers(name)])
            dl_name = topo.actors[name].dead_letter
            new_dl = self.boxes[dl_name] if dl_name else None
            if new_dl is not cell.dead_letter_box:
                if new_dl is not None:
                    new_dl.add_writer()
                if cell.dead_letter_box is not None:
                    dropped.append(cell.dead_letter_box)
                cell.dead_letter_box = new_dl
        for mb in dropped:  # only now: every mailbox has gained its new writers first
            mb.close_writer()

    async def _open_store(self, topo: Topology) -> None:
        needs = [a for a in topo.actors.values() if a.persist or a.cls.needs_store or getattr(a.cls, "stateful", False)]
        if not needs or self.store is not None:
            return
        from .store import Store

        self.store = await Store.open(self.data_dir / "edgeflow.db", synchronous=topo.node.synchronous)
        if self.context is not None:
            self.context.store = self.store

    def _attach_buffer(self, cell: Cell) -> None:
        spec = cell.spec
        if not spec.persist:
            cell.buffer = None
            return
        from .sinkbuffer import SinkBuffer

        assert spec.buffer is not None
        assert self.store is not None
        if cell.buffer is None:
            cell.buffer = SinkBuffer(self.store.buffer(spec.name), spec.buffer)
        else:
            cell.buffer.config = spec.buffer

    async def _start_connections(self, topo: Topology, names: list[str]) -> None:
        for name in names:
            spec = topo.connections[name]
            conn = spec.cls(name, spec.config, self.node_id)
            self.connections[name] = conn
            control = self.topology.control
            if control is not None and name == control.connection:  # presence: a will before it connects
                from .control import set_presence

                set_presence(conn, control, self.node_id, self.started_at)
            await conn.start()

    # -- running ---------------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until every source finished or a stop was asked; the exit code for the process."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.context = Context(node_id=self.node_id, data_dir=self.data_dir, connections=self.connections)
        loop = asyncio.get_running_loop()
        handlers = {
            signal.SIGTERM: lambda: self.request_stop("SIGTERM"),
            signal.SIGINT: lambda: self.request_stop("SIGINT"),
            signal.SIGHUP: lambda: self._spawn(self.reload(), "reload"),
        }
        for sig, handler in handlers.items():
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, handler)
        status_server = None
        try:
            await self._open_store(self.topology)
            await self._start_connections(self.topology, list(self.topology.connections))
            from .status import serve_status

            status_server = await serve_status(self, self.data_dir / "edgeflow.sock")
            for name in self.topology.start_order():
                self.cells[name] = self._new_cell(self.topology.actors[name])
                self._attach_buffer(self.cells[name])
            self._wire(self.topology)
            self.supervisor.attach(list(self.cells.values()))
            log.info(
                "edgeflow %s node %r: starting %d actors from %s",
                __version__,
                self.node_id,
                len(self.cells),
                self.topology.file,
            )
            if self.topology.control is not None:  # the MQTT control plane, up once the actors started
                from .control import ControlPlane

                control = self.topology.control
                plane = ControlPlane(self, control, self.connections[control.connection])
                self._spawn(plane.run(), "control")  # helpers are cancelled first at shutdown
            await self._run_cells()
        finally:
            for sig in handlers:
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            for t in list(self._helpers):
                t.cancel()
            await asyncio.gather(*self._helpers, return_exceptions=True)
            if status_server is not None:
                status_server.close()
                with contextlib.suppress(Exception):
                    await status_server.wait_closed()
                with contextlib.suppress(OSError):
                    (self.data_dir / "edgeflow.sock").unlink()
            for conn in reversed(list(self.connections.values())):
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await conn.stop()
            if self.store is not None:
                await self.store.close()
            self.notifier.close()
        self.state = "stopped"
        return self._exit_code

    def _spawn(self, coro: Any, what: str) -> asyncio.Task[Any]:
        """A helper task owned by the runtime: kept, named, cancelled at exit."""
        task = asyncio.create_task(coro, name=f"edgeflow.{what}")
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)
        return task

    def _start_cell(self, cell: Cell) -> None:
        task = asyncio.create_task(cell.run(), name=f"edgeflow[{cell.name}]")
        self._tasks[task] = cell
        self._tasks_changed.set()

    async def _run_cells(self) -> None:
        for cell in self.cells.values():
            self._start_cell(cell)
        self._spawn(self._stop_deadline(), "stop-deadline")
        self._spawn(
            watchdog_loop(self.notifier, lambda: self.state in ("running", "reloading", "stopping")), "watchdog"
        )
        self._spawn(self._announce_ready(), "ready")
        self.state = "running"
        try:
            while self._tasks:
                self._tasks_changed.clear()
                changed = asyncio.create_task(self._tasks_changed.wait(), name="edgeflow.tasks-changed")
                done, _ = await asyncio.wait([*self._tasks, changed], return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                for task in done:
                    if task is changed:
                        continue
                    cell = self._tasks.pop(task)  # type: ignore[arg-type]
                    if cell in self.retiring:
                        self.retiring.discard(cell)
                        log.info("actor %r removed (drained)", cell.name)
                    if task.cancelled():
                        continue
                    exc = task.exception()
                    if isinstance(exc, RestartIntensityExceeded):
                        log.critical("%s", exc)
                        self._exit_code = 1
                        return
                    if exc is not None:  # a bug in the runtime itself: say so and exit non-zero
                        log.critical("runtime failure in %s: %s: %s", cell.name, type(exc).__name__, exc, exc_info=exc)
                        self._exit_code = 1
                        return
        finally:
            for t in self._tasks:
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()
        log.info("all actors finished; exiting")

    async def _announce_ready(self) -> None:
        """READY=1 once every actor made its first start attempt (a broker being down is not a failure)."""
        await asyncio.gather(*(c.attempted.wait() for c in list(self.cells.values())))
        self.notifier.ready(self._summary())
        log.info("ready: %s", self._summary())
        while True:
            await asyncio.sleep(10)
            self.notifier.status(self._summary())

    def _summary(self) -> str:
        cells = list(self.cells.values())
        running = sum(1 for c in cells if c.state == "running")
        delivered = sum(c.metrics.out for c in cells if c.spec.kind == "sink")
        buffered = sum(c.buffer.buffer.stats().count for c in cells if c.buffer is not None)
        return f"{running}/{len(cells)} actors running, {delivered} delivered, {buffered} buffered"

    async def _stop_deadline(self) -> None:
        await self._stop_event.wait()
        timeout = self.topology.node.stop_timeout
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self._tasks:
                    await asyncio.wait(list(self._tasks))
                return
        left = {c.name: len(c.mailbox) for c in self._tasks.values() if c.mailbox is not None and len(c.mailbox)}
        log.error(
            "stop did not finish within %.3gs; giving up on %d actors; messages still in memory: %s",
            timeout,
            len(self._tasks),
            left or "none",
        )
        for t in list(self._tasks):
            t.cancel()

    def request_stop(self, why: str = "stop") -> None:
        """Stop the sources; the rest of the graph drains behind them. Safe to call more than once."""
        if self._stopping:
            log.info("%s: already stopping", why)
            return
        self._stopping = True
        self.state = "stopping"
        self.notifier.stopping()
        log.info("%s: stopping sources and draining", why)
        for cell in self.cells.values():
            if cell.spec.kind == "source":
                cell.request_stop()
        self._stop_event.set()

    # -- commands from the control plane ---------------------------------------------------------

    def actor_command(self, name: str, verb: str) -> str:
        """`stop`, `start` or `restart` one actor; returns what happened, raises ValueError if it can't.

        Only sources can be stopped and started: stopping one keeps its place in the graph (its
        readers keep running and wait for it), and starting it again makes a fresh instance that
        resumes from its stored position (a file offset, a persistent MQTT session). Any actor can
        be restarted.
        """
        cell = self.cells.get(name)
        if cell is None:
            raise ValueError(f"no actor {name!r}")
        if verb == "restart":
            if cell.paused:
                raise ValueError(f"actor {name!r} is stopped; start it instead")
            cell.request_restart()
            return f"restarting {name}"
        if verb in ("stop", "start") and cell.spec.kind != "source":
            article = "an" if cell.spec.kind == "operator" else "a"
            raise ValueError(f"only sources can be stopped and started; {name!r} is {article} {cell.spec.kind}")
        if verb == "stop":
            cell.pause()
            return f"stopped {name}"
        if verb == "start":
            cell.resume()
            return f"started {name}"
        raise ValueError(f"unknown actor command {verb!r}")

    # -- reload ----------------------------------------------------------------------------------

    async def reload(self, path: str | None = None) -> dict[str, Any]:
        """Load the topology file again and apply only what changed; returns what was done.

        An invalid file changes nothing: the problems are logged (and returned) and the running
        topology stays as it is.
        """
        async with self._reload_lock:
            if self._stopping:
                return {"ok": False, "error": "stopping"}
            self.notifier.reloading()
            previous_state, self.state = self.state, "reloading"
            try:
                result = await self._reload(path or self.topology.file)
            finally:
                self.state = previous_state if previous_state != "reloading" else "running"
                self.notifier.ready(self._summary())
            self.reloads += 1
            self.last_reload = {"at": time.time(), **result}
            return result

    async def _reload(self, path: str) -> dict[str, Any]:
        try:
            new = await asyncio.to_thread(load_topology, path, self.registry)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            n = len(exc.problems)
            log.error("reload refused: %d problem%s; the running topology stays", n, "" if n == 1 else "s")
            return {"ok": False, "problems": [str(p) for p in exc.problems]}
        old = self.topology
        if (new.node.data_dir, new.node.synchronous, new.node.id) != (
            old.node.data_dir,
            old.node.synchronous,
            old.node.id,
        ):
            log.warning("node.id, node.data_dir and node.synchronous apply at the next start, not on reload")
        changed_conns = [
            n for n in new.connections if n not in old.connections or old.connections[n].raw != new.connections[n].raw
        ]
        removed_conns = [n for n in old.connections if n not in new.connections]
        added, changed, removed = [], [], []
        for name, spec in new.actors.items():
            before = old.actors.get(name)
            if before is None or before.kind != spec.kind:
                if before is not None:
                    removed.append(name)
                added.append(name)
            elif before.raw != spec.raw or spec.raw.get("connection") in changed_conns:
                changed.append(name)
        removed += [n for n in old.actors if n not in new.actors]
        if not (added or changed or removed or changed_conns or removed_conns):
            self.topology = new
            self.supervisor.config = new.supervisor
            log.info("reload: nothing changed")
            return {"ok": True, "added": [], "changed": [], "removed": []}

        await self._open_store(new)
        for name in changed_conns:
            old_conn = self.connections.pop(name, None)
            if old_conn is not None:
                await old_conn.stop()
            await self._start_connections(new, [name])
        for name in removed:
            cell = self.cells.pop(name, None)
            if cell is not None:
                cell.removed = True
                self.retiring.add(cell)
                self.boxes.pop(name, None)  # the cell keeps its mailbox to drain it
        for name in changed:
            cell = self.cells[name]
            cell.spec = new.actors[name]
            if cell.mailbox is not None:
                cell.mailbox.capacity = cell.spec.mailbox
                cell.mailbox.overflow = cell.spec.overflow
            self._attach_buffer(cell)
            cell.stop_timeout = new.node.stop_timeout
        new_cells = []
        for name in new.start_order():
            if name in added:
                cell = self._new_cell(new.actors[name])
                self._attach_buffer(cell)
                self.cells[name] = cell
                new_cells.append(cell)
        self.topology = new
        self.supervisor.config = new.supervisor
        self._wire(new)
        for cell in self.retiring:
            if cell.spec.kind == "source":
                cell.request_stop()
        for name in changed:
            self.cells[name].request_restart()
        for cell in new_cells:
            self._start_cell(cell)
        self.supervisor.attach(list(self.cells.values()))
        for name in removed_conns:
            conn = self.connections.pop(name, None)
            if conn is not None:
                await conn.stop()
        log.info(
            "reload applied: added %s, changed %s, removed %s", added or "none", changed or "none", removed or "none"
        )
        return {"ok": True, "added": added, "changed": changed, "removed": removed}

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "node": self.node_id,
            "version": __version__,
            "state": self.state,
            "uptime_s": round(time.time() - self.started_at, 1),
            "topology": self.topology.file,
            "reloads": self.reloads,
            "actors": {name: cell.status() for name, cell in self.cells.items()},
        }
        for cell in self.retiring:
            doc["actors"][f"{cell.name} (draining)"] = cell.status()
        if self.last_reload is not None:
            doc["last_reload"] = self.last_reload
        if self.connections:
            doc["connections"] = {
                name: conn.status() if hasattr(conn, "status") else {} for name, conn in self.connections.items()
            }
        return doc
