"""The control plane's checks that need no broker: signatures, freshness, replays, secrets in replies.

The clock is the one thing faked (a true boundary): staleness and the replay window depend on it.
"""

from __future__ import annotations

import json

import pytest

from edgeflow.control.apply import inline_secrets
from edgeflow.control.auth import Refused, Verifier
from edgeflow.control.documents import to_json
from edgeflow.control.protocol import canonical, command_body, sign
from edgeflow.control_client import _command_args
from edgeflow.schema import Secret

KEY = b"k" * 32
NOW = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def body(verb: str = "ping", target: str = "gw", args: dict | None = None, **kw: object) -> dict:
    return command_body(verb, target, args or {}, key=KEY, now=kw.pop("now", NOW), **kw)  # type: ignore[arg-type]


def test_a_correctly_signed_fresh_command_passes_and_returns_its_args(clock: Clock) -> None:
    v = Verifier(KEY, clock=clock)
    assert v.check("actor.restart", "gw", body("actor.restart", args={"name": "x"})) == {"name": "x"}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda b: b.pop("sig"), "unsigned command"),
        (lambda b: b.update(sig="0" * 64), "bad signature"),
        (lambda b: b.update(sig="zz"), "'sig' must be 64 lowercase hex digits"),
        (lambda b: b.update(args={"name": "other"}), "bad signature"),
        (lambda b: b.update(ts=b["ts"] + 1), "bad signature"),
        (lambda b: b.update(nonce="another-nonce"), "bad signature"),
        (lambda b: b.pop("nonce"), "a signed command needs 'ts' and 'nonce'"),
        (lambda b: b.update(nonce="short"), "'nonce' must be a string of 8 to 128 characters"),
        (lambda b: b.update(ts="soon"), "'ts' must be a number"),
        (lambda b: b.update(args=[1]), "'args' must be a JSON object"),
    ],
)
def test_a_tampered_or_incomplete_command_is_refused(clock: Clock, change: object, reason: str) -> None:
    b = body("actor.restart", args={"name": "x"})
    change(b)  # type: ignore[operator]
    with pytest.raises(Refused, match=f"^{reason}"):
        Verifier(KEY, clock=clock).check("actor.restart", "gw", b)


def test_the_signature_binds_the_verb_and_the_target(clock: Clock) -> None:
    v = Verifier(KEY, clock=clock)
    with pytest.raises(Refused, match="bad signature"):
        v.check("actor.stop", "gw", body("actor.start"))
    with pytest.raises(Refused, match="bad signature"):
        v.check("ping", "all", body("ping", target="gw"))  # a node's command replayed to the fleet


def test_a_command_older_or_newer_than_the_window_is_stale(clock: Clock) -> None:
    v = Verifier(KEY, clock=clock)
    v.check("ping", "gw", body(now=NOW - 60))  # the edge is still fresh
    with pytest.raises(Refused, match="61s behind"):
        v.check("ping", "gw", body(now=NOW - 61))
    with pytest.raises(Refused, match="61s ahead of"):
        v.check("ping", "gw", body(now=NOW + 61))


def test_a_nonce_is_refused_the_second_time_and_forgotten_once_its_command_is_stale(clock: Clock) -> None:
    v = Verifier(KEY, clock=clock)
    b = body()
    v.check("ping", "gw", b)
    with pytest.raises(Refused, match="replayed"):
        v.check("ping", "gw", b)
    clock.now += 61
    with pytest.raises(Refused, match="stale"):  # by then the body is stale anyway
        v.check("ping", "gw", b)
    v.check("ping", "gw", body(now=clock.now))
    assert v.remembered == 1  # only the new one: the stale nonce was forgotten


def test_a_wrongly_signed_command_does_not_burn_its_nonce(clock: Clock) -> None:
    v = Verifier(KEY, clock=clock)
    good = body()
    forged = {**good, "sig": "0" * 64}
    with pytest.raises(Refused, match="bad signature"):
        v.check("ping", "gw", forged)
    v.check("ping", "gw", good)  # the real command still goes through


def test_a_full_nonce_cache_refuses_rather_than_forgetting_early(clock: Clock) -> None:
    v = Verifier(KEY, clock=clock, max_nonces=3)
    for _ in range(3):
        v.check("ping", "gw", body())
    with pytest.raises(Refused, match="too many commands"):
        v.check("ping", "gw", body())
    clock.now += 61
    v.check("ping", "gw", body(now=clock.now))  # the old ones went stale: room again


def test_without_a_key_commands_pass_but_stale_or_repeated_ones_do_not(clock: Clock) -> None:
    v = Verifier(None, clock=clock)
    assert v.check("ping", "gw", {"args": {"a": 1}}) == {"a": 1}
    assert v.check("ping", "gw", {}) == {}
    b = command_body("ping", "gw", {}, key=None, now=NOW)
    v.check("ping", "gw", b)
    with pytest.raises(Refused, match="replayed"):
        v.check("ping", "gw", b)
    with pytest.raises(Refused, match="stale"):
        v.check("ping", "gw", command_body("ping", "gw", {}, key=None, now=NOW - 300))


def test_canonical_form_ignores_key_order_and_spacing() -> None:
    a = canonical("v", "gw", {"b": 1, "a": [1, {"y": 2, "x": "é"}]}, 5, "n" * 8)
    b = canonical("v", "gw", json.loads('{ "a": [1, {"x": "é", "y": 2}], "b": 1 }'), 5, "n" * 8)
    assert a == b
    assert a == b'{"args":{"a":[1,{"x":"\\u00e9","y":2}],"b":1},"nonce":"nnnnnnnn","target":"gw","ts":5,"verb":"v"}'
    assert sign(KEY, "v", "gw", {}, 5, "n" * 8) != sign(b"other", "v", "gw", {}, 5, "n" * 8)


def test_replies_never_carry_secrets() -> None:
    doc = {
        "conn": {"password": "hunter2", "password_file": "/etc/p", "token": None},
        "secret_value": Secret("s3cr3t-value"),
        "leak": "the key is KEY-MATERIAL-123 here",
    }
    out = json.loads(to_json(doc, secrets=["KEY-MATERIAL-123"]))
    assert out["conn"] == {"password": "***", "password_file": "/etc/p", "token": None}
    assert out["secret_value"] == "***"
    assert out["leak"] == "the key is *** here"


def test_inline_secrets_are_found_but_secret_files_and_comments_are_not() -> None:
    text = (
        '[connections.a]\npassword_file = "/etc/p"\n# password = "old"\n'
        'password = "x"\n[sinks.h]\nheaders = { token = "abc" }\n'
    )
    assert inline_secrets(text) == ["line 4: password", "line 6: token"]


def test_ctl_arguments_are_positional_by_verb_or_key_value_with_json_values(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert _command_args("actor.restart", ["temps"], None) == {"name": "temps"}
    assert _command_args("log.level", ["debug", "edgeflow.mqtt"], None) == {"level": "debug", "logger": "edgeflow.mqtt"}
    f = tmp_path / "t.toml"
    f.write_text("[node]\n")
    assert _command_args("topology.apply", [str(f), "settle=2.5", "force=true"], None) == {
        "text": "[node]\n",
        "settle": 2.5,
        "force": True,
    }
    assert _command_args("ping", [], '{"x": 1}') == {"x": 1}
    with pytest.raises(ValueError, match="no more positional"):
        _command_args("ping", ["extra"], None)
