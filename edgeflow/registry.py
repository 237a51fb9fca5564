"""One registry for built-in and third-party actors: the `edgeflow.actors` entry-point group.

An entry point is named `<kind>.<type>` (`source.mqtt`, `operator.filter`, `sink.http`,
`connection.mqtt`) and points at a class. Only the names are read at start; a class is imported when a
topology uses its type, so a gateway that never talks to Kafka never imports a Kafka client. Two
distributions registering the same name is an error that names both, never a silent overwrite.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from .errors import EdgeflowError

__all__ = ["GROUP", "KINDS", "Registry", "RegistryError"]

GROUP = "edgeflow.actors"
KINDS = ("source", "operator", "sink", "connection")


class RegistryError(EdgeflowError):
    """A plugin that cannot be used: a duplicate name, an import failure, a class of the wrong kind."""


@dataclass(frozen=True)
class _Entry:
    kind: str
    type: str
    target: str
    dist: str
    ep: EntryPoint


class Registry:
    def __init__(self, eps: Iterable[EntryPoint] | None = None) -> None:
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._duplicates: dict[tuple[str, str], list[_Entry]] = {}
        self._loaded: dict[tuple[str, str], Any] = {}
        for ep in entry_points(group=GROUP) if eps is None else eps:
            kind, _, type_ = ep.name.partition(".")
            if kind not in KINDS or not type_:
                continue
            dist = ep.dist.name if ep.dist is not None else "?"
            entry = _Entry(kind, type_, ep.value, dist, ep)
            key = (kind, type_)
            old = self._entries.get(key)
            if old is None:
                self._entries[key] = entry
            elif (old.target, old.dist) != (entry.target, entry.dist):
                self._duplicates.setdefault(key, [old]).append(entry)

    def types(self, kind: str) -> list[str]:
        return sorted(t for k, t in self._entries if k == kind)

    def has(self, kind: str, type_: str) -> bool:
        return (kind, type_) in self._entries

    def load(self, kind: str, type_: str) -> Any:
        """Import and check the class registered as `kind.type_`; `RegistryError` says what is wrong."""
        key = (kind, type_)
        cls = self._loaded.get(key)
        if cls is not None:
            return cls
        if key in self._duplicates:
            who = ", ".join(f"{e.target} from {e.dist!r}" for e in self._duplicates[key])
            raise RegistryError(f"{kind} type {type_!r} is registered more than once: {who}")
        entry = self._entries.get(key)
        if entry is None:
            raise RegistryError(f"no {kind} type {type_!r}")
        try:
            cls = entry.ep.load()
        except Exception as exc:
            raise RegistryError(
                f"{kind} type {type_!r} ({entry.target} from {entry.dist!r}) failed to load: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        _check(kind, type_, entry, cls)
        self._loaded[key] = cls
        return cls


def _check(kind: str, type_: str, entry: _Entry, cls: Any) -> None:
    from .actor import Operator, Sink, Source
    from .schema import Config

    bases: dict[str, type] = {"source": Source, "operator": Operator, "sink": Sink}
    base = bases.get(kind)
    where = f"{kind} type {type_!r} ({entry.target} from {entry.dist!r})"
    if base is not None and not (isinstance(cls, type) and issubclass(cls, base)):
        raise RegistryError(f"{where} is not a subclass of edgeflow.{base.__name__}")
    config = getattr(cls, "Config", None)
    if not (isinstance(config, type) and issubclass(config, Config)):
        raise RegistryError(f"{where} has no Config class derived from edgeflow.Config")
