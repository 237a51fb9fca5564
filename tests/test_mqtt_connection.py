"""The shared MQTT connection, against a real mosquitto (and, where a broker must misbehave on cue, a
scripted one on a real socket).

Each test starts its own broker on a free loopback port. Waits are on queues, events and the broker's
or our own log lines, each with a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mqtt_broker import MosquittoBroker, TlsFiles, free_port, make_tls

from edgeflow.errors import NotReady, Permanent, Retryable
from edgeflow.mqtt import InMessage, MqttConnection, MqttSettings, Will, parse_broker_url

pytestmark = pytest.mark.timeout(60)

mqtt_only = pytest.mark.mqtt


# --- helpers ------------------------------------------------------------------------------------------


class Inbox:
    """A subscription handler that records batches and queues messages, acknowledging them or not."""

    def __init__(self, ack: bool = True) -> None:
        self.ack = ack
        self.batch_sizes: list[int] = []
        self.queue: asyncio.Queue[InMessage] = asyncio.Queue()

    def __call__(self, batch: list[InMessage]) -> None:
        self.batch_sizes.append(len(batch))
        for m in batch:
            if self.ack:
                m.ack()
            self.queue.put_nowait(m)

    async def take(self, n: int = 1, timeout: float = 10.0) -> list[InMessage]:
        async with asyncio.timeout(timeout):
            return [await self.queue.get() for _ in range(n)]

    async def payloads_until(self, last: bytes, timeout: float = 10.0) -> list[bytes]:
        """Payloads received up to and including `last` (a marker sent after what is being checked)."""
        seen: list[bytes] = []
        async with asyncio.timeout(timeout):
            while not seen or seen[-1] != last:
                seen.append((await self.queue.get()).payload)
        return seen


class LogWatch(logging.Handler):
    """Captures edgeflow.mqtt log records; `wait_for` a message matching a regex, `count` times."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self._changed.set()  # our records are logged on the loop thread

    def matching(self, pattern: str) -> list[logging.LogRecord]:
        return [r for r in self.records if re.search(pattern, r.getMessage())]

    async def wait_for(self, pattern: str, count: int = 1, timeout: float = 10.0) -> list[logging.LogRecord]:
        async with asyncio.timeout(timeout):
            while len(found := self.matching(pattern)) < count:
                self._changed.clear()
                await self._changed.wait()
        return found


@pytest.fixture
def logs() -> Iterator[LogWatch]:
    watch = LogWatch()
    logger = logging.getLogger("edgeflow.mqtt")
    logger.addHandler(watch)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    yield watch
    logger.removeHandler(watch)
    logger.setLevel(old_level)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path) as b:
        yield b


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


def settings(url: str, client_id: str, **options: Any) -> MqttSettings:
    options.setdefault("backoff_initial", 0.05)
    options.setdefault("backoff_max", 0.5)
    return MqttSettings(url=url, client_id=client_id, **options)


@asynccontextmanager
async def connection(url: str, client_id: str, **options: Any) -> AsyncIterator[MqttConnection]:
    """A started connection, connected; stopped on exit."""
    conn = MqttConnection(client_id, settings(url, client_id, **options))
    await conn.start()
    try:
        await conn.wait_connected(10)
        yield conn
    finally:
        await conn.stop()


# --- settings and urls (no broker) ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://broker.local", "broker.local", 1883, False),
        ("mqtts://broker.local", "broker.local", 8883, True),
        ("mqtt://127.0.0.1:1884", "127.0.0.1", 1884, False),
        ("MQTTS://[::1]:9000/", "::1", 9000, True),
    ],
)
def test_broker_url_gives_host_port_and_tls(url: str, host: str, port: int, tls: bool) -> None:
    address = parse_broker_url(url)
    assert (address.host, address.port, address.tls) == (host, port, tls)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://broker", "mqtt:// or mqtts://"),
        ("mqtt://gw:secret@broker", "password_file"),
        ("mqtt://broker:99999", "invalid broker url"),
        ("mqtt://", "no host"),
        ("mqtt://broker/topic", "only scheme, host and port"),
    ],
)
def test_bad_broker_url_is_refused_with_a_reason(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        parse_broker_url(url)


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"protocol": 3}, "protocol must be 5"),
        ({"password": "a", "password_file": "/x"}, "only one of"),
        ({"ca_file": "/ca.pem"}, "needs an mqtts:// url"),
        ({"max_inflight": 0}, "max_inflight"),
        ({"backoff_initial": 5, "backoff_max": 1}, "backoff"),
        ({"protocol": 4, "password": "a"}, "username"),
    ],
)
def test_inconsistent_settings_are_refused_with_a_reason(options: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)):
        MqttSettings(url="mqtt://127.0.0.1", **options)


