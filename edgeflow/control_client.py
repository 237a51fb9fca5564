"""`edgeflow ctl`: the operator's client for the MQTT control plane.

    edgeflow ctl --broker mqtt://broker:1883 --key-file ops.key --node gw-17 actor.restart temps
    edgeflow ctl --node gw-17 topology.apply new.toml settle=10
    edgeflow ctl --all status --expect 20

One command per run: connect with a fresh, clean session, subscribe to a reply topic of our own,
publish the (signed) command once, collect replies until the timeout, or until the one node, or
`--expect` nodes, answered. Output is readable by default and JSON with `--json`. Exit codes: 0 every
reply ok, 1 an error reply (or `topology.validate` found problems), 2 a usage error (bad arguments,
unreadable key file), 3 no reply in time (or fewer than `--expect`, or no broker).

`ControlClient` is the same thing as a library, for scripts and tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .control.protocol import BROADCAST, command_body, command_topic, read_key_file, reply_filter

if TYPE_CHECKING:
    from .mqtt import InMessage, MqttConnection, MqttSettings

__all__ = ["ControlClient", "Reply", "add_arguments", "run_ctl"]

DEFAULT_BROKER = "mqtt://127.0.0.1:1883"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NO_REPLY = 0, 1, 2, 3


@dataclass
class Reply:
    """One node's answer: the reply document and the round trip it took."""

    doc: dict[str, Any]
    rtt: float  # seconds from publishing the command to receiving this reply

    @property
    def node(self) -> str:
        return str(self.doc.get("node", "?"))

    @property
    def ok(self) -> bool:
        return self.doc.get("ok") is True


