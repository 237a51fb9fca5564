"""A cell is the runtime's home for one actor: its mailbox, its routes, its loop and its restarts.

The actor instance is disposable: a crash replaces it with a fresh one built from the same config,
while the cell (and so the mailbox, the routes and the counters) lives on. The loops here are the
only place where messages move, so they are written for the hot path: one wake-up per batch, counters
bumped per batch, no per-message awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .actor import Context, Operator, Sink, Source
from .errors import NotReady, Permanent, RestartIntensityExceeded, Retryable
from .mailbox import Mailbox
from .message import Ack, Message
from .metrics import ActorMetrics

if TYPE_CHECKING:
    from .sinkbuffer import SinkBuffer
    from .supervisor import Supervisor
    from .topology import ActorSpec

__all__ = ["Cell", "Router"]

log = logging.getLogger("edgeflow.runtime")

#: Errors a sink may raise (or leak from a client library) that mean "try again later".
RETRYABLE = (Retryable, ConnectionError, TimeoutError, OSError)
SOURCE_BATCH = 1024


class Router:
    """Where an actor's output goes: the mailboxes of every actor that lists it in `inputs`."""

    __slots__ = ("targets",)

    def __init__(self, targets: Sequence[Mailbox]) -> None:
        self.targets = list(targets)

    async def send(self, batch: list[Message]) -> None:
        targets = self.targets
        if len(targets) == 1:
            await targets[0].put(batch)
            return
        extra = len(targets) - 1
        if extra > 0:
            for m in batch:
                if m.ack is not None:
                    m.ack.add(extra)
        else:  # nobody reads (validation prevents it, but never strand an acknowledgement)
            for m in batch:
                if m.ack is not None:
                    m.ack.done()
        for mb in targets:
            await mb.put(batch)

    def close(self) -> None:
        for mb in self.targets:
            mb.close_writer()
        self.targets = []

    def retarget(self, targets: Sequence[Mailbox]) -> list[Mailbox]:
        """Point at a new set of mailboxes (a reload); returns the ones dropped, still to be closed.

        New targets gain a writer at once; the caller closes the dropped ones only after every
        router has gained its new targets, so no mailbox sees a passing moment with no writer.
        """
        old = self.targets
        for mb in targets:
            if mb not in old:
                mb.add_writer()
        self.targets = list(targets)
        return [mb for mb in old if mb not in targets]


class _Restart(Exception):
    """Raised inside a cell when its supervisor asked for a restart (a sibling crashed)."""