def test_password_is_not_in_the_settings_repr() -> None:
    assert "hunter2" not in repr(MqttSettings(url="mqtt://h", username="u", password="hunter2"))


# --- pub/sub against mosquitto --------------------------------------------------------------------------


@mqtt_only
@pytest.mark.parametrize("protocol", [4, 5])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_published_message_reaches_a_subscriber(broker: MosquittoBroker, qos: int, protocol: int) -> None:
    async def main() -> None:
        inbox = Inbox()
        async with connection(broker.url, "sub", protocol=protocol) as sub_conn:
            sub = sub_conn.subscribe("plant/temp", qos, inbox)
            await sub.wait_active(5)
            async with connection(broker.url, "pub", protocol=protocol) as pub_conn:
                await pub_conn.publish("plant/temp", b'{"t": 21.5}', qos=qos)
                [m] = await inbox.take()
        assert (m.topic, m.payload, m.qos, m.retain) == ("plant/temp", b'{"t": 21.5}', qos, False)

    asyncio.run(main())


@mqtt_only
def test_wildcard_subscription_gets_matching_topics_only(broker: MosquittoBroker) -> None:
    async def main() -> None:
        inbox = Inbox()
        async with connection(broker.url, "c") as conn:
            await conn.subscribe("plant/+/temp", 1, inbox).wait_active(5)
            for topic in ("plant/a/temp", "plant/a/hum", "other/a/temp", "plant/b/temp", "end/x"):
                await conn.publish(topic, topic.encode(), qos=1)
            await conn.subscribe("end/#", 1, inbox).wait_active(5)
            await conn.publish("end/x", b"end", qos=1)
            seen = await inbox.payloads_until(b"end")
        assert seen == [b"plant/a/temp", b"plant/b/temp", b"end"]

    asyncio.run(main())


@mqtt_only
def test_shared_subscription_splits_messages_between_members(broker: MosquittoBroker) -> None:
    async def main() -> None:
        first, second = Inbox(), Inbox()
        async with connection(broker.url, "m1") as c1, connection(broker.url, "m2") as c2:
            await c1.subscribe("$share/workers/jobs/#", 1, first).wait_active(5)
            await c2.subscribe("$share/workers/jobs/#", 1, second).wait_active(5)
            second.queue = first.queue  # one stream of everything the group received
            await c1.publish_many([(f"jobs/{i}", b"%d" % i) for i in range(20)], qos=1)
            got = await first.take(20)
        assert sorted(int(m.payload) for m in got) == list(range(20))
        assert sum(first.batch_sizes) > 0
        assert sum(second.batch_sizes) > 0

    asyncio.run(main())


@mqtt_only
def test_several_subscriptions_matching_one_message_all_receive_it(broker: MosquittoBroker) -> None:
    async def main() -> None:
        narrow, wide = Inbox(), Inbox()
        async with connection(broker.url, "c") as conn:
            await conn.subscribe("a/b", 1, narrow).wait_active(5)
            await conn.subscribe("a/#", 1, wide).wait_active(5)
            await conn.publish("a/b", b"x", qos=1)
            assert [m.payload for m in await narrow.take()] == [b"x"]
            assert b"x" in [m.payload for m in await wide.take()]

    asyncio.run(main())


@mqtt_only
def test_mqtt5_properties_travel_with_the_message(broker: MosquittoBroker) -> None:
    async def main() -> None:
        inbox = Inbox()
        async with connection(broker.url, "c") as conn:
            await conn.subscribe("p", 1, inbox).wait_active(5)
            props = {
                "content_type": "application/json",
                "message_expiry_interval": 60,
                "user_properties": {"site": "7"},
            }
            await conn.publish("p", b"{}", qos=1, properties=props)
            [m] = await inbox.take()
        assert m.properties is not None
        assert m.properties["content_type"] == "application/json"
        assert 0 < m.properties["message_expiry_interval"] <= 60
        assert m.properties["user_properties"] == [("site", "7")]

    asyncio.run(main())


