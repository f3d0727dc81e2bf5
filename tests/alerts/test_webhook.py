"""The generic signed webhook and the HTTP attempt every HTTP sink shares (classification, Retry-After,
secrets), against a real loopback receiver."""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import hmac
import re
import socket
from typing import Any

import httpx
import orjson
import pytest

import vigil.alerts.webhook as webhook_module
from tests.alerts.fakes import FakeReceiver, FakeServer, Rule, deliver, sample_alert
from vigil.alerts.model import Alert, sinks
from vigil.alerts.webhook import (
    WebhookSink,
    notification_id,
    parse_retry_after,
    retry_after_of,
    sign,
    verify_signature,
)
from vigil.errors import ConfigError

SECRET = "whsec-canary-5f2a9c1e7b"
PATH_TOKEN = "hooktoken-8c41f0a2d9e7"


def sink_for(server: FakeServer, **config: Any) -> WebhookSink:
    return WebhookSink(
        "ops-hook", {"url": server.url(f"/hooks/{PATH_TOKEN}?key=querysecret42"), "secret": SECRET, **config}
    )


def send(sink: WebhookSink, alert: Alert | None = None, timeout: float = 5.0) -> Any:
    return asyncio.run(deliver(sink, alert or sample_alert(), timeout=timeout))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_registered_under_webhook() -> None:
    assert sinks.get("webhook") is WebhookSink


# -- Retry-After ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), (" 7 ", 7.0), ("1.5", 1.5), ("0", 0.0), ("-5", 0.0), ("", None), (None, None),
     ("soon", None), ("nan", None), ("inf", None)],
)  # fmt: skip
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_http_date() -> None:
    now = 1_795_513_651.0
    later = email.utils.formatdate(now + 30, usegmt=True)  # "Tue, 24 Nov 2026 09:48:01 GMT"
    assert parse_retry_after(later, now=now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 600, usegmt=True), now=now) == 0.0
    assert parse_retry_after("Tue, 24 Nov 2026 09:48:01 -0000", now=now) is not None  # naive form: GMT


def test_retry_after_from_header_then_body() -> None:
    req = httpx.Request("POST", "https://example.test/")
    assert (
        retry_after_of(
            httpx.Response(429, headers={"Retry-After": "9"}, json={"retry_after": 2}, request=req)
        )
        == 9
    )
    assert retry_after_of(httpx.Response(429, json={"retry_after": 2.5}, request=req)) == 2.5
    assert retry_after_of(httpx.Response(429, json={"error": {"retryAfter": "4"}}, request=req)) == 4
    assert retry_after_of(httpx.Response(429, text="slow down", request=req)) is None


# -- rendering and signing ---------------------------------------------------------------------------------------
def test_body_is_the_alert_json_with_version_and_a_stable_id() -> None:
    sink = WebhookSink("h", {"url": "https://receiver.example/in", "secret": SECRET})
    alert = sample_alert()
    body = sink.render(alert)
    assert body["version"] == 1
    assert {k: v for k, v in body.items() if k not in ("version", "id")} == alert.to_json()
    assert Alert.from_json(body) == alert
    assert body["id"] == notification_id(alert) == sink.render(sample_alert())["id"]
    assert sink.render(sample_alert(count=4))["id"] != body["id"]  # an update is a new notification


def test_receiver_verifies_the_signature() -> None:
    with FakeReceiver(SECRET) as receiver:
        sink = sink_for(receiver)
        delivery = send(sink)
        assert (delivery.outcome, delivery.status) == ("sent", 200)
        [request] = receiver.received()
        assert request.headers["content-type"] == "application/json"
        assert re.fullmatch(r"v1=[0-9a-f]{64}", request.headers["x-vigil-signature"])
        assert receiver.accepted == [sink.render(sample_alert())]
        expected = hmac.new(SECRET.encode(), request.headers["x-vigil-timestamp"].encode() + b"." + request.body,
                            hashlib.sha256).hexdigest()  # fmt: skip
        assert request.headers["x-vigil-signature"] == f"v1={expected}"


def test_a_wrong_secret_is_refused_by_the_receiver() -> None:
    with FakeReceiver("another-secret") as receiver:
        delivery = send(sink_for(receiver))
    assert (delivery.outcome, delivery.status) == ("dead", 401)


def test_custom_signature_header() -> None:
    with FakeReceiver(SECRET) as receiver:
        send(sink_for(receiver, header="X-Hub-Signature-256"))
        [request] = receiver.received()
    assert "x-vigil-signature" not in request.headers
    assert verify_signature(
        SECRET, request.headers["x-vigil-timestamp"], request.body, request.headers["x-hub-signature-256"]
    )


def test_verify_signature_rejects_tampering_staleness_and_junk() -> None:
    body, now = b'{"a":1}', 1_795_513_651
    header = sign(SECRET.encode(), str(now), body)
    assert verify_signature(SECRET, now, body, header, now=now + 299)
    assert verify_signature(SECRET.encode(), str(now), body, f"v1={'0' * 64}, {header}", now=now)  # rotation
    assert not verify_signature(SECRET, now, body + b" ", header, now=now)
    assert not verify_signature("other", now, body, header, now=now)
    assert not verify_signature(SECRET, now, body, header, now=now + 301)  # stale: a replay
    assert not verify_signature(SECRET, now, body, header, now=now - 301)
    assert not verify_signature(SECRET, now, body, header.removeprefix("v1="), now=now)
    assert not verify_signature(SECRET, "12a", body, header, now=now)
    assert not verify_signature(SECRET, now, body, "", now=now)


