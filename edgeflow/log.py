"""Logging: one line per event, with the actor's name, friendly to journald.

Under systemd (JOURNAL_STREAM set) lines carry a `<N>` syslog priority prefix and no timestamp,
since journald adds its own; on a terminal they carry a timestamp.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["setup_logging"]

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class _Formatter(logging.Formatter):
    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        name = record.name
        if name.startswith("edgeflow.actor."):
            who = f"[{name[15:]}]"
        elif name.startswith("edgeflow."):
            who = f"({name[9:]})"
        else:
            who = f"({name})"
        text = f"{record.levelname.lower()} {who} {record.getMessage()}"
        if record.exc_info and record.levelno >= logging.ERROR and not isinstance(record.exc_info[1], OSError):
            # Tracebacks only for crashes (bugs), folded onto one line so one event stays one line.
            text += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        if self.journald:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{text}"
        return f"{self.formatTime(record, '%Y-%m-%d %H:%M:%S')} {text}"


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(journald="JOURNAL_STREAM" in os.environ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