@mqtt_only
def test_retained_message_is_delivered_to_a_later_subscriber(broker: MosquittoBroker) -> None:
    async def main() -> None:
        inbox = Inbox()
        async with connection(broker.url, "c") as conn:
            await conn.publish("state/door", b"open", qos=1, retain=True)
            await conn.subscribe("state/#", 1, inbox).wait_active(5)
            [m] = await inbox.take()
        assert (m.payload, m.retain) == (b"open", True)

    asyncio.run(main())


# --- manual acknowledgement and persistent sessions -----------------------------------------------------


@mqtt_only
def test_unacknowledged_message_is_redelivered_to_the_next_session_and_acknowledged_one_is_not(
    broker: MosquittoBroker,
) -> None:
    async def main() -> None:
        async with connection(broker.url, "publisher") as pub:
            first = Inbox(ack=False)
            async with connection(broker.url, "reader") as reader:
                await reader.subscribe("in/#", 1, first).wait_active(5)
                await pub.publish("in/1", b"acked", qos=1)
                await pub.publish("in/2", b"not acked", qos=1)
                one, _two = await first.take(2)
                one.ack()  # the PUBACK leaves before stop()'s DISCONNECT, on the same socket
            again = Inbox()
            conn = MqttConnection("reader", settings(broker.url, "reader"))
            conn.subscribe("in/#", 1, again)
            await conn.start()
            try:
                await conn.wait_connected(10)
                await pub.publish("in/3", b"marker", qos=1)
                seen = await again.payloads_until(b"marker")
            finally:
                await conn.stop()
        assert seen == [b"not acked", b"marker"]

    asyncio.run(main())


@mqtt_only
def test_qos2_exchange_left_open_by_an_earlier_session_is_completed(broker: MosquittoBroker) -> None:
    async def main() -> None:
        async with connection(broker.url, "publisher") as pub:
            unacked = Inbox(ack=False)
            async with connection(broker.url, "reader") as reader:
                await reader.subscribe("q2", 2, unacked).wait_active(5)
                await pub.publish("q2", b"exactly once", qos=2)
                await unacked.take()  # delivered on PUBREL; our PUBCOMP never left
            mark = len(broker.log_text().splitlines())
            async with connection(broker.url, "reader"):  # the broker re-sends the PUBREL
                assert await asyncio.to_thread(broker.wait_for_log, r"Received PUBCOMP from reader", 10, mark)

    asyncio.run(main())


@mqtt_only
def test_messages_queued_while_away_arrive_after_a_broker_restart(broker: MosquittoBroker) -> None:
    async def main() -> None:
        async with connection(broker.url, "reader") as reader:
            await reader.subscribe("q/#", 1, Inbox()).wait_active(5)
        async with connection(broker.url, "publisher") as pub:
            for i in range(3):
                await pub.publish(f"q/{i}", b"%d" % i, qos=1)
        broker.stop()  # mosquitto saves the session and its queue
        broker.start()
        inbox = Inbox()
        conn = MqttConnection("reader", settings(broker.url, "reader"))
        conn.subscribe("q/#", 1, inbox)
        await conn.start()
        try:
            got = await inbox.take(3)
            assert conn.metrics["session_present"] is True
        finally:
            await conn.stop()
        assert [m.payload for m in got] == [b"0", b"1", b"2"]

    asyncio.run(main())


@mqtt_only
def test_message_arriving_before_its_subscriber_registers_is_held_for_it(broker: MosquittoBroker) -> None:
    async def main() -> None:
        async with connection(broker.url, "reader") as reader:
            await reader.subscribe("late/#", 1, Inbox()).wait_active(5)
            await reader.subscribe("marker", 1, Inbox()).wait_active(5)
        async with connection(broker.url, "publisher") as pub:
            await pub.publish("late/1", b"early bird", qos=1)
            await pub.publish("marker", b"m", qos=1)
        markers, late = Inbox(), Inbox()
        conn = MqttConnection("reader", settings(broker.url, "reader"))
        conn.subscribe("marker", 1, markers)
        await conn.start()
        try:
            await markers.take()  # queued after late/1, so late/1 has arrived and is held
            assert late.batch_sizes == []
            conn.subscribe("late/#", 1, late)
            [m] = await late.take()
        finally:
            await conn.stop()
        assert m.payload == b"early bird"

    asyncio.run(main())


