"""Helpers to unit-test an actor without a topology or a supervisor.

    from edgeflow.testing import messages, run_operator

    async def test_keeps_hot_readings():
        out = await run_operator(Filter, {"where": "temp > 30"}, messages({"temp": 31}, {"temp": 20}))
        assert [m.payload for m in out] == [{"temp": 31}]

The config is checked exactly as in a topology file (a bad key raises `ConfigError` naming it), the
hooks run in the order the runtime runs them (`on_start`, the work, `flush`, `on_stop`), and
acknowledgements can be observed with `tracked()`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from .actor import Actor, Context, Operator, Sink, Source
from .errors import ConfigError
from .message import Ack, Message
from .schema import Problems, build_config

__all__ = ["build", "collect", "messages", "run_operator", "run_sink", "tracked"]

A = TypeVar("A", bound=Actor)


def build(
    cls: type[A],
    config: Mapping[str, Any] | None = None,
    *,
    name: str = "under_test",
    context: Context | None = None,
) -> A:
    """An actor instance with `config` checked as a topology would check it."""
    problems = Problems("<test>", lambda path: None)
    built = build_config(cls.Config, dict(config or {}), (cls.kind + "s", name), problems)
    if built is None:
        raise ConfigError(problems.items)
    ctx = context or Context(node_id="test", data_dir=Path(tempfile.mkdtemp(prefix="edgeflow-test-")))
    return cls(name, built, ctx)


def messages(*payloads: Any, source: str = "test", topic: str | None = None) -> list[Message]:
    return [Message(p, source, topic) for p in payloads]


def tracked(msgs: list[Message]) -> list[list[int]]:
    """Attach an `Ack` to each message; returns a list per message that gets a 1 when it is settled."""
    settled: list[list[int]] = []
    for m in msgs:
        box: list[int] = []
        settled.append(box)
        m.ack = Ack(lambda box=box: box.append(1))  # type: ignore[misc]
    return settled


async def run_operator(cls: type[Operator], config: Mapping[str, Any] | None, batch: list[Message]) -> list[Message]:
    """Start the operator, process `batch` as one batch, flush, stop; everything it emitted."""
    op = build(cls, config)
    await op.on_start()
    try:
        out = op.process_batch(list(batch))
        out.extend(op.flush())
    finally:
        await op.on_stop()
    return out


async def run_sink(cls: type[Sink], config: Mapping[str, Any] | None, batch: list[Message]) -> Sink:
    """Start the sink, write `batch` (in chunks of its `max_batch`), stop; returns the instance."""
    sink = build(cls, config)
    await sink.on_start()
    try:
        for i in range(0, len(batch), sink.max_batch):
            await sink.write(batch[i : i + sink.max_batch])
    finally:
        await sink.on_stop()
    return sink


async def collect(cls: type[Source], config: Mapping[str, Any] | None, limit: int = 10_000) -> list[Message]:
    """Run a source until its stream ends or `limit` messages were produced."""
    src = build(cls, config)
    await src.on_start()
    out: list[Message] = []
    try:
        while len(out) < limit:
            batch = await src.produce()
            if batch is None:
                break
            out.extend(batch)
    finally:
        await src.on_stop()
    return out[:limit]
