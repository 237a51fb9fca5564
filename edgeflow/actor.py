"""The three kinds of actor. The runtime owns the loops; an actor only fills hooks.

- A `Source` returns batches from `produce()` until its stream ends (None).
- An `Operator` turns each message into zero, one or many (`process`), or a whole batch at once
  (`process_batch`) when it can do that faster; it may emit on a timer (`on_timer`).
- A `Sink` delivers batches (`write`); the runtime retries, buffers, acknowledges and dead-letters.

Every actor declares its keys as a nested `Config` class (see `edgeflow.schema`), gets `on_start`
before its first batch and `on_stop` after its last. What a hook raising means:

- `NotReady` / `Retryable` (a destination down): retried with backoff, not counted as a crash.
- `Permanent` from `write`, or any exception from `process`: the message goes to the dead-letter
  destination with the reason; the actor keeps running.
- anything else: a crash; the supervisor restarts the actor (a fresh instance, same mailbox).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .message import Ack, Message
from .schema import Config

if TYPE_CHECKING:
    from .store import Store

__all__ = ["Actor", "Context", "EmptyConfig", "Operator", "Sink", "Source"]


class EmptyConfig(Config):
    """An actor without keys of its own."""


@dataclass
class Context:
    """What the runtime lends an actor: where it lives and the shared resources it may use."""

    node_id: str
    data_dir: Path
    connections: dict[str, Any] = field(default_factory=dict)
    store: Store | None = None


class Actor:
    kind: ClassVar[str] = ""
    Config: ClassVar[type[Config]] = EmptyConfig
    #: True when the actor keeps durable state (offsets, windows) in `context.store`.
    needs_store: ClassVar[bool] = False

    def __init__(self, name: str, config: Any, context: Context) -> None:
        self.name = name
        self.config = config
        self.context = context
        self.log = logging.getLogger(f"edgeflow.actor.{name}")
        self.rejected: list[tuple[Message, str]] = []

    def reject(self, payload: Any, reason: str, *, topic: str | None = None, ack: Ack | None = None) -> None:
        """Hand input that cannot become a message (a line of garbage) to the dead-letter destination.

        The runtime sends it after the current hook returns, with `reason`; `ack` (if any) is settled
        once the dead-letter copy is durable, like any other message.
        """
        self.rejected.append((Message(payload, self.name, topic, ack=ack), reason))

    async def on_start(self) -> None:
        """Runs before the first batch, on every (re)start. Raise `NotReady` to be retried later."""

    async def on_stop(self) -> None:
        """Runs after the last batch, or before a restart; bounded by the stop deadline."""

    def status(self) -> dict[str, Any]:
        """Extra figures for `edgeflow status` (connection state, offsets...)."""
        return {}


class Source(Actor):
    kind = "source"
    #: True when messages carry an `Ack` that settles upstream (MQTT PUBACK, a stored offset).
    acknowledges: ClassVar[bool] = False

    async def produce(self) -> list[Message] | None:
        """Return the next batch (waiting for it as long as needed), or None when the stream ended.

        Cancelled when the runtime stops; a batch returned is routed downstream before the next call.
        """
        raise NotImplementedError


class Operator(Actor):
    """An operator; a stateful one (windows, de-duplication) sets `stateful = True` and implements
    `snapshot`/`restore`: the runtime then stores a snapshot every `commit_interval` seconds (and at
    the end of the stream), restores the last one at start, and holds back each input message's
    acknowledgement until a snapshot taken after it is durable. So a message absorbed into state is
    acknowledged upstream only once that state would survive a crash.
    """

    kind = "operator"
    #: Seconds between `on_timer` calls, or None for an operator without timers.
    timer_interval: ClassVar[float | None] = None
    #: Whether the runtime persists `snapshot()` and holds acknowledgements until it is committed.
    stateful: ClassVar[bool] = False
    #: Seconds between state commits (stateful operators).
    commit_interval: ClassVar[float] = 1.0

    def snapshot(self) -> Any:
        """The state to persist (msgpack-able: dicts, lists, numbers, strings, bytes)."""
        return None

    def restore(self, state: Any) -> None:
        """Called before the first batch with the last committed snapshot (not called when none)."""

    def process(self, msg: Message) -> Message | Sequence[Message] | None:
        """Turn one message into one (return it, or `msg.derive(...)`), several (a list) or none.

        An exception sends that message to the dead-letter destination with the reason.
        """
        return msg

    def process_batch(self, batch: list[Message]) -> list[Message]:
        """Process a batch; the default calls `process` for each message and settles what it drops.

        Override it when the operator can do a whole batch faster; then settle (`ack.done()`) what
        you drop, and carry `ack` into what you emit (`Message.derive` does).
        """
        out: list[Message] = []
        process = self.process
        append = out.append
        for m in batch:
            r = process(m)
            if r is m:
                append(m)
            elif r is None:
                if m.ack is not None:
                    m.ack.done()
            elif isinstance(r, Message):
                if r.ack is None and m.ack is not None:
                    r.ack = m.ack
                append(r)
            else:
                n = len(r)
                ack = m.ack
                if ack is not None:
                    if n == 0:
                        ack.done()
                    else:
                        ack.add(n - 1)
                        for x in r:
                            x.ack = ack
                out.extend(r)
        return out

    def on_timer(self, now: float) -> list[Message]:
        """Called every `timer_interval` seconds (windows close here); return messages to emit."""
        return []

    def flush(self) -> list[Message]:
        """Called once when every input ended (or at stop): emit what is still held."""
        return []


class Sink(Actor):
    kind = "sink"
    #: Whether `buffer.persist` defaults to true (network sinks) or false (local ones).
    persist_default: ClassVar[bool] = False
    #: The most messages handed to one `write` call.
    max_batch: int = 1024  # a sink may set its own per instance (in __init__ or on_start)

    async def write(self, batch: list[Message]) -> None:
        """Deliver a batch; return only once the destination has it (that is the acknowledgement).

        Raise `Retryable` (or `ConnectionError`, `TimeoutError`) to have the same batch retried with
        backoff; raise `Permanent` when the destination rejected it: the runtime then retries the
        messages one by one and dead-letters those that fail permanently, with the reason.
        """
        raise NotImplementedError