@mqtt_only
def test_closed_subscription_keeps_its_messages_for_the_next_subscriber_on_the_filter(
    broker: MosquittoBroker,
) -> None:
    async def main() -> None:
        before, after, markers = Inbox(), Inbox(), Inbox()
        # No grace at all: a stopped subscriber's messages are held however long it stays away.
        async with connection(broker.url, "c", unrouted_grace=0) as conn:
            await conn.subscribe("marker", 1, markers).wait_active(5)
            sub = conn.subscribe("r/#", 1, before)
            await sub.wait_active(5)
            sub.close()  # an actor being restarted
            await conn.publish("r/1", b"while restarting", qos=1)
            await conn.publish("marker", b"m", qos=1)
            await markers.take()
            resumed = conn.subscribe("r/#", 1, after)
            assert resumed.active  # the broker still holds the subscription: no SUBSCRIBE needed
            [m] = await after.take()
        assert m.payload == b"while restarting"
        assert before.batch_sizes == []

    asyncio.run(main())


@mqtt_only
def test_closing_with_unsubscribe_stops_the_broker_sending(broker: MosquittoBroker) -> None:
    async def main() -> None:
        markers = Inbox()
        async with connection(broker.url, "c", unrouted_grace=0) as conn:
            await conn.subscribe("marker", 1, markers).wait_active(5)
            sub = conn.subscribe("r/#", 1, Inbox())
            await sub.wait_active(5)
            sub.close(unsubscribe=True)
            received = conn.metrics["messages_in"]
            await conn.publish("r/1", b"nobody listens", qos=1)  # after the UNSUBSCRIBE, same socket
            await conn.publish("marker", b"m", qos=1)
            await markers.take()
            assert conn.metrics["messages_in"] == received + 1
            assert conn.metrics["unrouted"] == 0

    asyncio.run(main())


@mqtt_only
def test_message_no_subscription_wants_is_acknowledged_and_counted(broker: MosquittoBroker) -> None:
    async def main() -> None:
        async with connection(broker.url, "reader") as reader:
            await reader.subscribe("old/#", 1, Inbox()).wait_active(5)  # left in the session
        async with connection(broker.url, "publisher") as pub:
            await pub.publish("old/1", b"stale", qos=1)
        current = Inbox()
        async with connection(broker.url, "reader", unrouted_grace=0) as conn:
            await conn.subscribe("new/#", 1, current).wait_active(5)
            await conn.publish("new/1", b"marker", qos=1)
            await current.payloads_until(b"marker")
            assert conn.metrics["unrouted"] == 1
        again = Inbox()
        conn = MqttConnection("reader", settings(broker.url, "reader"))
        conn.subscribe("#", 1, again)
        await conn.start()
        try:
            await conn.wait_connected(10)
            await conn.publish("new/2", b"marker 2", qos=1)
            seen = await again.payloads_until(b"marker 2")
        finally:
            await conn.stop()
        assert b"stale" not in seen

    asyncio.run(main())


# --- outages --------------------------------------------------------------------------------------------


@mqtt_only
def test_connection_survives_a_broker_restart_and_publishes_made_during_it_complete(
    broker: MosquittoBroker, logs: LogWatch
) -> None:
    async def main() -> None:
        ours, theirs = Inbox(), Inbox()
        async with connection(broker.url, "edge") as edge, connection(broker.url, "cloud") as cloud:
            await edge.subscribe("down/#", 1, ours).wait_active(5)
            await cloud.subscribe("up/#", 1, theirs).wait_active(5)
            broker.stop()
            await logs.wait_for(r"mqtt\[edge\]: connection to .* lost")
            assert not edge.connected
            during = asyncio.ensure_future(edge.publish("up/1", b"sent during the outage", qos=1))
            broker.start()
            await cloud.wait_connected(10)
            await cloud.publish("down/1", b"after the restart", qos=1)
            async with asyncio.timeout(10):
                await during
            [up] = await theirs.take()
            [down] = await ours.take()
            assert edge.metrics["connects"] == 2
        assert up.payload == b"sent during the outage"
        assert down.payload == b"after the restart"

    asyncio.run(main())


