"""The topology file: load it, check all of it, and hand the runtime a wired plan.

`load_topology` reports every problem at once (`ConfigError.problems`), each with the file, the line
and the key path, so a person fixes a file in one pass instead of one error per run. The contract is
`shared/design/TOPOLOGY.md`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from . import tomlpos
from .errors import ConfigError
from .registry import Registry, RegistryError
from .schema import Config, ConnectionRef, Duration, Problems, SecretFile, Size, build_config, field, suggest

__all__ = [
    "ActorSpec",
    "BufferConfig",
    "ConnectionSpec",
    "NodeConfig",
    "SupervisorConfig",
    "Topology",
    "load_topology",
    "parse_topology",
]

SECTIONS = {"sources": "source", "operators": "operator", "sinks": "sink"}


def _default_node_id() -> str:
    """the host name"""
    return socket.gethostname() or "edgeflow"


def _default_data_dir() -> str:
    """$EDGEFLOW_DATA_DIR, or ./data"""
    return os.environ.get("EDGEFLOW_DATA_DIR", "./data")


class NodeConfig(Config):
    id: str = field(default_factory=_default_node_id, doc="this node's name (default: the host name)")
    data_dir: str = field(default_factory=_default_data_dir, doc="where the store and state live")
    log_level: Literal["debug", "info", "warning", "error"] = field("info", doc="log verbosity")
    synchronous: Literal["normal", "full"] = field(
        "normal", doc="'normal' survives a process crash, 'full' also a power cut (slower)"
    )
    stop_timeout: Duration = field(20.0, doc="how long a stop may take to drain before giving up")


class BackoffConfig(Config):
    initial: Duration = field(0.2, doc="first restart delay")
    max: Duration = field(30.0, doc="longest restart delay")


class SupervisorConfig(Config):
    strategy: Literal["one_for_one", "one_for_all", "rest_for_one"] = field(
        "one_for_one", doc="which actors restart when one crashes"
    )
    max_restarts: int = field(5, ge=0, doc="more crashes than this within `within` end the process")
    within: Duration = field(30.0, doc="the window for max_restarts")
    backoff: BackoffConfig = field(default_factory=BackoffConfig, doc="restart delays (jittered)")


class ControlConfig(Config):
    connection: ConnectionRef = field(doc="the MQTT connection that carries the control plane")
    prefix: str = field("edgeflow", doc="topics live under <prefix>/<node.id>/")
    hmac_key_file: SecretFile = field(None, doc="commands must be signed with this key")
    metrics_interval: Duration = field(30.0, doc="how often metrics are published")


class BufferConfig(Config):
    persist: bool | None = field(None, doc="store-and-forward in SQLite (default: true for network sinks)")
    max_size: Size = field(256 * 2**20, doc="the most bytes the buffer holds on disk")
    when_full: Literal["block", "drop_oldest"] = field("block", doc="what a full buffer does")
    ttl: Duration | None = field(None, doc="expire buffered messages older than this")


class _SourceKeys(Config):
    type: str
    restart: Literal["permanent", "transient", "temporary"] = "permanent"
    dead_letter: str | None = None


class _OperatorKeys(_SourceKeys):
    inputs: list[str]
    mailbox: int = field(256, ge=1)
    overflow: Literal["block", "drop_oldest", "drop_newest"] = "block"


class _SinkKeys(_OperatorKeys):
    inputs: list[str] = field(default_factory=list)
    buffer: BufferConfig = field(default_factory=BufferConfig)


_SINK_KEYS = [f.name for f in dataclasses.fields(_SinkKeys)]  # type: ignore[arg-type]
_COMMON: dict[str, type[_SourceKeys]] = {"source": _SourceKeys, "operator": _OperatorKeys, "sink": _SinkKeys}

COMMON_KEYS_DOC: dict[str, str] = {
    "type": "the registered actor type within its section",
    "inputs": "names of the actors feeding this one (operators and sinks)",
    "mailbox": "capacity of the bounded mailbox, in messages (default 256)",
    "overflow": "block | drop_oldest | drop_newest: what a full mailbox does (default block)",
    "restart": "permanent | transient | temporary (default permanent)",
    "buffer": "sinks: { persist, max_size, when_full, ttl }",
    "dead_letter": "the sink that receives messages that cannot be processed or delivered",
}


@dataclass
class ConnectionSpec:
    name: str
    type: str
    cls: Any
    config: Any
    raw: dict[str, Any]


@dataclass
class ActorSpec:
    name: str
    kind: str  # source | operator | sink
    type: str
    cls: Any
    config: Any
    inputs: list[str]
    mailbox: int
    overflow: Literal["block", "drop_oldest", "drop_newest"]
    restart: Literal["permanent", "transient", "temporary"]
    dead_letter: str | None
    buffer: BufferConfig | None
    raw: dict[str, Any]

    @property
    def persist(self) -> bool:
        if self.buffer is None:
            return False
        if self.buffer.persist is None:
            return bool(getattr(self.cls, "persist_default", False))
        return self.buffer.persist


@dataclass
class Topology:
    file: str
    text: str
    node: NodeConfig
    supervisor: SupervisorConfig
    control: ControlConfig | None
    connections: dict[str, ConnectionSpec]
    actors: dict[str, ActorSpec]

    def consumers(self, name: str) -> list[str]:
        return [a.name for a in self.actors.values() if name in a.inputs]

    def start_order(self) -> list[str]:
        """Sinks, then operators from the most downstream up, then sources: each starts after its readers."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(n: str) -> None:
            if n in seen:
                return
            seen.add(n)
            for c in self.consumers(n):
                visit(c)
            order.append(n)

        for kind in ("sink", "operator", "source"):
            for a in self.actors.values():
                if a.kind == kind:
                    visit(a.name)
        return order


