"""The control verbs: what each does with its `args`, and the result it replies with.

Each handler takes the command's args (a dict, already authenticated) and returns a JSON-able
result, or raises `CommandError` with a message for the sender. Unknown and missing args are
errors, so a typo (`settel=2`) is never silently ignored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .. import __version__
from .apply import CommandError, TopologyFiles
from .documents import metrics_document

if TYPE_CHECKING:
    from ..runtime import Runtime

__all__ = ["LEVELS", "VERBS", "Verbs"]

LEVELS = ("debug", "info", "warning", "error", "critical")
DEFAULT_SETTLE = 5.0
MAX_SETTLE = 300.0
MAX_TEXT = 1 << 20  # a topology is a few KiB; a megabyte is a mistake, not a file

Handler = Callable[[str, dict[str, Any]], Awaitable[Any]]

#: verb -> (required args, optional args), for argument checking and `edgeflow ctl`'s help.
VERBS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ping": ((), ()),
    "status": ((), ()),
    "metrics": ((), ()),
    "actor.stop": (("name",), ()),
    "actor.start": (("name",), ()),
    "actor.restart": (("name",), ()),
    "topology.get": ((), ()),
    "topology.validate": (("text",), ()),
    "topology.apply": (("text",), ("settle", "expect_sha256", "force")),
    "log.level": (("level",), ("logger",)),
}


class Verbs:
    """Carries out verbs on one runtime."""

    def __init__(self, runtime: Runtime, files: TopologyFiles) -> None:
        self.runtime = runtime
        self.files = files
        self._handlers: dict[str, Handler] = {
            "ping": self.ping,
            "status": self.status,
            "metrics": self.metrics,
            "actor.stop": self.actor,
            "actor.start": self.actor,
            "actor.restart": self.actor,
            "topology.get": self.topology_get,
            "topology.validate": self.topology_validate,
            "topology.apply": self.topology_apply,
            "log.level": self.log_level,
        }

    async def run(self, verb: str, args: dict[str, Any]) -> Any:
        """Check `args` against the verb and carry it out; `CommandError` says what went wrong."""
        handler = self._handlers.get(verb)
        if handler is None:
            raise CommandError(f"unknown verb {verb!r}; known: {', '.join(VERBS)}")
        required, optional = VERBS[verb]
        missing = [k for k in required if k not in args]
        if missing:
            raise CommandError(f"{verb} needs args: {', '.join(missing)}")
        unknown = sorted(k for k in args if k not in required and k not in optional)
        if unknown:
            allowed = ", ".join((*required, *optional)) or "none"
            raise CommandError(f"{verb} takes no args {', '.join(unknown)} (it takes: {allowed})")
        return await handler(verb, args)

    async def ping(self, verb: str, args: dict[str, Any]) -> Any:
        rt = self.runtime
        return {"node": rt.node_id, "version": __version__, "state": rt.state, "uptime_s": _uptime(rt)}

    async def status(self, verb: str, args: dict[str, Any]) -> Any:
        return self.runtime.status()

    async def metrics(self, verb: str, args: dict[str, Any]) -> Any:
        return metrics_document(self.runtime)

    async def actor(self, verb: str, args: dict[str, Any]) -> Any:
        name = _text(args, "name")
        action = verb.removeprefix("actor.")
        try:
            done = self.runtime.actor_command(name, action)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        return {"actor": name, "done": done}

    async def topology_get(self, verb: str, args: dict[str, Any]) -> Any:
        return self.files.get()

    async def topology_validate(self, verb: str, args: dict[str, Any]) -> Any:
        return await self.files.validate(_text(args, "text", allow_empty=True))

    async def topology_apply(self, verb: str, args: dict[str, Any]) -> Any:
        text = _text(args, "text", allow_empty=True)
        settle = args.get("settle", DEFAULT_SETTLE)
        if isinstance(settle, bool) or not isinstance(settle, int | float) or not 0 <= settle <= MAX_SETTLE:
            raise CommandError(f"'settle' must be a number of seconds from 0 to {MAX_SETTLE:g}")
        expect = args.get("expect_sha256")
        if expect is not None and not isinstance(expect, str):
            raise CommandError("'expect_sha256' must be a string")
        force = args.get("force", False)
        if not isinstance(force, bool):
            raise CommandError("'force' must be true or false")
        return await self.files.apply(text, float(settle), expect, force)

    async def log_level(self, verb: str, args: dict[str, Any]) -> Any:
        level = _text(args, "level").lower()
        if level not in LEVELS:
            raise CommandError(f"unknown log level {level!r}; one of {', '.join(LEVELS)}")
        name = args.get("logger")
        if name is not None and (not isinstance(name, str) or not name):
            raise CommandError("'logger' must be a logger name such as 'edgeflow.mqtt'")
        logger = logging.getLogger(name)
        previous = logging.getLevelName(logger.getEffectiveLevel()).lower()
        logger.setLevel(level.upper())
        logging.getLogger("edgeflow.control").warning(
            "log level of %s set to %s (was %s) by a control command", name or "the root logger", level, previous
        )
        return {"logger": name or "root", "level": level, "previous": previous}


def _text(args: dict[str, Any], key: str, *, allow_empty: bool = False) -> str:
    value = args.get(key)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise CommandError(f"'{key}' must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise CommandError(f"'{key}' is longer than {MAX_TEXT} characters")
    return value


def _uptime(runtime: Runtime) -> float:
    return round(time.time() - runtime.started_at, 1)