@mqtt_only
def test_subscriptions_are_sent_again_when_the_broker_lost_the_session(broker: MosquittoBroker, logs: LogWatch) -> None:
    async def main() -> None:
        inbox = Inbox()
        async with connection(broker.url, "edge") as edge:
            sub = edge.subscribe("x/#", 1, inbox)
            await sub.wait_active(5)
            broker.kill()  # no database save: the session is gone
            await logs.wait_for(r"mqtt\[edge\]: connection to .* lost")
            broker.start()
            await logs.wait_for(r"mqtt\[edge\]: connected .* new session", count=2)
            await sub.wait_active(5)
            async with connection(broker.url, "pub") as pub:
                await pub.publish("x/1", b"after", qos=1)
            [m] = await inbox.take()
        assert m.payload == b"after"

    asyncio.run(main())


@mqtt_only
def test_a_broker_that_stops_answering_is_detected_by_the_keepalive(broker: MosquittoBroker, logs: LogWatch) -> None:
    async def main() -> None:
        async with connection(broker.url, "edge", keepalive=1) as edge:
            broker.pause()
            try:
                await logs.wait_for(r"no answer from the broker within the keepalive")
                assert not edge.connected
            finally:
                broker.resume()
            await edge.wait_connected(10)
            assert edge.metrics["connects"] == 2

    asyncio.run(main())


@mqtt_only
def test_wait_connected_names_the_reason_when_the_broker_is_unreachable() -> None:
    async def main() -> None:
        conn = MqttConnection("nowhere", settings(f"mqtt://127.0.0.1:{free_port()}", "nowhere"))
        await conn.start()
        try:
            with pytest.raises(NotReady, match="connection refused"):
                await conn.wait_connected(1)
            assert conn.state in ("connecting", "disconnected")
        finally:
            await conn.stop()

    asyncio.run(main())


@mqtt_only
@pytest.mark.timeout(15)
def test_stop_ends_a_waiting_publish_with_retryable() -> None:
    async def main() -> None:
        conn = MqttConnection("nowhere", settings(f"mqtt://127.0.0.1:{free_port()}", "nowhere"))
        await conn.start()
        waiting = asyncio.ensure_future(conn.publish("t", b"x", qos=1))
        await asyncio.sleep(0)  # let it start waiting (ordering only; nothing is timed)
        await conn.stop()
        with pytest.raises(Retryable):
            await waiting
        assert conn.state == "stopped"

    asyncio.run(main())


# --- TLS and authentication -----------------------------------------------------------------------------


