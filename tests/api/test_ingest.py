"""HTTP ingestion against a real ``vigil run`` on a random port: auth, limits, handshakes, every webhook
format, malformed bodies; plus the checks that need a rigged state (429) at the ASGI level."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.streams.test_embedded import COMMANDS, RULES, Daemon
from vigil.api import create_app
from vigil.api.auth import pre_body, sign, signature
from vigil.api.ingest import direct
from vigil.settings import SourceAuth, load_settings
from vigil.store.sqlite import Store
from vigil.streams import RunState

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "events"
ACTIVITY = {
    "time": "2024-05-01T10:00:00Z",
    "resourceId": "/SUBSCRIPTIONS/S1/RESOURCEGROUPS/G1/PROVIDERS/MICROSOFT.KEYVAULT/VAULTS/KV1",
    "operationName": "MICROSOFT.KEYVAULT/VAULTS/WRITE",
    "category": "Administrative",
    "resultType": "Success",
    "correlationId": "c-1",
}
HMAC_SECRET = "hmac-test-secret-0123456789"
CODE = "eventgrid-url-code-0123456789"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    work = tmp_path_factory.mktemp("ingest")
    (work / "rules.yaml").write_text(RULES, encoding="utf-8")
    (work / "profile.yaml").write_text(
        "data_dir: var\nhttp:\n  port: 0\n  max_body_bytes: 64KiB\n  body_timeout: 1\n  sources:\n"
        f"    azure_monitor: {{hmac_secrets: [{HMAC_SECRET}]}}\n"
        f"    eventgrid: {{query_secrets: [{CODE}], subscriptions: [VIGIL-KV]}}\n"
        "detect:\n  rules: rules.yaml\n",
        encoding="utf-8",
    )
    proc = Daemon([*COMMANDS["cli"], str(work / "profile.yaml")], work)
    try:
        base = proc.wait_for_log(r"serving on (http://127\.0\.0\.1:\d+)").group(1)
        token = (work / "var" / "ingest.token").read_text().strip()
        yield base, token, work
    finally:
        proc.stop()
        assert "Traceback" not in proc.read_log()  # (no request, however bad, may end in one)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_events_with_the_local_token_are_stored_and_detected(daemon: tuple[str, str, Path]) -> None:
    base, token, work = daemon
    body = (json.dumps(ACTIVITY) + "\n" + json.dumps({**ACTIVITY, "correlationId": "c-2"}) + "\n").encode()
    r = httpx.post(f"{base}/v1/events", content=body, headers=_bearer(token))
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": 2, "dead_lettered": 0}
    end = time.monotonic() + 20
    while time.monotonic() < end:
        found = httpx.get(f"{base}/v1/findings", params={"rule": "t.vault-write"}).json()["findings"]
        if len(found) >= 2:
            break
        time.sleep(0.05)
    assert len(found) == 2
    # a retry of the same body (the answer was lost, say): accepted, recognised, not stored or found twice
    again = httpx.post(f"{base}/v1/events", content=body, headers=_bearer(token))
    assert again.status_code == 200 and again.json() == {"accepted": 2, "dead_lettered": 0, "duplicates": 2}
    time.sleep(0.5)
    assert len(httpx.get(f"{base}/v1/findings", params={"rule": "t.vault-write"}).json()["findings"]) == 2
    # the log keeps the body as received (no re-encoding), with how to normalise it again
    with sqlite3.connect(work / "var" / "vigil.db") as conn:
        stored = conn.execute(
            "SELECT form, params, body FROM event_batches WHERE body = ?", (body,)
        ).fetchall()
    assert len(stored) == 1 and stored[0][0] == "raw" and json.loads(stored[0][1])["format"] == "auto"


@pytest.mark.parametrize(
    ("headers", "params"),
    [
        ({}, {}),
        ({"Authorization": "Bearer wrong"}, {}),
        ({"Authorization": "Basic abc"}, {}),
        ({}, {"code": "wrong"}),
        ({"X-Vigil-Signature": "t=1,v1=00"}, {}),
    ],
)
def test_unauthenticated_calls_get_401_and_are_counted(
    daemon: tuple[str, str, Path], headers: dict[str, str], params: dict[str, str]
) -> None:
    base, _, _ = daemon
    r = httpx.post(f"{base}/v1/events", content=json.dumps(ACTIVITY), headers=headers, params=params)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "vigil_ingest_rejected_total" in httpx.get(f"{base}/metrics").text


def test_a_body_over_the_limit_is_413(daemon: tuple[str, str, Path]) -> None:
    base, token, _ = daemon
    r = httpx.post(f"{base}/v1/events", content=b"x" * (65 * 1024), headers=_bearer(token))
    assert r.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap applies while reading
        for _ in range(70):
            yield b"y" * 1024

    r = httpx.post(f"{base}/v1/events", content=chunks(), headers=_bearer(token))
    assert r.status_code == 413


def test_a_body_trickling_in_is_cut_off_and_counted(daemon: tuple[str, str, Path]) -> None:
    """http.body_timeout (1 s here): an authenticated client that sends its head, then a byte every
    0.1 s, is disconnected about a second later, nothing of it stored; the daemon goes on serving."""
    base, token, _ = daemon
    host, port = base.removeprefix("http://").split(":")
    before = httpx.get(f"{base}/metrics").text
    assert "vigil_http_body_timeouts_total 0" in before
    with socket.create_connection((host, int(port)), timeout=5) as slow:
        slow.sendall(
            f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            "Content-Length: 5000\r\n\r\n".encode()
        )
        started = time.monotonic()
        with pytest.raises(OSError):  # (reset or broken pipe, once the server closed it)
            for _ in range(100):
                slow.sendall(b" ")
                time.sleep(0.1)
                if slow.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                    raise ConnectionResetError("closed by the server")
        assert 0.8 < time.monotonic() - started < 5
    assert "vigil_http_body_timeouts_total 1" in httpx.get(f"{base}/metrics").text
    r = httpx.post(f"{base}/v1/events", content=json.dumps(ACTIVITY).encode(), headers=_bearer(token))
    assert r.status_code == 200


def test_a_malformed_body_is_400_and_dead_lettered_with_its_reason(daemon: tuple[str, str, Path]) -> None:
    base, token, work = daemon
    r = httpx.post(f"{base}/v1/events", content=b"{not json", headers=_bearer(token))
    assert r.status_code == 400
    assert r.json()["error"] == "no event in the body" and r.json()["dead_letters"]
    partial = (json.dumps(ACTIVITY) + "\n42\n").encode()
    r = httpx.post(f"{base}/v1/events", content=partial, headers=_bearer(token))
    assert r.status_code == 200 and r.json()["accepted"] == 1 and r.json()["dead_lettered"] == 1
    conn = sqlite3.connect(work / "var" / "vigil.db")
    try:
        reasons = [row[0] for row in conn.execute("SELECT reason FROM dead_letters")]
    finally:
        conn.close()
    assert len(reasons) >= 2 and all(reasons)


def test_eventgrid_validation_handshake_and_delivery(daemon: tuple[str, str, Path]) -> None:
    base, _, _ = daemon
    handshake = (FIXTURES / "eventgrid" / "good_validation_handshake.json").read_bytes()
    code = json.loads(handshake)[0]["data"]["validationCode"]
    url = f"{base}/v1/webhooks/eventgrid"
    headers = {"aeg-event-type": "SubscriptionValidation", "aeg-subscription-name": "VIGIL-KV"}
    r = httpx.post(url, content=handshake, headers=headers, params={"code": CODE})
    assert r.status_code == 200 and r.json() == {"validationResponse": code}
    stranger = {**headers, "aeg-subscription-name": "SOMEONE-ELSE"}
    assert httpx.post(url, content=handshake, headers=stranger, params={"code": CODE}).status_code == 403
    assert httpx.post(url, content=handshake, headers=headers).status_code == 401
    delivery = (FIXTURES / "eventgrid" / "good_batch_delivery.json").read_bytes()
    r = httpx.post(
        url, content=delivery, headers={"aeg-subscription-name": "VIGIL-KV"}, params={"code": CODE}
    )
    assert r.status_code == 200 and r.json()["accepted"] >= 1
    probe = httpx.options(url, headers={"WebHook-Request-Origin": "eventgrid.azure.net"})
    assert probe.status_code == 200
    assert probe.headers["webhook-allowed-origin"] == "eventgrid.azure.net"


def test_azure_monitor_with_an_hmac_signature(daemon: tuple[str, str, Path]) -> None:
    base, _, _ = daemon
    body = (FIXTURES / "monitor" / "good_metric_alert_fired.json").read_bytes()
    now = int(time.time())
    url = f"{base}/v1/webhooks/azure-monitor"
    r = httpx.post(url, content=body, headers={"X-Vigil-Signature": sign(HMAC_SECRET, body, now)})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    stale = sign(HMAC_SECRET, body, now - 3600)
    assert httpx.post(url, content=body, headers={"X-Vigil-Signature": stale}).status_code == 401
    tampered = sign(HMAC_SECRET, body, now)
    assert httpx.post(url, content=body + b" ", headers={"X-Vigil-Signature": tampered}).status_code == 401


def test_sentinel_alerts_and_incidents(daemon: tuple[str, str, Path]) -> None:
    base, token, _ = daemon
    url = f"{base}/v1/webhooks/sentinel"
    for name in ("good_incident_trigger.json", "good_security_alert_export.json"):
        r = httpx.post(url, content=(FIXTURES / "sentinel" / name).read_bytes(), headers=_bearer(token))
        assert r.status_code == 200 and r.json()["accepted"] >= 1, (name, r.text)


# -- at the ASGI level: a rigged backlog, and the auth functions ------------------------------------------


@pytest.mark.parametrize("front", ["direct", "fastapi"])
def test_a_full_pipeline_answers_429_with_retry_after_before_reading(tmp_path: Path, front: str) -> None:
    """The same through the daemon's direct path (vigil.api.ingest.direct) and through FastAPI's route."""
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"data_dir: {tmp_path / 'var'}\nhttp:\n  max_backlog: 10\n", encoding="utf-8")
    state = RunState(settings=load_settings(profile, env={}), store=Store(tmp_path / "vigil.db"))
    state.local_token = "tok"
    state.backlog = lambda: 11
    app = create_app(state)

    async def post() -> httpx.Response:
        transport = httpx.ASGITransport(app=direct(app, state) if front == "direct" else app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post("/v1/events", content=b"{}", headers=_bearer("tok"))

    r = asyncio.run(post())
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert state.http_ingest.throttled == {"events": 1}


def test_auth_rules() -> None:
    auth = SourceAuth(tokens=["a-token"], hmac_secrets=["s1", "s2"])
    assert pre_body(auth, {"authorization": "Bearer a-token"}, {}, None) == ""
    assert pre_body(auth, {"authorization": "Bearer other"}, {}, "local") == "bad_token"
    assert pre_body(auth, {}, {}, None) == "no_credentials"
    assert pre_body(auth, {"x-vigil-signature": "t=1,v1=ab"}, {}, None) is None
    # the local token only opens a source with nothing configured
    assert pre_body(SourceAuth(), {"authorization": "Bearer local"}, {}, "local") == ""
    assert pre_body(auth, {"authorization": "Bearer local"}, {}, "local") == "bad_token"
    body, now = b'{"a": 1}', 1_700_000_000
    assert signature(auth, sign("s2", body, now), body, now + 10, 300) == ""
    assert signature(auth, sign("s3", body, now), body, now, 300) == "bad_signature"
    assert signature(auth, sign("s1", body, now), body, now + 301, 300) == "stale_signature"
    assert signature(auth, "garbage", body, now, 300) == "bad_signature"


def test_credential_rotation_overlaps_for_tokens_and_query_codes() -> None:
    """Reliability H7: during a rotation both the old and the new credential are listed and both work;
    once the old one is removed it is refused, whichever kind it is."""
    rotating = SourceAuth(tokens=["old-token", "new-token"], query_secrets=["old-code", "new-code"])
    for token in ("old-token", "new-token"):
        assert pre_body(rotating, {"authorization": f"Bearer {token}"}, {}, None) == ""
    for code in ("old-code", "new-code"):
        assert pre_body(rotating, {}, {"code": code}, None) == ""
    rotated = SourceAuth(tokens=["new-token"], query_secrets=["new-code"])
    assert pre_body(rotated, {"authorization": "Bearer new-token"}, {}, None) == ""
    assert pre_body(rotated, {}, {"code": "new-code"}, None) == ""
    assert pre_body(rotated, {"authorization": "Bearer old-token"}, {}, None) == "bad_token"
    assert pre_body(rotated, {}, {"code": "old-code"}, None) == "bad_code"


def test_readiness_and_store_failures(tmp_path: Path) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"data_dir: {tmp_path / 'var'}\nhttp:\n  max_backlog: 10\n", encoding="utf-8")
    store = Store(tmp_path / "vigil.db")
    state = RunState(settings=load_settings(profile, env={}), store=store)
    state.ingest.running, state.ingest.last_scan_at, state.ingest.last_scan_ok = True, time.time(), True
    state.local_token = "tok"
    lag = [0]
    state.backlog = lambda: lag[0]

    async def calls() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=direct(create_app(state), state))  # (as the daemon serves)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            ready = await c.get("/readyz")
            lag[0] = 50
            behind = await c.get("/readyz")
            lag[0] = 0
            store.close()  # the store fails under the endpoint: 503 with Retry-After, counted
            failed = await c.post("/v1/events", content=json.dumps(ACTIVITY), headers=_bearer("tok"))
            return [ready, behind, failed]

    ready, behind, failed = asyncio.run(calls())
    assert ready.status_code == 200
    assert behind.status_code == 503 and "50 events behind" in behind.json()["reason"]
    assert failed.status_code == 503 and failed.headers["retry-after"] == "5"
    assert state.http_ingest.store_errors == {"events": 1}


def test_an_empty_local_token_file_is_replaced(tmp_path: Path) -> None:
    from vigil.api.auth import local_token

    (tmp_path / "ingest.token").write_text("")  # what a crash mid-creation could once leave
    token = local_token(tmp_path)
    assert len(token) > 20 and local_token(tmp_path) == token
    assert (tmp_path / "ingest.token").stat().st_mode & 0o777 == 0o600


def front(tmp_path: Path, http: str, local: str) -> tuple[RunState, Any]:
    """A run state on a fresh store with ``http`` (YAML lines under ``http:``) and the daemon's ingestion
    front over its app (an ASGI app for httpx.ASGITransport), detection never behind."""
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"data_dir: {tmp_path / 'var'}\nhttp:\n{http}", encoding="utf-8")
    state = RunState(settings=load_settings(profile, env={}), store=Store(tmp_path / "vigil.db"))
    state.local_token = local
    state.backlog = lambda: 0
    return state, direct(create_app(state), state)


def test_bodies_held_at_once_are_bounded_and_the_budget_is_given_back(tmp_path: Path) -> None:
    """http.max_buffered_bytes: while one call reads its body (sent without Content-Length: it counts as
    max_body_bytes), a second is answered 429 before its body is read; once the first is done, calls go
    through again. (A flood of large bodies, or of HMAC callers whose signature needs the body, cannot
    make the daemon hold max_connections x max_body_bytes.)"""
    state, app = front(tmp_path, "  max_body_bytes: 64KiB\n  max_buffered_bytes: 64KiB\n", "tok")
    body = json.dumps(ACTIVITY).encode()

    async def main() -> tuple[int, int, int, int, int]:
        gate = asyncio.Event()

        async def slow_body() -> Any:
            yield body[:10]
            await gate.wait()
            yield body[10:]

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first = asyncio.create_task(
                client.post("/v1/events", content=slow_body(), headers=_bearer("tok"))
            )
            while state.http_ingest.buffered == 0:
                await asyncio.sleep(0.01)
            held = state.http_ingest.buffered
            second = await client.post("/v1/events", content=body, headers=_bearer("tok"))
            gate.set()
            done = await first
            third = await client.post("/v1/events", content=body, headers=_bearer("tok"))
            return held, second.status_code, done.status_code, third.status_code, state.http_ingest.buffered

    held, second, first, third, after = asyncio.run(main())
    assert held == 64 * 1024 and second == 429 and first == 200 and third == 200 and after == 0
    assert state.http_ingest.throttled == {"events": 1}


def test_a_body_longer_than_its_content_length_is_refused_at_that_length(tmp_path: Path) -> None:
    """The budget reserves what a call declares, so the body is read no further than that (a parser that
    lets Content-Length and chunked coding through together could otherwise send more)."""
    state, app = front(tmp_path, "  max_body_bytes: 64KiB\n", "tok")
    body = json.dumps(ACTIVITY).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/events",
        "raw_path": b"/v1/events",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"authorization", b"Bearer tok"), (b"content-length", b"10")],
        "server": ("t", 80),
        "client": ("127.0.0.1", 1),
    }
    chunks = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 400 and b"Content-Length of 10" in sent[1]["body"]
    assert state.http_ingest.buffered == 0 and state.store is not None and state.store.count_events() == 0