class ControlClient:
    """Sends commands and collects replies over one MQTT connection. Use as `async with`."""

    def __init__(self, settings: MqttSettings, *, prefix: str = "edgeflow", key: bytes | None = None) -> None:
        from .mqtt import MqttConnection

        self.settings = settings
        self.prefix = prefix
        self.key = key
        self.client_id = settings.client_id_for("ctl")
        self.reply_topic = reply_filter(prefix, self.client_id)
        self.conn: MqttConnection = MqttConnection("ctl", settings)
        self._replies: asyncio.Queue[tuple[float, InMessage]] = asyncio.Queue()
        self._counter = 0

    @staticmethod
    def settings_for(url: str, **options: Any) -> MqttSettings:
        """Settings for a short-lived client: a random client id, a clean session that ends with us."""
        from .mqtt import MqttSettings

        options.setdefault("client_id", f"edgeflow-ctl-{secrets.token_hex(4)}")
        return MqttSettings(url=url, clean_start=True, session_expiry=0, backoff_max=1.0, **options)

    async def start(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - a bound on two waits
        """Connect and subscribe to our reply topic; `NotReady` says why not within `timeout`."""
        await self.conn.start()
        await self.conn.wait_connected(timeout)
        sub = self.conn.subscribe(self.reply_topic, 1, self._on_replies)
        await sub.wait_active(timeout)

    async def stop(self) -> None:
        await self.conn.stop()

    async def __aenter__(self) -> ControlClient:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _on_replies(self, batch: list[InMessage]) -> None:
        now = time.perf_counter()
        for msg in batch:
            self._replies.put_nowait((now, msg))
            msg.ack()

    def body(self, target: str, verb: str, args: dict[str, Any], ident: str) -> dict[str, Any]:
        return command_body(verb, target, args, key=self.key, ident=ident, reply_to=self.reply_topic)

    async def command(
        self,
        target: str,
        verb: str,
        args: dict[str, Any] | None = None,
        *,
        timeout: float = 10.0,  # noqa: ASYNC109 - how long replies are collected
        expect: int | None = 1,
    ) -> list[Reply]:
        """Send `verb` to `target` (a node id, or `all`) and return the replies, first come first.

        Returns once `expect` distinct nodes replied (None: wait the whole `timeout`), or at the timeout.
        """
        self._counter += 1
        ident = f"{self.client_id}-{self._counter}"
        return await self.request(target, verb, self.body(target, verb, args or {}, ident), timeout, expect)

    async def request(
        self,
        target: str,
        verb: str,
        body: dict[str, Any] | bytes,
        timeout: float,  # noqa: ASYNC109 - how long replies are collected
        expect: int | None = 1,
    ) -> list[Reply]:
        """Publish a ready-made `body` (tests use it for tampered commands) and collect its replies."""
        ident = body.get("id") if isinstance(body, dict) else None
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        properties: dict[str, Any] | None = None
        if self.settings.protocol == 5:
            properties = {"response_topic": self.reply_topic, "content_type": "application/json"}
            if ident is not None:
                properties["correlation_data"] = str(ident).encode()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sent = time.perf_counter()
        await self.conn.publish(command_topic(self.prefix, target, verb), payload, qos=0, properties=properties)
        replies: dict[str, Reply] = {}
        while expect is None or len(replies) < expect:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    arrived, msg = await self._replies.get()
            except TimeoutError:
                break
            try:
                doc = json.loads(msg.payload)
            except ValueError:
                continue
            if not isinstance(doc, dict) or not _matches(doc, msg, ident):
                continue  # a late reply to an earlier command of ours
            replies.setdefault(str(doc.get("node")), Reply(doc, arrived - sent))
        return list(replies.values())


def _matches(doc: dict[str, Any], msg: InMessage, ident: Any) -> bool:
    if ident is None:
        return True
    if doc.get("id") == ident:
        return True
    correlation = (msg.properties or {}).get("correlation_data")
    return correlation is not None and correlation == str(ident).encode()


# -- the command line ----------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The `edgeflow ctl` options (called by `edgeflow.cli` when it builds its parser)."""
    env = os.environ.get
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--node", help="the node to command (its node.id)")
    who.add_argument("--all", action="store_true", help="every node listening under the prefix (a sweep)")
    p.add_argument(
        "--broker",
        default=env("EDGEFLOW_BROKER", DEFAULT_BROKER),
        help="broker URL (default: $EDGEFLOW_BROKER or %(default)s)",
    )
    p.add_argument(
        "--prefix", default=env("EDGEFLOW_PREFIX", "edgeflow"), help="the control.prefix (default: %(default)s)"
    )
    p.add_argument(
        "--key-file",
        default=env("EDGEFLOW_CONTROL_KEY_FILE"),
        help="sign with this key (default: $EDGEFLOW_CONTROL_KEY_FILE)",
    )
    p.add_argument("--username", help="broker user name")
    p.add_argument("--password-file", help="file holding the broker password")
    p.add_argument("--ca-file", help="CA certificates to verify the broker (mqtts://)")
    p.add_argument("--cert-file", help="client certificate (mqtts://)")
    p.add_argument("--cert-key-file", help="the client certificate's key (mqtts://)")
    p.add_argument("--mqtt-version", choices=["5", "3.1.1"], default="5", help="protocol (default: 5)")
    p.add_argument("--timeout", type=float, help="seconds to wait for replies (default: 10; --all: 5)")
    p.add_argument("--expect", type=int, help="--all: stop waiting once this many nodes replied")
    p.add_argument("--args", dest="json_args", help="the args as a JSON object (merged with KEY=VALUE)")
    p.add_argument("--json", action="store_true", help="print the replies as JSON")
    p.add_argument(
        "verb",
        help="ping, status, metrics, actor.stop|start|restart NAME, topology.get, topology.validate FILE, "
        "topology.apply FILE, log.level LEVEL",
    )
    p.add_argument("params", nargs="*", metavar="ARGS", help="the verb's arguments, positional or KEY=VALUE")


def run_ctl(args: argparse.Namespace) -> int:
    """`edgeflow ctl`: parse, send, print; returns the exit code."""
    try:
        cmd_args = _command_args(args.verb, args.params, args.json_args)
        key = read_key_file(args.key_file) if args.key_file else None
        settings = _settings(args)
    except OSError as exc:
        print(f"edgeflow ctl: cannot read {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"edgeflow ctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.expect is not None and not args.all:
        print("edgeflow ctl: --expect goes with --all", file=sys.stderr)
        return EXIT_USAGE
    timeout = args.timeout
    if timeout is None:
        timeout = 5.0 if args.all else 10.0
        if args.verb == "topology.apply":
            timeout = float(cmd_args.get("settle", 5.0)) + 15.0
    target = BROADCAST if args.all else args.node
    expect = args.expect if args.all else 1
    # The connection's retry warnings would repeat what the one line below says about an unreachable broker.
    logging.getLogger("edgeflow.mqtt").setLevel(logging.ERROR)
    started = time.perf_counter()
    result = asyncio.run(_send(settings, args.prefix, key, target, args.verb, cmd_args, timeout, expect))
    if isinstance(result, str):
        print(f"edgeflow ctl: {result}", file=sys.stderr)
        return EXIT_NO_REPLY
    return _report(args, result, time.perf_counter() - started)


async def _send(
    settings: MqttSettings,
    prefix: str,
    key: bytes | None,
    target: str,
    verb: str,
    cmd_args: dict[str, Any],
    timeout: float,  # noqa: ASYNC109 - how long replies are collected
    expect: int | None,
) -> list[Reply] | str:
    from .errors import EdgeflowError

    client = ControlClient(settings, prefix=prefix, key=key)
    try:
        await client.start(timeout=min(timeout, 10.0))
        return await client.command(target, verb, cmd_args, timeout=timeout, expect=expect)
    except EdgeflowError as exc:
        return f"cannot reach the broker: {exc}"
    finally:
        await client.stop()


def _settings(args: argparse.Namespace) -> MqttSettings:
    options: dict[str, Any] = {"protocol": 5 if args.mqtt_version == "5" else 4}
    for option, key in (
        ("username", "username"),
        ("password_file", "password_file"),
        ("ca_file", "ca_file"),
        ("cert_file", "cert_file"),
        ("cert_key_file", "key_file"),
    ):
        value = getattr(args, option)
        if value is not None:
            options[key] = value
    return ControlClient.settings_for(args.broker, **options)


_POSITIONAL = {
    "actor.stop": ("name",),
    "actor.start": ("name",),
    "actor.restart": ("name",),
    "log.level": ("level", "logger"),
    "topology.validate": ("file",),
    "topology.apply": ("file",),
}


def _command_args(verb: str, params: list[str], json_args: str | None) -> dict[str, Any]:
    """The args object from `--args`, positional ARGS (by verb) and KEY=VALUE (values parsed as JSON)."""
    out: dict[str, Any] = {}
    if json_args:
        try:
            parsed = json.loads(json_args)
        except ValueError as exc:
            raise ValueError(f"--args is not JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ValueError("--args must be a JSON object")
        out.update(parsed)
    names = list(_POSITIONAL.get(verb, ()))
    for param in params:
        key, eq, value = param.partition("=")
        if eq and key.isidentifier():
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
        elif names:
            out[names.pop(0)] = param
        else:
            raise ValueError(f"{verb} takes no more positional arguments (got {param!r}; use KEY=VALUE)")
    if "file" in out and verb.startswith("topology."):
        path = str(out.pop("file"))
        out["text"] = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    return out


# -- output --------------------------------------------------------------------------------------


def _report(args: argparse.Namespace, replies: list[Reply], elapsed: float) -> int:
    verb = args.verb
    if args.json:
        docs = [{**r.doc, "rtt_ms": round(r.rtt * 1000, 2)} for r in replies]
        print(json.dumps(docs if args.all else (docs[0] if docs else None), indent=2))
    elif args.all:
        _print_sweep(verb, replies)
        expected = f" of {args.expect} expected" if args.expect is not None else ""
        print(f"{len(replies)}{expected} nodes answered in {elapsed:.2f}s")
    elif replies:
        _print_one(verb, replies[0])
    if not replies:
        if not args.json:
            print(
                f"edgeflow ctl: no reply from {'any node' if args.all else args.node} within the timeout",
                file=sys.stderr,
            )
        return EXIT_NO_REPLY
    if any(not r.ok or _invalid(verb, r) for r in replies):
        return EXIT_ERROR
    if args.all and args.expect is not None and len(replies) < args.expect:
        return EXIT_NO_REPLY
    return EXIT_OK


def _invalid(verb: str, reply: Reply) -> bool:
    result = reply.doc.get("result")
    return verb == "topology.validate" and isinstance(result, dict) and result.get("valid") is False


def _print_one(verb: str, reply: Reply) -> None:
    doc, node = reply.doc, reply.node
    if not reply.ok:
        print(f"{node}: error: {doc.get('error')}", file=sys.stderr)
        details = doc.get("details") or {}
        for problem in details.get("problems", []) if isinstance(details, dict) else []:
            print(f"  {problem.get('text', problem)}", file=sys.stderr)
        return
    result = doc.get("result")
    if verb == "status" and isinstance(result, dict):
        _print_status(result)
    elif verb == "metrics" and isinstance(result, dict):
        _print_metrics(result)
    elif verb == "topology.get" and isinstance(result, dict):
        sys.stdout.write(str(result.get("text", "")))
    else:
        print(f"{node}: {_summary(verb, result)} ({reply.rtt * 1000:.1f} ms)")
        if verb == "topology.validate" and isinstance(result, dict):
            for problem in result.get("problems", []):
                print(f"  {problem.get('text', problem)}")
        if isinstance(result, dict):
            for warning in result.get("warnings", []):
                print(f"  warning: {warning}")


def _summary(verb: str, result: Any) -> str:
    if not isinstance(result, dict):
        return json.dumps(result)
    if verb == "ping":
        return f"pong, edgeflow {result.get('version')}, {result.get('state')}, up {_duration(result.get('uptime_s'))}"
    if verb.startswith("actor."):
        return str(result.get("done"))
    if verb == "log.level":
        return f"log level of {result.get('logger')}: {result.get('previous')} -> {result.get('level')}"
    if verb == "topology.validate":
        n = len(result.get("problems", []))
        return "valid" if result.get("valid") else f"invalid: {n} problem{'s' if n != 1 else ''}"
    if verb == "topology.apply":
        keys = ("added", "changed", "removed", "connections")
        parts = [
            f"{k}: {', '.join(result.get(k) or []) or 'none'}" for k in keys if k != "connections" or result.get(k)
        ]
        return f"applied ({'; '.join(parts)}) after settling {result.get('settled_s')}s"
    if verb == "topology.get":
        return f"{result.get('file')} sha256 {str(result.get('sha256'))[:12]}"
    if verb == "status":
        return f"{result.get('state')}, up {_duration(result.get('uptime_s'))}"
    return json.dumps(result)


def _print_status(doc: dict[str, Any]) -> None:
    up = _duration(doc.get("uptime_s"))
    print(f"node {doc.get('node')}  {doc.get('state')}  up {up}  edgeflow {doc.get('version')}")
    print(f"topology {doc.get('topology')}  reloads {doc.get('reloads', 0)}")
    print(
        f"{'actor':<16} {'kind':<9} {'state':<12} {'in':>10} {'out':>10} {'dropped':>8} {'failed':>7} "
        f"{'restarts':>8} {'buffered':>9}"
    )
    for name, a in (doc.get("actors") or {}).items():
        buffered = (a.get("buffer") or {}).get("messages", "-")
        print(
            f"{name:<16} {a.get('kind', '?'):<9} {a.get('state', '?'):<12} {a.get('in', 0):>10} {a.get('out', 0):>10} "
            f"{a.get('dropped', 0):>8} {a.get('failed', 0):>7} {a.get('restarts', 0):>8} {buffered!s:>9}"
        )
    for name, conn in (doc.get("connections") or {}).items():
        error = conn.get("last_error")
        print(f"connection {name}: {conn.get('state', '?')}" + (f" (last error: {error})" if error else ""))


def _print_metrics(doc: dict[str, Any]) -> None:
    print(f"node {doc.get('node')}  {doc.get('runtime')}  up {_duration(doc.get('uptime_s'))}")
    print(f"{'actor':<16} {'in':>10} {'out':>10} {'dropped':>8} {'failed':>7} {'restarts':>8} {'latency_us':>10}")
    for name, a in (doc.get("actors") or {}).items():
        print(
            f"{name:<16} {a.get('in', 0):>10} {a.get('out', 0):>10} {a.get('dropped', 0):>8} {a.get('failed', 0):>7} "
            f"{a.get('restarts', 0):>8} {a.get('latency_us', 0):>10}"
        )
    for name, conn in (doc.get("connections") or {}).items():
        print(
            f"connection {name}: {conn.get('state', '?')}, in {conn.get('messages_in')}, out {conn.get('messages_out')}"
        )


def _print_sweep(verb: str, replies: list[Reply]) -> None:
    replies = sorted(replies, key=lambda r: r.node)
    if verb != "status":
        for r in replies:
            text = _summary(verb, r.doc.get("result")) if r.ok else f"error: {r.doc.get('error')}"
            print(f"{r.node:<20} {text}")
        return
    print(f"{'node':<20} {'state':<10} {'uptime':>9} {'actors':>8} {'buffered':>9} {'rtt_ms':>8}")
    for r in replies:
        if not r.ok:
            print(f"{r.node:<20} error: {r.doc.get('error')}")
            continue
        s = r.doc.get("result") or {}
        actors = s.get("actors") or {}
        running = sum(1 for a in actors.values() if a.get("state") == "running")
        buffered = sum((a.get("buffer") or {}).get("messages", 0) for a in actors.values())
        print(
            f"{r.node:<20} {s.get('state', '?'):<10} {_duration(s.get('uptime_s')):>9} {f'{running}/{len(actors)}':>8} "
            f"{buffered:>9} {r.rtt * 1000:>8.1f}"
        )


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.0f}s" if s else f"{seconds:.1f}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"