def load_topology(path: str | os.PathLike[str], registry: Registry | None = None) -> Topology:
    """Read and check a topology file; `ConfigError` lists every problem found."""
    data, locator = tomlpos.load(path)
    text = Path(path).read_text(encoding="utf-8")
    return parse_topology(data, str(path), locator.line_of, text, registry or Registry())


def parse_topology(
    data: Mapping[str, Any],
    file: str,
    line_of: Any,
    text: str,
    registry: Registry,
) -> Topology:
    p = Problems(file, line_of)
    for key in data:
        if key not in ("node", "supervisor", "control", "connections", *SECTIONS):
            p.add(
                (key,),
                f"unknown table{suggest(key, ['node', 'supervisor', 'control', 'connections', *SECTIONS])}",
            )

    node = _table(NodeConfig, data, "node", p) or NodeConfig()
    supervisor = _table(SupervisorConfig, data, "supervisor", p) or SupervisorConfig()

    connections: dict[str, ConnectionSpec] = {}
    for name, raw in _tables(data, "connections", p).items():
        ctype = raw.get("type")
        if not isinstance(ctype, str):
            p.add(("connections", name, "type"), "missing required key (the connection type, e.g. 'mqtt')")
            continue
        p.connections = {**p.connections, name: ctype}
        cls = _load(registry, "connection", ctype, ("connections", name, "type"), p)
        if cls is None:
            continue
        config = build_config(cls.Config, raw, ("connections", name), p, ignore=("type",))
        connections[name] = ConnectionSpec(name, ctype, cls, config, dict(raw))

    identities: dict[tuple[str, ...], str] = {}
    for name, conn in connections.items():
        identity = getattr(conn.cls, "identity", None)
        if identity is None or conn.config is None:
            continue
        try:
            key = identity(conn.config, node.id)
        except ValueError:
            continue  # a bad url is reported by the connection's own checks
        if key in identities:
            p.add(
                ("connections", name),
                f"same broker and client id as connections.{identities[key]}: the broker would let only one "
                "of them stay connected; give one a different client_id",
            )
        identities.setdefault(key, name)

    control = None
    if "control" in data:
        control = _table(ControlConfig, data, "control", p)
        if control is not None and p.connections.get(control.connection) not in (None, "mqtt"):
            p.add(("control", "connection"), f"the control plane needs an mqtt connection, not {control.connection!r}")
        if control is not None and (node.id == "all" or any(c in node.id for c in "/+#")):
            p.add(("node", "id"), f"{node.id!r} cannot name a node on the control plane (no '/', '+', '#', not 'all')")
        if control is not None and any(c in control.prefix for c in "+#"):
            p.add(("control", "prefix"), "a topic prefix cannot hold the wildcards '+' or '#'")

    actors: dict[str, ActorSpec] = {}
    for section, kind in SECTIONS.items():
        for name, raw in _tables(data, section, p).items():
            spec = _actor(registry, section, kind, name, raw, p)
            if name in actors:
                other = actors[name]
                p.add((section, name), f"the name {name!r} is already used by {other.kind}s.{name}")
            elif spec is not None:
                actors[name] = spec

    _check_graph(data, actors, p)
    if p.items:
        raise ConfigError(p.items)
    return Topology(file, text, node, supervisor, control, connections, actors)


def _table(cls: type[Config], data: Mapping[str, Any], key: str, p: Problems) -> Any:
    raw = data.get(key, {})
    if not isinstance(raw, dict):
        p.add((key,), "expected a table")
        return None
    return build_config(cls, raw, (key,), p)


def _tables(data: Mapping[str, Any], key: str, p: Problems) -> dict[str, dict[str, Any]]:
    raw = data.get(key, {})
    if not isinstance(raw, dict):
        p.add((key,), f"expected tables like [{key}.NAME]")
        return {}
    out = {}
    for name, table in raw.items():
        if not isinstance(table, dict):
            p.add((key, name), f"expected a table [{key}.{name}]")
        else:
            out[name] = table
    return out


def _load(registry: Registry, kind: str, type_: str, path: tuple[str, ...], p: Problems) -> Any:
    if not registry.has(kind, type_):
        known = registry.types(kind)
        p.add(path, f"unknown {kind} type {type_!r}{suggest(type_, known)}; known: {', '.join(known) or 'none'}")
        return None
    try:
        return registry.load(kind, type_)
    except RegistryError as exc:
        p.add(path, str(exc))
        return None


