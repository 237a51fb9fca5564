"""`map` operator: set fields from expressions and drop fields."""

from __future__ import annotations

from typing import Any

from edgeflow import Config, Expr, Message, Operator, field

__all__ = ["Map"]


class MapConfig(Config):
    set: dict[str, Expr] = field(default_factory=dict, doc='fields to set, e.g. { temp_f = "temp * 9 / 5 + 32" }')
    drop: list[str] = field(default_factory=list, doc="fields to remove")


class Map(Operator):
    """Sets fields from expressions (all reading the incoming message) and removes fields."""

    Config = MapConfig
    config: MapConfig

    async def on_start(self) -> None:
        from edgeflow.expr import compile_map

        self._fn: Any = compile_map({k: e.source for k, e in self.config.set.items()}, self.config.drop)

    def process_batch(self, batch: list[Message]) -> list[Message]:
        fn = self._fn
        return [m.derive(fn(m.payload, m)) for m in batch]
