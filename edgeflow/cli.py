"""The `edgeflow` command: run, validate, graph, actors, status, ctl.

Exit codes: 0 success, 1 the runtime failed (restart storm, store unusable), 2 the user's input is
wrong (invalid topology, unknown command), 3 nothing answered (`status` with no runtime running).
Errors that are the user's to fix are printed as plain lines, never as tracebacks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Coroutine
from typing import Any

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgeflow", description="An actor-based edge runtime.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run a topology until its sources finish or SIGTERM")
    p.add_argument("file", help="the topology TOML file")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="override node.log_level")

    p = sub.add_parser("validate", help="check a topology; report every problem with file, line and key")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="problems as JSON")

    p = sub.add_parser("graph", help="print the wiring as Mermaid (default) or DOT")
    p.add_argument("file")
    p.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")

    p = sub.add_parser("actors", help="list the actor types with their keys and defaults")
    p.add_argument("type", nargs="?", help="show one type (e.g. 'filter' or 'sink.file')")
    p.add_argument("--json", action="store_true")

    for command, text in (
        ("status", "show a running runtime's actors and counters"),
        ("buffers", "show a running runtime's persisting sink buffers"),
    ):
        p = sub.add_parser(command, help=text)
        p.add_argument("file", nargs="?", help="the topology it runs (to find its data_dir)")
        p.add_argument("--data-dir", help="the runtime's data directory (default: $EDGEFLOW_DATA_DIR or ./data)")
        p.add_argument("--json", action="store_true")

    p = sub.add_parser("ctl", help="steer runtimes over the MQTT control plane (one node, or the fleet with --all)")
    from .control_client import add_arguments as add_ctl_arguments

    add_ctl_arguments(p)

    args = parser.parse_args(argv)
    if args.version:
        from . import __version__

        print(f"edgeflow {__version__}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    commands = {"run": _run, "validate": _validate, "graph": _graph, "actors": _actors}
    commands.update(status=_status, buffers=_buffers, ctl=_ctl)
    handler = commands[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130


def _load(file: str) -> Any:
    """The topology, or None after printing every problem."""
    from .errors import ConfigError
    from .topology import load_topology

    try:
        return load_topology(file)
    except ConfigError as exc:
        n = len(exc.problems)
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{file}: {n} problem{'s' if n != 1 else ''}", file=sys.stderr)
        return None


def _validate(args: argparse.Namespace) -> int:
    if args.json:
        from dataclasses import asdict

        from .errors import ConfigError
        from .topology import load_topology

        try:
            load_topology(args.file)
        except ConfigError as exc:
            print(json.dumps({"valid": False, "problems": [asdict(p) for p in exc.problems]}, indent=2))
            return 2
        print(json.dumps({"valid": True, "problems": []}))
        return 0
    topo = _load(args.file)
    if topo is None:
        return 2
    kinds = {k: sum(1 for a in topo.actors.values() if a.kind == k) for k in ("source", "operator", "sink")}
    print(f"{args.file}: valid ({kinds['source']} sources, {kinds['operator']} operators, {kinds['sink']} sinks)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from .log import setup_logging

    topo = _load(args.file)
    if topo is None:
        return 2
    setup_logging(args.log_level or topo.node.log_level)
    from .errors import StoreError
    from .runtime import Runtime

    try:
        code = _event_loop_run(Runtime(topo).run())
    except StoreError as exc:
        print(f"edgeflow: {exc}", file=sys.stderr)
        return 1
    return code


def _event_loop_run(main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop where it is installed (faster, less CPU per message), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(main)
    result: int = uvloop.run(main)
    return result


def _graph(args: argparse.Namespace) -> int:
    topo = _load(args.file)
    if topo is None:
        return 2
    from .graph import to_dot, to_mermaid

    print(to_mermaid(topo) if args.format == "mermaid" else to_dot(topo))
    return 0


def _actors(args: argparse.Namespace) -> int:
    from .registry import KINDS, Registry, RegistryError
    from .schema import describe_config

    registry = Registry()
    wanted: tuple[str | None, str | None] = (None, None)
    if args.type:
        kind, _, type_ = args.type.rpartition(".")
        wanted = (kind or None, type_)
    doc: dict[str, Any] = {}
    for kind in KINDS:
        for type_ in registry.types(kind):
            if wanted[1] is not None and (type_ != wanted[1] or (wanted[0] and wanted[0] != kind)):
                continue
            try:
                cls = registry.load(kind, type_)
            except RegistryError as exc:
                doc[f"{kind}.{type_}"] = {"error": str(exc)}
                continue
            summary = (cls.__doc__ or "").strip().splitlines()
            doc[f"{kind}.{type_}"] = {
                "kind": kind,
                "type": type_,
                "summary": summary[0] if summary else "",
                "keys": describe_config(cls.Config),
            }
    if not doc:
        print(f"edgeflow: no actor type {args.type!r}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return 0
    for name, info in doc.items():
        if "error" in info:
            print(f"{name}: {info['error']}")
            continue
        print(f"{name}: {info['summary']}")
        for row in info["keys"]:
            default = "required" if row["required"] else f"default {row['default']!r}"
            print(f"    {row['key']:<16} {row['type']:<22} {default:<24} {row['doc']}")
    return 0


def _query(args: argparse.Namespace) -> dict[str, Any] | int:
    """The status document of the runtime named by the arguments, or an exit code after an error."""
    from .status import query_status, socket_path

    data_dir = args.data_dir
    if data_dir is None and args.file:
        topo = _load(args.file)
        if topo is None:
            return 2
        data_dir = topo.node.data_dir
    if data_dir is None:
        data_dir = os.environ.get("EDGEFLOW_DATA_DIR", "./data")
    path = socket_path(data_dir)
    try:
        return query_status(path)
    except OSError as exc:
        print(f"edgeflow: no runtime answers on {path}: {exc.strerror or exc}", file=sys.stderr)
        return 3


def _status(args: argparse.Namespace) -> int:
    doc = _query(args)
    if isinstance(doc, int):
        return doc
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"node {doc['node']}  {doc['state']}  up {doc['uptime_s']}s  edgeflow {doc['version']}")
    print(f"topology {doc['topology']}  reloads {doc.get('reloads', 0)}")
    columns = ("actor", "kind", "state", "in", "out", "dropped", "failed", "restarts", "mailbox")
    widths = (16, 9, 12, 10, 10, 8, 7, 8, 10)
    rows = []
    for name, a in doc["actors"].items():
        mb = a.get("mailbox")
        depth = f"{mb['depth']}/{mb['capacity']}" if mb else "-"
        dropped = a["dropped"] + (mb["dropped"] if mb else 0)
        rows.append((name, a["kind"], a["state"], a["in"], a["out"], dropped, a["failed"], a["restarts"], depth))
    for row in [columns, *rows]:
        print(" ".join(f"{v:<{w}}" if i < 3 else f"{v:>{w}}" for i, (v, w) in enumerate(zip(row, widths, strict=True))))
    for name, conn in doc.get("connections", {}).items():
        state = conn.get("state", "?")
        error = conn.get("last_error") or (conn.get("metrics") or {}).get("last_error")
        print(f"connection {name}: {state}" + (f" (last error: {error})" if error else ""))
    return 0


def _buffers(args: argparse.Namespace) -> int:
    doc = _query(args)
    if isinstance(doc, int):
        return doc
    buffers = {name: a["buffer"] for name, a in doc["actors"].items() if a.get("buffer")}
    if args.json:
        print(json.dumps(buffers, indent=2))
        return 0
    if not buffers:
        print("no persisting sink buffers in this topology")
        return 0
    columns = ("sink", "messages", "bytes", "oldest_age_s", "delivered", "dropped", "expired", "dead_lettered")
    print(" ".join(f"{c:>13}" if i else f"{c:<16}" for i, c in enumerate(columns)))
    for name, b in buffers.items():
        values = [b[c] if b[c] is not None else "-" for c in columns[1:]]
        print(f"{name:<16} " + " ".join(f"{v!s:>13}" for v in values))
    return 0


def _ctl(args: argparse.Namespace) -> int:
    from .control_client import run_ctl

    return run_ctl(args)


if __name__ == "__main__":
    sys.exit(main())