def test_timestamp_comes_from_the_sink_clock() -> None:
    with FakeReceiver(SECRET, tolerance=10**12) as receiver:
        sink = sink_for(receiver)
        sink.clock = lambda: 1_000_000_000.9
        send(sink)
        [request] = receiver.received()
    assert request.headers["x-vigil-timestamp"] == "1000000000"
    assert not verify_signature(SECRET, "1000000000", request.body, request.headers["x-vigil-signature"])


def test_the_documented_receiver_snippet_works() -> None:
    """The module docstring's snippet is what receivers copy: run it against a real signed request."""
    doc = webhook_module.__doc__ or ""
    snippet = doc[doc.index("import hashlib, hmac, time") :].split("\n\n")
    code = "\n\n".join(snippet[:2])
    namespace: dict[str, Any] = {}
    exec(compile(__import__("textwrap").dedent("    " + code), "snippet", "exec"), namespace)
    verify = namespace["verify"]
    with FakeReceiver(SECRET) as receiver:
        send(sink_for(receiver))
        [request] = receiver.received()
    stamp, sig = request.headers["x-vigil-timestamp"], request.headers["x-vigil-signature"]
    assert verify(SECRET.encode(), stamp, request.body, sig)
    assert not verify(SECRET.encode(), stamp, request.body + b"x", sig)
    assert not verify(b"wrong", stamp, request.body, sig)
    assert len([line for line in code.splitlines() if line.strip()]) <= 10


# -- classification ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, "sent"), (201, "sent"), (202, "sent"), (204, "sent"), (302, "dead"), (400, "dead"), (401, "dead"), (404, "dead"),
     (410, "dead"), (413, "dead"), (408, "retry"), (429, "retry"), (500, "retry"), (502, "retry"), (503, "retry")],
)  # fmt: skip
def test_status_classification(status: int, outcome: str) -> None:
    with FakeServer() as server:
        server.script(Rule(status=status, body="nope" if status >= 300 else ""))
        delivery = send(sink_for(server))
    assert (delivery.outcome, delivery.status) == (outcome, status)
    if outcome != "sent":
        assert delivery.reason.startswith(f"HTTP {status}")


def test_retry_after_is_reported_for_429_and_503() -> None:
    with FakeServer() as server:
        server.script(Rule(status=429, headers={"Retry-After": "42"}, times=1))
        server.script(Rule(status=503, headers={"Retry-After": "Wed, 21 Oct 2099 07:28:00 GMT"}, times=1))
        first, second, third = (send(sink_for(server)) for _ in range(3))
    assert (first.outcome, first.retry_after) == ("retry", 42.0)
    assert second.outcome == "retry" and second.retry_after is not None and second.retry_after > 10**8
    assert (third.outcome, third.retry_after) == ("sent", None)


def test_connection_refused_is_retry() -> None:
    sink = WebhookSink("h", {"url": f"http://127.0.0.1:{free_port()}/hooks/{PATH_TOKEN}", "secret": SECRET})
    delivery = send(sink)
    assert (delivery.outcome, delivery.status) == ("retry", None)
    assert "ConnectError" in delivery.reason


def test_reset_after_acceptance_is_retry_and_the_retry_carries_the_same_id() -> None:
    with FakeReceiver(SECRET) as receiver:
        receiver.script(Rule(reset=True, times=1))
        first, second = send(sink_for(receiver)), send(sink_for(receiver))
        ids = [orjson.loads(r.body)["id"] for r in receiver.received()]
    assert (first.outcome, second.outcome) == ("retry", "sent")
    assert len(receiver.accepted) == 2 and ids[0] == ids[1]  # processed twice: the receiver dedupes on id


def test_slow_receiver_times_out_as_retry() -> None:
    with FakeServer() as server:
        server.script(Rule(delay=1.0, times=1))
        delivery = send(sink_for(server), timeout=0.2)
    assert delivery.outcome == "retry" and "Timeout" in delivery.reason


# -- secrets ------------------------------------------------------------------------------------------------------
def test_secrets_stay_out_of_repr_reasons_and_errors() -> None:
    with FakeServer() as server:
        url = server.url(f"/hooks/{PATH_TOKEN}?key=querysecret42")
        server.script(Rule(status=400, body=f"bad request to {url} signed with {SECRET}"))
        sink = sink_for(server)
        dead = send(sink)
    refused = send(
        WebhookSink("h", {"url": f"http://127.0.0.1:{free_port()}/h/{PATH_TOKEN}", "secret": SECRET})
    )
    texts = [repr(sink), str(sink), dead.reason, refused.reason, sink.target]
    for text in texts:
        for secret in (SECRET, PATH_TOKEN, "querysecret42"):
            assert secret not in text, text
    assert dead.outcome == "dead" and "***" in dead.reason
    assert sink.target == f"http://127.0.0.1:{server.port}/…"


@pytest.mark.parametrize(
    "config",
    [{"secret": SECRET}, {"url": "ftp://files.example/hook-secret-123", "secret": SECRET},
     {"url": "https://receiver.example/in"}, {"url": "not a url hook-secret-123", "secret": SECRET}],
)  # fmt: skip
def test_bad_config_is_a_config_error_without_the_url(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as caught:
        WebhookSink("h", config)
    assert "hook-secret-123" not in str(caught.value) and SECRET not in str(caught.value)


def test_an_alert_that_is_not_json_is_dead_not_raised() -> None:
    sink = WebhookSink("h", {"url": "http://127.0.0.1:9/in", "secret": SECRET})
    delivery = send(sink, sample_alert(details={"when": object()}))
    assert delivery.outcome == "dead" and "encode" in delivery.reason