class Cell:
    def __init__(
        self,
        spec: ActorSpec,
        context: Context,
        supervisor: Supervisor,
        mailbox: Mailbox | None,
        router: Router,
        dead_letter: Mailbox | None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.context = context
        self.supervisor = supervisor
        self.mailbox = mailbox
        self.router = router
        self.dead_letter_box = dead_letter
        self.metrics = ActorMetrics()
        self.state = "idle"
        self.instance: Any = None
        self.buffer: SinkBuffer | None = None
        self.stop_timeout = 20.0  # node.stop_timeout: how long a stop may spend draining
        self.started = asyncio.Event()  # set once the first on_start succeeded (or the cell ended)
        self.attempted = asyncio.Event()  # set once the first on_start returned or raised
        self.removed = False  # taken out of the topology by a reload: drains, then goes away
        self.paused = False  # stopped by an operator's command, not by its stream ending
        self._held: list[Ack] = []  # acknowledgements waiting for a stateful operator's next commit
        self._resumed = asyncio.Event()
        self.log = logging.getLogger(f"edgeflow.actor.{spec.name}")
        self._work: asyncio.Task[None] | None = None
        self._interruptible = False
        self._restart_requested = False
        self._stop_requested = False

    # -- control from the runtime and the supervisor --------------------------------------------

    def request_restart(self) -> None:
        """Restart this actor at the next safe point (now if it is waiting for input)."""
        self._restart_requested = True
        if self._interruptible and self._work is not None:
            self._work.cancel()

    def request_stop(self) -> None:
        """Sources only: stop producing at the next safe point (now if waiting in `produce`)."""
        self._stop_requested = True
        self._resumed.set()
        if self._interruptible and self._work is not None:
            self._work.cancel()

    def pause(self) -> None:
        """Sources only: stop the actor (its `on_stop` runs) but keep its place in the graph, so that
        `resume` starts a fresh instance where it left off (an operator's `actor.stop`)."""
        if self.paused:
            return
        self.paused = True
        self._resumed.clear()
        self.request_restart()

    def resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        self._resumed.set()

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"kind": self.spec.kind, "type": self.spec.type, "state": self.state}
        doc.update(self.metrics.snapshot())
        if self.mailbox is not None:
            doc["mailbox"] = {
                "depth": len(self.mailbox),
                "capacity": self.mailbox.capacity,
                "overflow": self.mailbox.overflow,
                "dropped": self.mailbox.dropped,
            }
        if self.buffer is not None:
            doc["buffer"] = self.buffer.status()
        if self.instance is not None:
            try:
                doc.update(self.instance.status())
            except Exception as exc:  # a status hook must never take the status page down
                doc["status_error"] = repr(exc)
        return doc

    # -- the lifetime -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the actor until its stream ends, restarting it as its supervisor decides."""
        attempt = 0
        try:
            while True:
                if self.paused:
                    self.state = "paused"
                    await self._resumed.wait()
                    if self._stop_requested:
                        self.state = "stopped"
                        return
                self.instance = self.spec.cls(self.name, self.spec.config, self.context)
                self._restart_requested = False
                ran_since = time.monotonic()
                try:
                    self.state = "starting"
                    try:
                        await self.instance.on_start()
                    finally:
                        self.attempted.set()
                    self.state = "running"
                    self.started.set()
                    self._work = asyncio.create_task(self._loop(self.instance), name=f"edgeflow[{self.name}].loop")
                    try:
                        await self._work
                    except asyncio.CancelledError:
                        current = asyncio.current_task()
                        if current is not None and current.cancelling():
                            raise
                        if self._stop_requested and self.spec.kind == "source":
                            self.state = "stopped"
                            return
                        if not self._restart_requested:
                            raise
                        raise _Restart() from None
                    finally:
                        self._work = None
                    if self._restart_requested and not self._stop_requested:
                        raise _Restart()
                    self.state = "finished" if not self._stop_requested else "stopped"
                    return
                except _Restart:
                    await self._stop_instance()
                    if self.paused:
                        self.log.info("paused")
                        continue
                    self.log.info("restarting (asked by the supervisor)")
                    self.metrics.restarts += 1
                    continue
                except Retryable as exc:
                    self.state = "waiting"
                    level = logging.WARNING if attempt == 0 or attempt % 10 == 0 else logging.DEBUG
                    kind = "not ready" if isinstance(exc, NotReady) else "retrying"
                    self.log.log(level, "%s: %s", kind, exc)
                except RestartIntensityExceeded:
                    raise
                except Exception as exc:
                    self.state = "crashed"
                    self.log.error("crashed: %s: %s", type(exc).__name__, exc, exc_info=exc)
                    await self._stop_instance()
                    if self.removed:
                        # Taken out by a reload (or a rolled-back apply): its crashes must not count
                        # against the actors that stay, nor may it come back.
                        left = len(self.mailbox) if self.mailbox is not None else 0
                        self.log.error("removed actor crashed while draining; %d messages left undelivered", left)
                        self.state = "failed"
                        return
                    self.metrics.restarts += 1
                    self.supervisor.crashed(self)  # may raise RestartIntensityExceeded
                    if self.spec.restart == "temporary":
                        self.log.error("restart = 'temporary': not restarting")
                        self.state = "failed"
                        return
                if time.monotonic() - ran_since > self.supervisor.config.backoff.max:
                    attempt = 0  # it ran healthy for a while: start the backoff over
                delay = self.supervisor.delay(attempt)
                attempt += 1
                self.state = "backoff"
                await self._stop_instance()
                if await self._sleep_unless_stopped(delay):
                    self.state = "stopped"
                    return
        finally:
            self.started.set()
            self.attempted.set()
            await self._stop_instance()
            self.router.close()
            if self.dead_letter_box is not None:
                self.dead_letter_box.close_writer()

    async def _sleep_unless_stopped(self, delay: float) -> bool:
        """Wait out a backoff; a source told to stop returns at once (True)."""
        if self.spec.kind != "source":
            await asyncio.sleep(delay)
            return False
        self._interruptible = True
        try:
            self._work = asyncio.create_task(asyncio.sleep(delay), name=f"edgeflow[{self.name}].backoff")
            try:
                await self._work
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            return self._stop_requested
        finally:
            self._interruptible = False
            self._work = None

    async def _stop_instance(self) -> None:
        inst, self.instance = self.instance, None
        if inst is None:
            return
        try:
            async with asyncio.timeout(5):
                await inst.on_stop()
        except Exception as exc:
            self.log.warning("on_stop failed: %s: %s", type(exc).__name__, exc)

    async def _loop(self, inst: Any) -> None:
        if isinstance(inst, Source):
            await self._source_loop(inst)
        elif isinstance(inst, Operator):
            await self._operator_loop(inst)
        elif isinstance(inst, Sink):
            if self.buffer is not None:
                await self.buffer.run(self, inst)
            else:
                await self._sink_loop(inst)

    # -- sources -----------------------------------------------------------------------------------

    async def _source_loop(self, inst: Source) -> None:
        m = self.metrics
        send = self.router.send
        while not self._stop_requested and not self._restart_requested:
            self._interruptible = True
            try:
                batch = await inst.produce()
            finally:
                self._interruptible = False
            if inst.rejected:
                rejected, inst.rejected = inst.rejected, []
                await self.dead_letter(rejected)
            if batch is None:
                return
            if batch:
                n = len(batch)
                m.in_ += n
                m.out += n
                m.last_activity = time.time()
                await send(batch)

    # -- operators ---------------------------------------------------------------------------------

    async def _operator_loop(self, inst: Operator) -> None:
        assert self.mailbox is not None
        helpers: list[asyncio.Task[None]] = []
        if inst.stateful:
            await self._restore_state(inst)
            helpers.append(asyncio.create_task(self._commit_loop(inst), name=f"edgeflow[{self.name}].commit"))
        if inst.timer_interval:
            helpers.append(
                asyncio.create_task(self._timer_loop(inst, inst.timer_interval), name=f"edgeflow[{self.name}].timer")
            )
        try:
            await self._operator_batches(inst)
            out = inst.flush()
            if out:
                self.metrics.out += len(out)
                await self.router.send(out)
            if inst.stateful:
                await self._commit_state(inst)
        finally:
            for task in helpers:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._held = []  # not committed: their sources are not acknowledged, and will resend

    # -- persisted operator state -------------------------------------------------------------------

    def _state_key(self) -> str:
        return f"operator:{self.name}"

    async def _restore_state(self, inst: Operator) -> None:
        store = self.context.store
        assert store is not None, "a stateful operator needs the store (the runtime opens it)"
        data = await store.get_state(self._state_key())
        if data is not None:
            import msgpack

            inst.restore(msgpack.unpackb(data, raw=False, strict_map_key=False))

    async def _commit_state(self, inst: Operator) -> None:
        """Persist a snapshot, then settle the acknowledgements held since the previous one."""
        import msgpack

        held, self._held = self._held, []
        store = self.context.store
        assert store is not None
        await store.put_state({self._state_key(): msgpack.packb(inst.snapshot(), use_bin_type=True)})
        for ack in held:
            ack.done()

    async def _commit_loop(self, inst: Operator) -> None:
        while True:
            await asyncio.sleep(inst.commit_interval)
            if self._held:
                await self._commit_state(inst)

    async def _operator_batches(self, inst: Operator) -> None:
        mb = self.mailbox
        assert mb is not None
        m = self.metrics
        send = self.router.send
        clock = time.perf_counter
        while not self._restart_requested:
            self._interruptible = True
            try:
                batch = await mb.get(SOURCE_BATCH)
            finally:
                self._interruptible = False
            if batch is None:
                return
            if inst.stateful:  # each input's source waits for the next state commit as well
                held = self._held
                for msg in batch:
                    if msg.ack is not None:
                        msg.ack.add(1)
                        held.append(msg.ack)
            t0 = clock()
            try:
                out = inst.process_batch(batch)
            except Exception:
                out = await self._isolate(inst, batch)
            m.batch_done(len(batch), clock() - t0)
            m.in_ += len(batch)
            if inst.rejected:
                rejected, inst.rejected = inst.rejected, []
                await self.dead_letter(rejected)
            dropped = len(batch) - len(out)
            if dropped > 0:
                m.dropped += dropped
            if out:
                m.out += len(out)
                await send(out)

    async def _isolate(self, inst: Operator, batch: list[Message]) -> list[Message]:
        """A batch raised: process it one message at a time and dead-letter the ones that fail."""
        out: list[Message] = []
        bad: list[tuple[Message, str]] = []
        for msg in batch:
            try:
                out.extend(inst.process_batch([msg]))
            except Exception as exc:
                bad.append((msg, _reason(exc)))
        self.metrics.dropped -= len(bad)  # counted as failed, not as dropped on purpose
        await self.dead_letter(bad)
        return out

    async def _timer_loop(self, inst: Operator, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                out = inst.on_timer(time.time())
            except Exception as exc:
                self.log.error("on_timer failed: %s: %s", type(exc).__name__, exc, exc_info=exc)
                if self._work is not None:
                    self._work.cancel()
                raise
            if out:
                self.metrics.out += len(out)
                await self.router.send(out)

    # -- sinks -------------------------------------------------------------------------------------

    async def _sink_loop(self, inst: Sink) -> None:
        """A sink without a persisting buffer: the message is settled once the sink delivered it."""
        mb = self.mailbox
        assert mb is not None
        max_batch = inst.max_batch
        while True:
            self._interruptible = True
            try:
                batch = await mb.get(max_batch)
            finally:
                self._interruptible = False
            if batch is None:
                return
            self.metrics.in_ += len(batch)
            await self.deliver(inst, batch)
            for msg in batch:
                if msg.ack is not None:
                    msg.ack.done()

    async def deliver(self, inst: Sink, batch: list[Message]) -> list[Message]:
        """Write a batch, retrying what may succeed later; return the messages that were dead-lettered.

        Retryable failures are retried with capped, jittered backoff for as long as it takes (the
        caller holds the batch, in memory or in its buffer). A `Permanent` failure splits the batch so
        that only the messages the destination rejects go to the dead-letter destination.
        """
        m = self.metrics
        attempt = 0
        clock = time.perf_counter
        while True:
            t0 = clock()
            try:
                await inst.write(batch)
            except Permanent as exc:
                if len(batch) == 1:
                    await self.dead_letter([(batch[0], _reason(exc))])
                    return batch
                failed: list[Message] = []
                for msg in batch:
                    failed.extend(await self.deliver(inst, [msg]))
                return failed
            except RETRYABLE as exc:
                if attempt == 0 or attempt % 20 == 0:
                    self.log.warning("delivery failed, will retry: %s", _reason(exc))
                self.state = "retrying"
                await asyncio.sleep(self.supervisor.delay(attempt))
                attempt += 1
                continue
            m.batch_done(len(batch), clock() - t0)
            m.out += len(batch)
            if attempt:
                self.log.info("delivering again after %d retries", attempt)
                self.state = "running"
            return []

    # -- dead letters ----------------------------------------------------------------------------

    async def dead_letter(self, items: list[tuple[Message, str]]) -> None:
        """Send messages that cannot be processed or delivered to the dead-letter sink, with the reason.

        Without a dead-letter sink they are logged (one line each) and settled, so nothing is lost
        silently and nothing stalls its source. A message that carries no acknowledgement (it comes
        from a persisting buffer, which deletes it next) gets one here, and this returns only once
        the dead-letter sink has it durably: the copy must exist before the original goes.
        """
        if not items:
            return
        self.metrics.failed += len(items)
        self.metrics.dead_lettered += len(items)
        box = self.dead_letter_box
        if box is None:
            for msg, reason in items:
                self.log.warning("dead letter (no dead_letter sink configured): %s; message %s", reason, _brief(msg))
                if msg.ack is not None:
                    msg.ack.done()
            return
        loop = asyncio.get_running_loop()
        settled: asyncio.Future[None] = loop.create_future()
        unacked = [msg for msg, _ in items if msg.ack is None]
        tracker = None
        if unacked:

            def done() -> None:
                if not settled.done():
                    settled.set_result(None)

            tracker = Ack(done)
            tracker.pending = len(unacked)
        out = []
        for msg, reason in items:
            dead = msg.derive(
                {"error": reason, "actor": self.name, "source": msg.source, "topic": msg.topic, "payload": msg.payload}
            )
            if dead.ack is None:
                dead.ack = tracker
            out.append(dead)
        await box.put(out)
        if tracker is not None:
            await settled


def _reason(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _brief(msg: Message, limit: int = 200) -> str:
    text = repr(msg.payload)
    if len(text) > limit:
        text = text[:limit] + "..."
    return f"id={msg.id} topic={msg.topic} payload={text}"
