"""Every error edgeflow raises on purpose, in one flat hierarchy.

Three families matter to the runtime, because each is handled differently:

- `NotReady` / `Retryable`: "try again later" (a broker or server down, a timeout, a full disk). The
  runtime retries with capped, jittered backoff, forever, and does not count it as a crash.
- `Permanent`: "this message is broken" (the destination rejected it, it cannot be decoded). The
  message goes to the dead-letter destination with the reason; the flow goes on.
- `ConfigError`: "the user's file is wrong". Reported with file, line and key; nothing starts.

Anything else escaping an actor hook is a crash (a bug): the supervisor restarts the actor.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "EdgeflowError",
    "ExpressionError",
    "NotReady",
    "Permanent",
    "RestartIntensityExceeded",
    "Retryable",
    "StoreError",
]


class EdgeflowError(Exception):
    """Base of every error edgeflow raises on purpose."""


class Retryable(EdgeflowError):
    """A transient failure: retry the same work later (destination down, timeout, disk full)."""


class NotReady(Retryable):
    """An actor cannot start or work yet (a broker unreachable); retried without counting as a crash."""


class Permanent(EdgeflowError):
    """This message can never succeed (rejected by the destination, undecodable): dead-letter it."""


class StoreError(EdgeflowError):
    """The durable store cannot be used (corrupt beyond repair, unwritable directory)."""


class ExpressionError(EdgeflowError):
    """An expression that does not parse or uses something not allowed; `col` is 1-based."""

    def __init__(self, message: str, source: str, col: int | None = None) -> None:
        self.message = message
        self.source = source
        self.col = col
        where = f" at column {col}" if col is not None else ""
        super().__init__(f"{message}{where} in {source!r}")


@dataclass(frozen=True)
class ConfigProblem:
    """One problem in a topology file, located as precisely as we can."""

    file: str
    line: int | None
    path: str  # the key path, e.g. "operators.hot.where"
    message: str

    def __str__(self) -> str:
        line = f":{self.line}" if self.line is not None else ""
        path = f" {self.path}:" if self.path else ""
        return f"{self.file}{line}:{path} {self.message}"


class ConfigError(EdgeflowError):
    """A topology with problems; `problems` lists every one of them."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class RestartIntensityExceeded(EdgeflowError):
    """More restarts than `max_restarts` within `within`: the process gives up so systemd takes over."""

    def __init__(self, actor: str, restarts: int, within: float) -> None:
        self.actor = actor
        self.restarts = restarts
        self.within = within
        super().__init__(f"actor {actor!r} pushed restarts past {restarts} within {within:g}s; giving up")