def _actor(
    registry: Registry, section: str, kind: str, name: str, raw: dict[str, Any], p: Problems
) -> ActorSpec | None:
    path = (section, name)
    type_ = raw.get("type")
    if not isinstance(type_, str):
        p.add((*path, "type"), f"missing required key (the {kind} type)")
        return None
    if kind == "source" and "inputs" in raw:
        p.add((*path, "inputs"), "a source takes no inputs")
        raw = {k: v for k, v in raw.items() if k != "inputs"}
    cls = _load(registry, kind, type_, (*path, "type"), p)
    keys_cls = _COMMON[kind]
    common_names = [f.name for f in dataclasses.fields(keys_cls)]  # type: ignore[arg-type]
    common_raw = {k: v for k, v in raw.items() if k in common_names}
    actor_raw = {k: v for k, v in raw.items() if k not in common_names}
    common = build_config(keys_cls, common_raw, path, p)
    config = None
    if cls is not None:
        config = build_config(cls.Config, actor_raw, path, p, ignore=_SINK_KEYS)
    if common is None or config is None:
        return None
    c: Any = common
    return ActorSpec(
        name=name,
        kind=kind,
        type=type_,
        cls=cls,
        config=config,
        inputs=list(getattr(c, "inputs", [])),
        mailbox=getattr(c, "mailbox", 256),
        overflow=getattr(c, "overflow", "block"),
        restart=c.restart,
        dead_letter=c.dead_letter,
        buffer=getattr(c, "buffer", None),
        raw=dict(raw),
    )


@dataclass
class _Node:
    """What the graph checks need of an actor, read from its raw table even when its keys are wrong."""

    name: str
    kind: str
    inputs: list[str]
    dead_letter: str | None


def _graph_nodes(data: Mapping[str, Any]) -> dict[str, _Node]:
    nodes: dict[str, _Node] = {}
    for section, kind in SECTIONS.items():
        tables = data.get(section)
        if not isinstance(tables, dict):
            continue
        for name, raw in tables.items():
            if not isinstance(raw, dict) or name in nodes:
                continue
            inputs = raw.get("inputs", [])
            inputs = [i for i in inputs if isinstance(i, str)] if isinstance(inputs, list) and kind != "source" else []
            dl = raw.get("dead_letter")
            nodes[name] = _Node(name, kind, inputs, dl if isinstance(dl, str) else None)
    return nodes


def _check_graph(data: Mapping[str, Any], actors: dict[str, ActorSpec], p: Problems) -> None:
    """Wiring problems, checked on every actor table, including those whose own keys are wrong, so a
    typo in one actor neither hides its unknown inputs nor makes its feeder look unread."""
    nodes = _graph_nodes(data)
    sinks = {n for n, a in nodes.items() if a.kind == "sink"}
    dead_letter_targets = {a.dead_letter for a in nodes.values() if a.dead_letter}
    for a in nodes.values():
        section = a.kind + "s"
        for i, inp in enumerate(a.inputs):
            where = (section, a.name, "inputs", str(i))
            if inp == a.name:
                p.add(where, "an actor cannot read its own output")
            elif inp not in nodes:
                p.add(where, f"unknown input {inp!r}{suggest(inp, sorted(set(nodes) - sinks))}")
            elif inp in sinks:
                p.add(where, f"{inp!r} is a sink; sinks produce nothing to read")
        if a.kind == "operator" and not a.inputs and a.name in actors:
            p.add((section, a.name, "inputs"), "an operator needs at least one input")
        if a.kind == "sink" and not a.inputs and a.name not in dead_letter_targets and a.name in actors:
            p.add((section, a.name, "inputs"), "a sink needs at least one input (or to be a dead_letter target)")
        if a.dead_letter is not None:
            if a.dead_letter not in sinks:
                hint = suggest(a.dead_letter, sorted(sinks))
                p.add((section, a.name, "dead_letter"), f"dead_letter must name a sink{hint}")
            elif a.dead_letter == a.name:
                p.add((section, a.name, "dead_letter"), "a sink cannot be its own dead-letter destination")
        if a.kind != "sink" and not any(a.name in b.inputs for b in nodes.values()):
            p.add((section, a.name), f"nothing reads {a.name!r}: add it to some actor's inputs, or remove it")
    _check_cycles(nodes, p)


def _check_cycles(actors: dict[str, _Node], p: Problems) -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for inp in actors[n].inputs:
            if inp not in actors:
                continue
            if state.get(inp) == 1:
                cycle = [*stack[stack.index(inp) :], inp]
                a = actors[n]
                p.add((a.kind + "s", n, "inputs"), "cycle: " + " -> ".join(reversed(cycle)))
            elif inp not in state:
                visit(inp)
        stack.pop()
        state[n] = 2

    for n in actors:
        if n not in state:
            visit(n)
