"""The runtime: builds the cells from a topology, runs them, and stops them in order.

Start: the store is opened (when something persists), connections start, then the cells start in
the order sinks, operators, sources, so that every actor's readers exist before it emits.

Stop (SIGTERM, SIGINT, or every source finished): sources stop producing and close their outputs;
end-of-stream then flows down the graph, each actor draining its mailbox before closing its own
outputs; sinks deliver or commit what they hold. `node.stop_timeout` bounds all of it; whatever is
still in memory then is reported, never dropped silently.
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
from .errors import RestartIntensityExceeded
from .mailbox import Mailbox
from .supervisor import Supervisor
from .topology import Topology

__all__ = ["Runtime"]

log = logging.getLogger("edgeflow.runtime")


class Runtime:
    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.node_id = topology.node.id
        self.data_dir = Path(topology.node.data_dir)
        self.supervisor = Supervisor(topology.supervisor)
        self.cells: dict[str, Cell] = {}
        self.connections: dict[str, Any] = {}
        self.store: Any = None
        self.started_at = time.time()
        self.state = "starting"
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._exit_code = 0

    # -- building --------------------------------------------------------------------------------

    def _build(self, context: Context) -> None:
        topo = self.topology
        boxes: dict[str, Mailbox] = {}
        for a in topo.actors.values():
            if a.kind != "source":
                boxes[a.name] = Mailbox(a.name, a.mailbox, a.overflow)
        for a in topo.actors.values():
            for _ in a.inputs:
                boxes[a.name].add_writer()
            if a.dead_letter:
                boxes[a.dead_letter].add_writer()
        for name in topo.start_order():
            a = topo.actors[name]
            router = Router([boxes[c] for c in topo.consumers(name)])
            dl = boxes[a.dead_letter] if a.dead_letter else None
            cell = Cell(a, context, self.supervisor, boxes.get(name), router, dl)
            cell.stop_timeout = topo.node.stop_timeout
            self.cells[name] = cell
        self.supervisor.attach(list(self.cells.values()))

    async def _open_store(self) -> None:
        persisting = [a for a in self.topology.actors.values() if a.persist]
        stateful = [a for a in self.topology.actors.values() if a.cls.needs_store]
        if not persisting and not stateful:
            return
        from .sinkbuffer import SinkBuffer
        from .store import Store

        self.store = await Store.open(
            self.data_dir / "edgeflow.db", synchronous=self.topology.node.synchronous
        )
        for a in persisting:
            assert a.buffer is not None
            self.cells[a.name].buffer = SinkBuffer(self.store.buffer(a.name), a.buffer)

    async def _start_connections(self) -> None:
        for name, spec in self.topology.connections.items():
            conn = spec.cls(name, spec.config, self.node_id)
            self.connections[name] = conn
            await conn.start()

    # -- running ---------------------------------------------------------------------------------

    async def run(self) -> int:
        """Run until every source finished or a stop was asked; the exit code for the process."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        context = Context(node_id=self.node_id, data_dir=self.data_dir, connections=self.connections)
        self._build(context)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.request_stop, sig.name)
        status_server = None
        try:
            await self._open_store()
            context.store = self.store
            await self._start_connections()
            from .status import serve_status

            status_server = await serve_status(self, self.data_dir / "edgeflow.sock")
            log.info(
                "edgeflow %s node %r: starting %d actors from %s",
                __version__,
                self.node_id,
                len(self.cells),
                self.topology.file,
            )
            await self._run_cells()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
            if status_server is not None:
                status_server.close()
                with contextlib.suppress(Exception):
                    await status_server.wait_closed()
            for conn in reversed(list(self.connections.values())):
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5):
                        await conn.stop()
            if self.store is not None:
                await self.store.close()
        self.state = "stopped"
        return self._exit_code

    async def _run_cells(self) -> None:
        tasks = [asyncio.create_task(c.run(), name=f"edgeflow[{c.name}]") for c in self.cells.values()]
        watcher = asyncio.create_task(self._stop_deadline(tasks), name="edgeflow.stop-deadline")
        self.state = "running"
        try:
            for coro in asyncio.as_completed(tasks):
                try:
                    await coro
                except RestartIntensityExceeded as exc:
                    log.critical("%s", exc)
                    self._exit_code = 1
                    break
                except asyncio.CancelledError:
                    if self._exit_code == 0 and not self._stopping:
                        raise
                except Exception as exc:  # a bug in the runtime itself: say so and exit non-zero
                    log.critical("runtime failure: %s: %s", type(exc).__name__, exc, exc_info=exc)
                    self._exit_code = 1
                    break
        finally:
            watcher.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, watcher, return_exceptions=True)
        if self._exit_code == 0:
            log.info("all actors finished; exiting")

    async def _stop_deadline(self, tasks: list[asyncio.Task[None]]) -> None:
        await self._stop_event.wait()
        timeout = self.topology.node.stop_timeout
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        if pending:
            left = {
                c.name: len(c.mailbox)
                for c in self.cells.values()
                if c.mailbox is not None and len(c.mailbox)
            }
            log.error(
                "stop did not finish within %.3gs; giving up on %d actors; messages still in memory: %s",
                timeout,
                len(pending),
                left or "none",
            )
            for t in pending:
                t.cancel()

    def request_stop(self, why: str = "stop") -> None:
        """Stop the sources; the rest of the graph drains behind them. Safe to call more than once."""
        if self._stopping:
            log.info("%s: already stopping", why)
            return
        self._stopping = True
        self.state = "stopping"
        log.info("%s: stopping sources and draining", why)
        for cell in self.cells.values():
            if cell.spec.kind == "source":
                cell.request_stop()
        self._stop_event.set()

    def status(self) -> dict[str, Any]:
        return {
            "node": self.node_id,
            "version": __version__,
            "state": self.state,
            "uptime_s": round(time.time() - self.started_at, 1),
            "topology": self.topology.file,
            "actors": {name: cell.status() for name, cell in self.cells.items()},
        }