@mqtt_only
def test_tls_with_client_certificate_connects(tmp_path: Path, pki: TlsFiles) -> None:
    async def main(broker: MosquittoBroker) -> None:
        inbox = Inbox()
        tls = {"ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
        async with connection(broker.url, "tls", **tls) as conn:
            await conn.subscribe("secure", 1, inbox).wait_active(5)
            await conn.publish("secure", b"hello", qos=1)
            [m] = await inbox.take()
        assert m.payload == b"hello"

    with MosquittoBroker(tmp_path, tls=pki) as broker:
        assert broker.url.startswith("mqtts://")
        asyncio.run(main(broker))


@mqtt_only
def test_tls_with_an_untrusted_broker_certificate_logs_why_and_keeps_retrying(
    tmp_path: Path, pki: TlsFiles, logs: LogWatch
) -> None:
    async def main(broker: MosquittoBroker) -> None:
        tls = {"ca_file": str(pki.other_ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}
        conn = MqttConnection("tls", settings(broker.url, "tls", **tls))
        await conn.start()
        try:
            await logs.wait_for(r"not trusted", count=3)  # logged once, then retried (repeats at DEBUG)
            warnings = [r for r in logs.matching("not trusted") if r.levelno == logging.WARNING]
            assert len(warnings) == 1
            assert "check ca_file" in conn.metrics["last_error"]
            assert not conn.connected
        finally:
            await conn.stop()

    with MosquittoBroker(tmp_path, tls=pki) as broker:
        asyncio.run(main(broker))


@mqtt_only
def test_tls_without_the_client_certificate_the_broker_requires_says_so(
    tmp_path: Path, pki: TlsFiles, logs: LogWatch
) -> None:
    async def main(broker: MosquittoBroker) -> None:
        conn = MqttConnection("tls", settings(broker.url, "tls", ca_file=str(pki.ca)))
        await conn.start()
        try:
            await logs.wait_for(r"client certificate", count=2)
            assert "cert_file" in conn.metrics["last_error"]
            assert not conn.connected
        finally:
            await conn.stop()

    with MosquittoBroker(tmp_path, tls=pki, require_certificate=True) as broker:
        asyncio.run(main(broker))


@mqtt_only
@pytest.mark.parametrize("source", ["password_file", "password_env"])
def test_password_from_a_file_or_the_environment_authenticates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    secret_file = tmp_path / "mqtt.pass"
    secret_file.write_text("right horse\n")
    monkeypatch.setenv("EDGEFLOW_TEST_MQTT_PASSWORD", "right horse")
    secret = {"password_file": str(secret_file), "password_env": "EDGEFLOW_TEST_MQTT_PASSWORD"}[source]

    async def main(broker: MosquittoBroker) -> None:
        async with connection(broker.url, "auth", username="gw", **{source: secret}) as conn:
            assert conn.connected

    with MosquittoBroker(tmp_path, passwords={"gw": "right horse"}) as broker:
        asyncio.run(main(broker))


@mqtt_only
@pytest.mark.parametrize("protocol", [4, 5])
def test_wrong_password_is_a_clear_error_retried_forever(tmp_path: Path, logs: LogWatch, protocol: int) -> None:
    async def main(broker: MosquittoBroker) -> None:
        conn = MqttConnection("auth", settings(broker.url, "auth", username="gw", password="wrong", protocol=protocol))
        await conn.start()
        try:
            await logs.wait_for(r"refused the connection", count=3)
            assert conn.metrics["connect_failures"] >= 3
            assert re.search(r"Bad user name or password|Not authorized", conn.metrics["last_error"])
            assert conn.state in ("connecting", "disconnected")
            assert len([r for r in logs.records if r.levelno >= logging.WARNING]) == 1
        finally:
            await conn.stop()

    with MosquittoBroker(tmp_path, passwords={"gw": "right horse"}) as broker:
        asyncio.run(main(broker))


@mqtt_only
def test_missing_password_file_is_a_clear_error_not_a_crash(tmp_path: Path, logs: LogWatch) -> None:
    async def main(broker: MosquittoBroker) -> None:
        missing = str(tmp_path / "nope.pass")
        conn = MqttConnection("auth", settings(broker.url, "auth", username="gw", password_file=missing))
        await conn.start()
        try:
            await logs.wait_for(r"cannot read password_file", count=2)
            assert conn.state in ("connecting", "disconnected")
        finally:
            await conn.stop()

    with MosquittoBroker(tmp_path, passwords={"gw": "right horse"}) as broker:
        asyncio.run(main(broker))


# --- presence -------------------------------------------------------------------------------------------

_CHILD = """
import asyncio, sys
from edgeflow.mqtt import MqttConnection, MqttSettings, Will

async def main():
    status = "nodes/child/status"
    conn = MqttConnection("child", MqttSettings(
        url=sys.argv[1], client_id="child", will=Will(status, b"offline"), birth=Will(status, b"online")))
    await conn.start()
    await conn.wait_connected(10)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@mqtt_only
def test_broker_publishes_the_last_will_when_the_node_is_killed(broker: MosquittoBroker) -> None:
    async def main() -> None:
        status = Inbox()
        async with connection(broker.url, "observer") as observer:
            await observer.subscribe("nodes/child/status", 1, status).wait_active(5)
            child = await asyncio.create_subprocess_exec(sys.executable, "-c", _CHILD, broker.url)
            try:
                [online] = await status.take(timeout=15)
                assert online.payload == b"online"
                os.kill(child.pid, signal.SIGKILL)
                [offline] = await status.take(timeout=15)
            finally:
                if child.returncode is None:
                    child.kill()
                await child.wait()
        assert offline.payload == b"offline"

    asyncio.run(main())


@mqtt_only
@pytest.mark.parametrize("protocol", [4, 5])
def test_clean_stop_announces_offline_when_presence_is_configured(broker: MosquittoBroker, protocol: int) -> None:
    async def main() -> None:
        status = Inbox()
        async with connection(broker.url, "observer") as observer:
            await observer.subscribe("nodes/n1/status", 1, status).wait_active(5)
            presence = {"will": Will("nodes/n1/status", b"offline"), "birth": Will("nodes/n1/status", b"online")}
            async with connection(broker.url, "n1", protocol=protocol, **presence):
                [online] = await status.take()
            [offline] = await status.take()
        assert (online.payload, offline.payload) == (b"online", b"offline")

    asyncio.run(main())


# --- a scripted broker: acknowledgements on cue ---------------------------------------------------------


class ScriptedBroker:
    """A loopback TCP server speaking just enough MQTT 5: CONNACK, then packets on request."""

    def __init__(self, receive_maximum: int | None = None) -> None:
        self.receive_maximum = receive_maximum
        self.packets: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        self.writer: asyncio.StreamWriter | None = None
        self.connected = asyncio.Event()
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"mqtt://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> ScriptedBroker:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        if self.writer is not None:
            self.writer.close()
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        try:
            while True:
                header = (await reader.readexactly(1))[0]
                length, shift = 0, 0
                while True:
                    byte = (await reader.readexactly(1))[0]
                    length |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                body = await reader.readexactly(length)
                if header >> 4 == 1:  # CONNECT
                    if self.receive_maximum is None:
                        writer.write(bytes([0x20, 3, 0, 0, 0]))
                    else:  # property 33, Receive Maximum
                        writer.write(bytes([0x20, 6, 0, 0, 3, 33]) + self.receive_maximum.to_bytes(2, "big"))
                    self.connected.set()
                else:
                    self.packets.put_nowait((header, body))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass

    async def next_publish(self) -> int:
        """Wait for a PUBLISH; return its packet id."""
        async with asyncio.timeout(10):
            while True:
                header, body = await self.packets.get()
                if header >> 4 == 3:
                    topic_length = int.from_bytes(body[:2], "big")
                    return int.from_bytes(body[2 + topic_length : 4 + topic_length], "big")

    def puback(self, mid: int, reason: int = 0) -> None:
        assert self.writer is not None
        self.writer.write(bytes([0x40, 4]) + mid.to_bytes(2, "big") + bytes([reason, 0]))

    def send_publishes(self, topic: str, payloads: list[bytes], qos: int = 0, first_mid: int = 1) -> None:
        """Several PUBLISH packets in one write: they arrive together (QoS 1: packet ids from `first_mid`)."""
        assert self.writer is not None
        chunks = []
        for i, payload in enumerate(payloads):
            mid = (first_mid + i).to_bytes(2, "big") if qos else b""
            body = len(topic).to_bytes(2, "big") + topic.encode() + mid + b"\x00" + payload
            chunks.append(bytes([0x30 | qos << 1, len(body)]) + body)
        self.writer.write(b"".join(chunks))

    async def pubacks(self, n: int) -> list[int]:
        """The packet ids of the next `n` PUBACKs the client sends (other packets are skipped)."""
        mids: list[int] = []
        async with asyncio.timeout(10):
            while len(mids) < n:
                header, body = await self.packets.get()
                if header >> 4 == 4:
                    mids.append(int.from_bytes(body[:2], "big"))
        return mids


def test_qos1_publish_completes_only_when_the_puback_arrives() -> None:
    async def main() -> None:
        async with ScriptedBroker() as scripted, connection(scripted.url, "c") as conn:
            publishing = asyncio.ensure_future(conn.publish("t", b"x", qos=1))
            mid = await scripted.next_publish()
            assert not publishing.done()
            scripted.puback(mid)
            async with asyncio.timeout(5):
                await publishing

    asyncio.run(main())


@pytest.mark.parametrize(("reason", "error"), [(0x87, Permanent), (0x97, Retryable)])
def test_puback_with_a_failure_reason_fails_the_publish(reason: int, error: type[Exception]) -> None:
    async def main() -> None:
        async with ScriptedBroker() as scripted, connection(scripted.url, "c") as conn:
            publishing = asyncio.ensure_future(conn.publish_many([("t", b"ok"), ("t", b"refused")], qos=1))
            scripted.puback(await scripted.next_publish())
            scripted.puback(await scripted.next_publish(), reason)
            async with asyncio.timeout(5):
                results = await publishing
        assert results[0] is None
        assert isinstance(results[1], error)

    asyncio.run(main())


def test_in_flight_window_holds_publishes_beyond_max_inflight() -> None:
    async def main() -> None:
        async with ScriptedBroker() as scripted, connection(scripted.url, "c", max_inflight=2) as conn:
            publishing = asyncio.ensure_future(conn.publish_many([("t", b"%d" % i) for i in range(3)], qos=1))
            first, second = await scripted.next_publish(), await scripted.next_publish()
            assert conn.metrics["inflight"] == 2
            assert scripted.packets.empty()  # the third waits for a slot
            scripted.puback(first)
            third = await scripted.next_publish()
            scripted.puback(second)
            scripted.puback(third)
            async with asyncio.timeout(5):
                assert await publishing == [None, None, None]

    asyncio.run(main())


def test_broker_receive_maximum_lowers_the_in_flight_window() -> None:
    async def main() -> None:
        async with ScriptedBroker(receive_maximum=1) as scripted, connection(scripted.url, "c") as conn:
            publishing = asyncio.ensure_future(conn.publish_many([("t", b"1"), ("t", b"2")], qos=1))
            first = await scripted.next_publish()
            assert conn.metrics["inflight"] == 1
            assert scripted.packets.empty()
            scripted.puback(first)
            scripted.puback(await scripted.next_publish())
            async with asyncio.timeout(5):
                assert await publishing == [None, None]

    asyncio.run(main())


def test_messages_arriving_together_reach_the_handler_as_one_batch() -> None:
    async def main() -> None:
        inbox = Inbox()
        async with ScriptedBroker() as scripted, connection(scripted.url, "c") as conn:
            conn.subscribe("burst", 0, inbox)
            scripted.send_publishes("burst", [b"%d" % i for i in range(50)])
            got = await inbox.take(50)
        assert [m.payload for m in got] == [b"%d" % i for i in range(50)]
        assert inbox.batch_sizes == [50]

    asyncio.run(main())


def test_a_burst_is_read_in_batches_of_the_read_budget_and_acknowledged_in_one_write() -> None:
    """5,000 QoS 1 messages in one write: handed over in batches of at most 256 (other callbacks get a
    turn between them), and their PUBACKs, once acknowledged together, leave in arrival order."""

    async def main() -> None:
        inbox = Inbox()
        async with ScriptedBroker() as scripted, connection(scripted.url, "c") as conn:
            conn.subscribe("burst", 1, inbox)
            scripted.send_publishes("burst", [b"%d" % i for i in range(5000)], qos=1)
            got = await inbox.take(5000)
            assert [m.payload for m in got] == [b"%d" % i for i in range(5000)]
            assert max(inbox.batch_sizes) <= 256
            assert await scripted.pubacks(5000) == list(range(1, 5001))

    asyncio.run(main())


def test_a_paused_subscriber_is_not_flooded_by_a_broker_ignoring_receive_maximum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While a subscriber is paused and a QoS 1 publish of ours awaits its PUBACK, reading goes on for
    that PUBACK, but the broker's messages read meanwhile are bounded: an allowance, renewed every
    grace period (a broker within our Receive Maximum never reaches it). The PUBACK, sent behind
    5,000 messages, still completes the publish, and every message is delivered once, in order."""
    import edgeflow.mqtt.connection as connection_module

    grace = 0.1
    allowance = connection_module._PAUSED_READ_ALLOWANCE
    budget = connection_module._READ_BUDGET
    monkeypatch.setattr(connection_module, "_PAUSED_READ_GRACE", grace)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        owner = object()
        seen: list[tuple[float, int]] = []  # (time, messages received so far) at each batch

        async with ScriptedBroker() as scripted, connection(scripted.url, "c", max_inflight=1) as conn:
            inbox = Inbox(ack=False)

            def handler(batch: list[InMessage]) -> None:
                inbox(batch)
                seen.append((loop.time(), inbox.queue.qsize()))
                conn.pause_reading(owner)  # a subscriber whose downstream is full

            conn.subscribe("in", 1, handler)
            publishing = asyncio.ensure_future(conn.publish("out", b"x", qos=1))
            mid = await scripted.next_publish()
            started = loop.time()
            scripted.send_publishes("in", [b"%d" % i for i in range(5000)], qos=1, first_mid=10)
            scripted.puback(mid)  # behind all of them
            async with asyncio.timeout(20):
                await publishing  # reading for the PUBACK went on, allowance by allowance
            paused_for = loop.time() - started
            for at, received in seen:
                renewals = int((at - started) / grace) + 1
                assert received <= renewals * (allowance + budget), (at - started, received)
            # Reading stopped at each allowance: the PUBACK, behind 5,000 messages, took 5+ renewals.
            assert paused_for >= 5 * grace
            got = [m.payload for m in await inbox.take(5000)]
            assert got == [b"%d" % i for i in range(5000)]  # all of them, once, in order

    asyncio.run(main())
