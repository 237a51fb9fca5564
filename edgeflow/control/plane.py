"""The control plane: a node's presence, status and metrics on MQTT, and the commands it obeys.

Started by the runtime when the topology has a `[control]` table, once the actors have started, on
the MQTT connection it names (shared with the actors that use it); stopped first at shutdown.

- Presence: before the connection starts, `set_presence` gives it a retained last will
  `{"state": "offline"}` and a birth `{"state": "online"}` on `<prefix>/<node>/status`. Once the
  command subscriptions are active, the full status document (`documents.status_document`) replaces
  the birth, and is published again when an actor or the runtime changes state, after every
  reconnect (the birth overwrote it) and every `metrics_interval`.
- Metrics: `<prefix>/<node>/metrics` every `metrics_interval`.
- Commands: `<prefix>/<node>/cmd/<verb>` and `<prefix>/all/cmd/<verb>`, subscribed at QoS 0 so that
  the broker does not queue them while the node is away: a command either reaches a connected node
  or gets no reply, never runs hours later. Each runs in its own task (at most `MAX_PENDING` at
  once), is checked by `auth.Verifier`, carried out by `verbs.Verbs`, and answered on the reply
  topic; nothing a command does can raise out of its task.

A reload that replaces the control connection (its settings changed) is followed: the plane
subscribes again on the new one. A reload that changes the key takes effect for the next command;
a changed `prefix` or `connection` name takes effect at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

from ..errors import EdgeflowError
from .apply import CommandError, TopologyFiles
from .auth import Refused, Verifier
from .documents import metrics_document, offline_document, online_document, status_document, to_json
from .protocol import BROADCAST, command_topic, metrics_topic, status_topic, topic_safe
from .verbs import VERBS, Verbs

if TYPE_CHECKING:
    from ..runtime import Runtime
    from ..topology import ControlConfig

__all__ = ["ControlPlane", "set_presence"]

log = logging.getLogger("edgeflow.control")

MAX_PENDING = 32  # commands carried out at once; more are dropped (logged), the sender times out
TICK = 1.0  # how often states are compared for a status update
STARTUP_WAIT = 30.0  # the longest the plane waits for actors' first start before it comes up anyway
PUBLISH_TIMEOUT = 10.0
READ_ONLY = frozenset({"ping", "status", "metrics", "topology.get", "topology.validate"})


def set_presence(connection: Any, config: ControlConfig, node_id: str, started_at: float) -> None:
    """Give the control connection its last will (offline) and birth (online). Before `start()` only."""
    from ..mqtt.settings import Will

    setter = getattr(connection, "set_presence", None)
    if setter is None:
        log.warning("control: connection %r cannot announce presence (no set_presence)", config.connection)
        return
    topic = status_topic(config.prefix, node_id)
    will = Will(topic, to_json(offline_document(node_id)), qos=1, retain=True)
    birth = Will(topic, to_json(online_document(node_id, started_at)), qos=1, retain=True)
    setter(will, birth)


class ControlPlane:
    """One node's control plane. `run()` it as a task; cancel the task to stop it."""

    def __init__(self, runtime: Runtime, config: ControlConfig, connection: Any) -> None:
        self.runtime = runtime
        self.config = config
        self.node = runtime.node_id
        self.prefix = config.prefix
        self._holder = connection
        self._mqtt: Any = None  # the MqttConnection the subscriptions live on
        self._subs: list[Any] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._key_text: str | None = None
        self._key_adopted = False
        self._key_problem: str | None = None
        self.verifier = Verifier(None)
        self._adopt_key(config)
        self.files = TopologyFiles(runtime, config.connection, after_reload=self._follow)
        self.verbs = Verbs(runtime, self.files)
        self.commands = 0
        self.refused = 0
        self.dropped = 0
        self._last_drop_log = 0.0

    # -- lifetime --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Come up once the actors made their first start, then publish and obey until cancelled."""
        if (
            not topic_safe(self.node)
            or self.node == BROADCAST
            or not self.prefix
            or any(c in self.prefix for c in "+#\0")
        ):
            log.error(
                "control: node id %r or prefix %r cannot be used in topics (no '/', '+', '#'; not 'all'); "
                "the control plane is off",
                self.node,
                self.prefix,
            )
            return
        cells = list(self.runtime.cells.values())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STARTUP_WAIT):
                await asyncio.gather(*(c.attempted.wait() for c in cells))
        if self._key_problem is not None:
            log.error("control: %s; every command will be refused", self._key_problem)
        elif self.verifier.key is None:
            log.warning(
                "control: unauthenticated: anyone who can publish to %s/%s/cmd/... can steer this node "
                "(set control.hmac_key_file)",
                self.prefix,
                self.node,
            )
        loop = asyncio.get_running_loop()
        last_shape: Any = None
        next_status = next_metrics = 0.0
        failure: str | None = None
        try:
            while True:
                ready = False
                try:
                    mqtt = self._follow()
                    now = loop.time()
                    ready = mqtt is not None and mqtt.connected and all(s.active for s in self._subs)
                    if ready:
                        shape = self._shape(mqtt)
                        if (shape != last_shape or now >= next_status) and await self._publish_status(mqtt):
                            last_shape, next_status = shape, now + self._interval()
                        if now >= next_metrics:
                            await self._publish_metrics(mqtt)
                            next_metrics = now + self._interval()
                    failure = None
                except Exception as exc:  # a bug: keep the plane (and the commands) up, say it once
                    text = f"{type(exc).__name__}: {exc}"
                    if text != failure:
                        log.error("control: status publishing failed: %s", text, exc_info=exc)
                    failure = text
                await asyncio.sleep(TICK if ready else 0.05)
        finally:
            for sub in self._subs:
                sub.close(unsubscribe=True)
            self._subs = []
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _resolve(self) -> Any:
        """The MQTT connection under the control connection's name now (a reload may replace it)."""
        holder = self.runtime.connections.get(self.config.connection, self._holder)
        return getattr(holder, "conn", holder)

    def _follow(self) -> Any:
        """The current MQTT connection, subscribed to: after a reload replaced it, subscribe on the new one.

        Called every tick, before every reply, and by `TopologyFiles` right after its reloads, so that
        commands that follow an apply which replaced the connection are not lost in between.
        """
        mqtt = self._resolve()
        if mqtt is not self._mqtt:
            self._attach(mqtt)
        return mqtt

    def _attach(self, mqtt: Any) -> None:
        for sub in self._subs:
            sub.close()
        self._subs = []
        self._mqtt = mqtt
        if mqtt is None:
            return
        if not hasattr(mqtt, "subscribe"):
            log.error(
                "control: connection %r is not an MQTT connection; the control plane is off", self.config.connection
            )
            return
        for target in (self.node, BROADCAST):
            self._subs.append(mqtt.subscribe(command_topic(self.prefix, target, "+"), 0, self._on_commands))

    def _shape(self, mqtt: Any) -> Any:
        """What, when it changes, calls for a new status document."""
        rt = self.runtime
        return (
            rt.state,
            rt.reloads,
            tuple((name, cell.state) for name, cell in rt.cells.items()),
            len(rt.retiring),
            mqtt.metrics.get("connects"),
        )

    def _interval(self) -> float:
        control = self.runtime.topology.control
        return float((control or self.config).metrics_interval)

    # -- publishing ------------------------------------------------------------------------------

    async def _publish_status(self, mqtt: Any) -> bool:
        doc = status_document(self.runtime, self.verifier.key is not None)
        return await self._publish(mqtt, status_topic(self.prefix, self.node), to_json(doc), qos=1, retain=True)

    async def _publish_metrics(self, mqtt: Any) -> bool:
        doc = metrics_document(self.runtime)
        doc["control"] = {"commands": self.commands, "refused": self.refused, "dropped": self.dropped}
        return await self._publish(mqtt, metrics_topic(self.prefix, self.node), to_json(doc, self._secrets()), qos=0)

    async def _publish(
        self, mqtt: Any, topic: str, payload: bytes, *, qos: int, retain: bool = False, properties: Any = None
    ) -> bool:
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                await mqtt.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        except (TimeoutError, EdgeflowError, ValueError) as exc:
            log.warning("control: could not publish on %s: %s", topic, exc or type(exc).__name__)
            return False
        except Exception as exc:  # a bug in a layer below: logged, never out of a command's task
            log.error("control: publishing on %s failed: %s: %s", topic, type(exc).__name__, exc, exc_info=exc)
            return False
        return True

    # -- commands --------------------------------------------------------------------------------

    def _on_commands(self, batch: list[Any]) -> None:
        """The subscription's handler (on the loop, must not block): one task per command."""
        loop = asyncio.get_running_loop()
        for msg in batch:
            if len(self._tasks) >= MAX_PENDING:
                self.dropped += 1
                if time.monotonic() - self._last_drop_log > 10:
                    self._last_drop_log = time.monotonic()
                    log.warning(
                        "control: more than %d commands at once; dropping (%d so far)", MAX_PENDING, self.dropped
                    )
                continue
            task = loop.create_task(self._command(msg), name=f"edgeflow.control[{msg.topic}]")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _command(self, msg: Any) -> None:
        """Check, carry out and answer one command. Never raises (but for cancellation)."""
        started = time.perf_counter()
        verb = msg.topic.rsplit("/", 1)[-1]
        shown = verb if verb in VERBS else repr(verb[:64])  # a topic level may hold anything, newlines too
        target = BROADCAST if msg.topic.startswith(f"{self.prefix}/{BROADCAST}/cmd/") else self.node
        props = msg.properties or {}
        reply_to: Any = props.get("response_topic")
        correlation = props.get("correlation_data")
        reply: dict[str, Any] = {"node": self.node, "verb": verb}
        try:
            try:
                body = json.loads(msg.payload)
            except (ValueError, UnicodeDecodeError):
                raise Refused("the command body is not JSON") from None
            if not isinstance(body, dict):
                raise Refused("the command body must be a JSON object")
            ident = body.get("id")
            if isinstance(ident, str | int) and not isinstance(ident, bool) and len(str(ident)) <= 128:
                reply["id"] = ident
            reply_to = reply_to or body.get("reply_to")
            self._adopt_key(self.runtime.topology.control)
            if self._key_problem is not None:
                raise Refused(self._key_problem)
            args = self.verifier.check(verb, target, body)
        except Refused as exc:
            self.refused += 1
            log.warning("control: refused %s%s: %s", shown, " to all" if target == BROADCAST else "", exc)
            reply.update(ok=False, error=f"refused: {exc}")
        else:
            self.commands += 1
            log.info("control: %s%s%s", shown, " to all" if target == BROADCAST else "", _brief(args))
            try:
                reply.update(ok=True, result=await self.verbs.run(verb, args))
            except CommandError as exc:
                log.warning("control: %s failed: %s", shown, exc)
                reply.update(ok=False, error=str(exc))
                if exc.details is not None:
                    reply["details"] = exc.details
            except Exception as exc:  # a bug: say so in the reply and the log, keep the plane up
                log.error("control: %s raised %s: %s", shown, type(exc).__name__, exc, exc_info=exc)
                reply.update(ok=False, error=f"internal error: {type(exc).__name__}: {exc}")
        reply["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 2)
        await self._reply(reply_to, correlation, reply)

    async def _reply(self, topic: Any, correlation: Any, reply: dict[str, Any]) -> None:
        if topic is None:
            log.debug("control: %s came without a reply topic; not answered", reply["verb"])
            return
        own = (f"{self.prefix}/{self.node}/", f"{self.prefix}/{BROADCAST}/")
        if (
            not isinstance(topic, str)
            or not topic
            or len(topic) > 1024
            or topic.startswith(("$", *own))
            or any(c in topic for c in "+#\0")
        ):
            log.warning("control: not answering %s on reply topic %r (invalid or our own)", reply["verb"], topic)
            return
        mqtt = self._follow()
        properties: dict[str, Any] | None = None
        if getattr(getattr(mqtt, "settings", None), "protocol", 5) == 5:
            properties = {"content_type": "application/json"}
            if isinstance(correlation, bytes | str):
                properties["correlation_data"] = correlation
        # A lost answer to a question can be asked again; a lost answer to a change leaves the operator
        # guessing, so it goes at QoS 1 (the broker's PUBACK may then delay the node's next command by
        # a delayed-ACK time, ~40 ms, under Nagle: fine for changes, not for sweeps and pings).
        qos = 0 if reply["verb"] in READ_ONLY else 1
        await self._publish(mqtt, topic, to_json(reply, self._secrets()), qos=qos, properties=properties)

    # -- the key ---------------------------------------------------------------------------------

    def _adopt_key(self, control: ControlConfig | None) -> None:
        """Use the key of the running topology's `[control]` (a reload may have changed it).

        A topology without `[control]` (a SIGHUP reload of such a file) keeps the key in use: losing
        the table must not turn authentication off.
        """
        if control is None or (self._key_adopted and control.hmac_key_file == self._key_text):
            return
        self._key_adopted = True
        text = control.hmac_key_file
        if text is not None and self._key_text is not None and text != self._key_text:
            log.warning("control: the key changed with the topology; commands must be signed with the new key")
        self._key_text = text
        self._key_problem = None
        self.verifier.key = None
        if text is not None and not text.strip():
            self._key_problem = "control.hmac_key_file is empty"
        elif text is not None:
            self.verifier.key = text.encode()

    def _secrets(self) -> list[str]:
        return [self._key_text] if self._key_text else []


def _brief(args: dict[str, Any]) -> str:
    """What a log line may say about args: short plain values, and only the names of the rest."""
    if not args:
        return ""
    parts = []
    for key, value in sorted(args.items()):
        if key in ("name", "level", "logger", "settle", "force") and len(str(value)) <= 64:
            parts.append(f"{key}={value}")
        else:
            parts.append(key)
    return " (" + ", ".join(parts) + ")"
