"""`log` sink: one log line per message (or per N messages) for debugging a flow."""

from __future__ import annotations

import json
import logging
from typing import Literal

from edgeflow import Config, Message, Sink, field

__all__ = ["LogSink"]


class LogConfig(Config):
    level: Literal["debug", "info", "warning"] = field("info", doc="the log level of each line")
    every: int = field(1, ge=1, doc="log one message in this many")


class LogSink(Sink):
    """Logs each message (payload as JSON, with its topic or source) on one line."""

    Config = LogConfig
    config: LogConfig

    async def on_start(self) -> None:
        self._level = logging.getLevelName(self.config.level.upper())
        self._n = 0

    async def write(self, batch: list[Message]) -> None:
        every = self.config.every
        log = self.log
        if not log.isEnabledFor(self._level):
            return
        for m in batch:
            self._n += 1
            if self._n % every == 0:
                body = json.dumps(m.payload, default=repr) if not isinstance(m.payload, bytes) else repr(m.payload)
                log.log(self._level, "%s %s", m.topic or m.source, body)
