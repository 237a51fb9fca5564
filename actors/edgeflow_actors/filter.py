"""`filter` operator: keep the messages for which an expression is true."""

from __future__ import annotations

from typing import Any

from edgeflow import Config, Message, Operator, Predicate, field

__all__ = ["Filter"]


class FilterConfig(Config):
    where: Predicate = field(doc="keep a message when this is true, e.g. \"temp > 30 and device != 'test'\"")


class Filter(Operator):
    """Keeps messages for which `where` is true; drops (and settles) the rest."""

    Config = FilterConfig
    config: FilterConfig

    def process_batch(self, batch: list[Message]) -> list[Message]:
        pred: Any = self.config.where.fn
        out: list[Message] = []
        append = out.append
        for m in batch:
            if pred(m.payload, m):
                append(m)
            elif m.ack is not None:
                m.ack.done()
        return out
