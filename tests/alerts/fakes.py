"""Loopback fakes of PagerDuty, Teams Workflows, Slack and a signed-webhook receiver, with a ledger.

Each fake is a real HTTP/1.1 server on ``127.0.0.1:0`` (one thread per connection, keep-alive like the real
services), so sinks are tested through httpx, sockets and all, never through a mocked client. Every request
that arrives is kept in :attr:`FakeServer.ledger`, whatever the answer was.

Behaviour is scripted per fake with :meth:`FakeServer.script`: a :class:`Rule` answers matching requests with
a status (``429`` with ``Retry-After``, ``503``, ``400`` with a body), sleeps first (a slow service), or
*accepts then resets*: the request is processed as a success would be (PagerDuty applies the event) and the
socket is closed with an RST instead of an answer, the ambiguous failure of reliability.md D3. A rule applies
to its first ``times`` matching requests and/or for ``for_seconds`` of the fake's clock from when it was
added; the clock is injectable (:class:`ManualClock`) so "429 for 60 s" needs no real minute. Rules are
tried in the order added; a request no live rule takes gets the service's documented default answer.

Defaults enforce the documented contracts (``../shared/reference/azure.md`` §6): PagerDuty validates Events
v2 (:func:`pagerduty_errors`), answers ``202 {"status": "success", "dedup_key": ...}`` and keeps incidents
with its dedup semantics (one open alert per routing key and dedup key; a trigger after resolve opens a new
one; acknowledge/resolve of an unknown key are dropped); Teams answers ``202`` and, like a real flow, only
"fails the run" later for a card over 28 KB; Slack answers ``200 ok`` or its 4xx codes.

Usage::

    with FakePagerDuty() as pd:
        pd.script(Rule(status=429, headers={"Retry-After": "1"}, times=2))
        delivery = asyncio.run(deliver(sink_for(pd), alert))
        assert len(pd.incidents_for(alert.dedup_key)) == 1
"""

from __future__ import annotations

import http.server
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Self

import httpx
import orjson

from vigil.alerts.model import Alert, Delivery, Sink
from vigil.alerts.webhook import verify_signature

PD_ACTIONS = frozenset({"trigger", "acknowledge", "resolve"})
PD_SEVERITIES = frozenset({"critical", "error", "warning", "info"})
PD_EVENT_LIMIT = 512 * 1024
TEAMS_LIMIT = 28 * 1024
ROUTING_KEY = "R0UTINGKEY0123456789abcdefABCDEF"  # 32 characters, like a real integration key


class ManualClock:
    """A clock tests move by hand (``advance``), for "for 60 s" rules without waiting a minute."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Received:
    """One request as the fake saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int | None = None  # what was answered; None when the connection was reset instead

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class Rule:
    """A scripted answer for the first ``times`` matching requests and/or for ``for_seconds``."""

    status: int = 200
    body: bytes | str | dict[str, Any] = b""
    headers: dict[str, str] = field(default_factory=dict)
    times: int | None = None
    for_seconds: float | None = None
    delay: float = 0.0  # seconds to sleep before answering (real time: the client's timeout is real)
    reset: bool = False  # process as a success, then close the socket without answering
    path: str | None = None  # only requests to this path (None: every path)
    used: int = 0
    until: float | None = None

    def live(self, now: float) -> bool:
        return (self.times is None or self.used < self.times) and (self.until is None or now < self.until)

    def payload(self) -> bytes:
        if isinstance(self.body, dict):
            return orjson.dumps(self.body)
        return self.body.encode() if isinstance(self.body, str) else self.body


class FakeServer:
    """A threaded loopback HTTP server with a ledger and scripted rules; subclasses give the defaults."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.ledger: list[Received] = []
        self.rules: list[Rule] = []
        self.lock = threading.Lock()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=type(self).__name__,
            daemon=True,
        )

    # -- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    # -- scripting ---------------------------------------------------------------------------------------
    def script(self, rule: Rule) -> Rule:
        """Add a rule (tried in order); ``for_seconds`` counts from now on the fake's clock."""
        with self.lock:
            if rule.for_seconds is not None:
                rule.until = self.clock() + rule.for_seconds
            self.rules.append(rule)
        return rule

    def received(self, path: str | None = None) -> list[Received]:
        with self.lock:
            return [r for r in self.ledger if path is None or r.path == path]

    # -- what subclasses define --------------------------------------------------------------------------
    def respond(self, request: Received) -> tuple[int, dict[str, str], bytes]:
        """The documented answer to a request no rule takes (applied to the fake's state)."""
        return 200, {}, b""

    # -- the server side ---------------------------------------------------------------------------------
    def _take_rule(self, request: Received) -> Rule | None:
        with self.lock:
            now = self.clock()
            for rule in self.rules:
                if (rule.path is None or rule.path == request.path) and rule.live(now):
                    rule.used += 1
                    return rule
        return None

    def _handler_class(self) -> type[http.server.BaseHTTPRequestHandler]:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet: the ledger is the log
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                request = Received(
                    "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body, fake.clock()
                )
                with fake.lock:
                    fake.ledger.append(request)
                rule = fake._take_rule(request)
                if rule is not None and rule.delay:
                    time.sleep(rule.delay)
                if rule is None or rule.reset:
                    status, headers, payload = fake.respond(request)
                else:
                    status, headers, payload = rule.status, rule.headers, rule.payload()
                if rule is not None and rule.reset:
                    self._reset()
                    return
                request.status = status
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:  # the client gave up first (its timeout): nothing left to answer
                    self.close_connection = True

            def _reset(self) -> None:
                # SO_LINGER 0: closing sends an RST, as a proxy or load balancer dropping the answer would
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                self.connection.close()

        return Handler


# -- PagerDuty -----------------------------------------------------------------------------------------------
def pagerduty_errors(event: Any, *, size: int = 0, strict_key: bool = True) -> list[str]:
    """What Events API v2 would reject in ``event`` (azure.md §6.2); empty when valid."""
    if not isinstance(event, dict):
        return ["Event object is not a JSON object"]
    errors: list[str] = []
    key = event.get("routing_key")
    if not isinstance(key, str) or (strict_key and len(key) != 32):
        errors.append("Length of 'routing_key' is incorrect (should be 32 characters)")
    action = event.get("event_action")
    if action not in PD_ACTIONS:
        errors.append("'event_action' is invalid (must be one of trigger, acknowledge, resolve)")
    dedup = event.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or not dedup or len(dedup) > 255):
        errors.append("'dedup_key' must be a string of at most 255 characters")
    if action in ("acknowledge", "resolve") and dedup is None:
        errors.append("'dedup_key' is required for acknowledge and resolve")
    if size > PD_EVENT_LIMIT:
        errors.append("Event is larger than 512 KB")
    if action != "trigger":
        return errors
    payload = event.get("payload")
    if not isinstance(payload, dict):
        return [*errors, "'payload' is missing or not an object"]
    summary = payload.get("summary")
    if not isinstance(summary, str) or not summary or len(summary) > 1024:
        errors.append("'payload.summary' is required and must be at most 1024 characters")
    if not isinstance(payload.get("source"), str) or not payload["source"]:
        errors.append("'payload.source' is required")
    if payload.get("severity") not in PD_SEVERITIES:
        errors.append("'payload.severity' must be one of critical, error, warning, info")
    if "timestamp" in payload:
        try:
            datetime.fromisoformat(str(payload["timestamp"]))
        except ValueError:
            errors.append("'payload.timestamp' is not ISO 8601")
    if "custom_details" in payload and not isinstance(payload["custom_details"], dict):
        errors.append("'payload.custom_details' must be an object")
    for link in event.get("links") or []:
        if not isinstance(link, dict) or not isinstance(link.get("href"), str):
            errors.append("'links' entries need an 'href'")
    return errors


@dataclass
class Incident:
    """One PagerDuty alert: opened by a trigger, changed by acknowledge/resolve with the same key."""

    routing_key: str
    dedup_key: str
    state: str = "triggered"
    events: list[dict[str, Any]] = field(default_factory=list)


class FakePagerDuty(FakeServer):
    """Events API v2 at ``/v2/enqueue`` and change events at ``/v2/change/enqueue``."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, strict_key: bool = True) -> None:
        super().__init__(clock=clock)
        self.strict_key = strict_key
        self.incidents: list[Incident] = []
        self.changes: list[dict[str, Any]] = []
        self.dropped: list[dict[str, Any]] = []  # acknowledge/resolve with no open alert

    @property
    def enqueue_url(self) -> str:
        return self.url("/v2/enqueue")

    def incidents_for(self, dedup_key: str) -> list[Incident]:
        with self.lock:
            return [i for i in self.incidents if i.dedup_key == dedup_key]

    def respond(self, request: Received) -> tuple[int, dict[str, str], bytes]:
        json_headers = {"Content-Type": "application/json"}
        try:
            event = request.json()
        except orjson.JSONDecodeError:
            return 400, json_headers, orjson.dumps({"status": "invalid event", "message": "Invalid JSON"})
        if request.path == "/v2/change/enqueue":
            payload = event.get("payload") if isinstance(event, dict) else None
            summary = payload.get("summary") if isinstance(payload, dict) else None
            if not isinstance(summary, str) or not summary or len(summary) > 1024:
                body = {
                    "status": "invalid event",
                    "message": "Event object is invalid",
                    "errors": ["summary"],
                }
                return 400, json_headers, orjson.dumps(body)
            with self.lock:
                self.changes.append(event)
            return 202, json_headers, orjson.dumps({"status": "success", "message": "Change event processed"})
        if request.path != "/v2/enqueue":
            return 404, json_headers, orjson.dumps({"status": "not found"})
        errors = pagerduty_errors(event, size=len(request.body), strict_key=self.strict_key)
        if errors:
            body = {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
            return 400, json_headers, orjson.dumps(body)
        key = event.get("dedup_key") or uuid.uuid4().hex
        self._apply(event["routing_key"], key, event)
        body = {"status": "success", "message": "Event processed", "dedup_key": key}
        return 202, json_headers, orjson.dumps(body)

    def _apply(self, routing_key: str, dedup_key: str, event: dict[str, Any]) -> None:
        with self.lock:
            open_ = [
                i
                for i in self.incidents
                if i.routing_key == routing_key and i.dedup_key == dedup_key and i.state != "resolved"
            ]
            action = event["event_action"]
            if open_:
                open_[-1].events.append(event)
                if action != "trigger":
                    open_[-1].state = "acknowledged" if action == "acknowledge" else "resolved"
            elif action == "trigger":
                self.incidents.append(Incident(routing_key, dedup_key, events=[event]))
            else:
                self.dropped.append(event)


# -- Teams -----------------------------------------------------------------------------------------------------
class FakeTeams(FakeServer):
    """A Workflows trigger: ``202`` once queued; the "run" fails later for an invalid or oversized card."""

    path = "/workflows/4f1c/triggers/manual/paths/invoke"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock=clock)
        self.posted: list[dict[str, Any]] = []  # cards the flow would post
        self.failed_runs: list[str] = []  # why a queued run would fail (visible only in run history)

    @property
    def webhook_url(self) -> str:
        return self.url(
            f"{self.path}?api-version=1&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=S1gSecretValue0123"
        )

    def notification_ids(self) -> list[str]:
        """The ``vigil-<id>`` footer ids of posted cards, one per post (duplicates repeat)."""
        ids: list[str] = []
        for card in self.posted:
            ids += [b["id"] for b in card.get("body", []) if str(b.get("id", "")).startswith("vigil-")]
        return ids

    def respond(self, request: Received) -> tuple[int, dict[str, str], bytes]:
        try:
            message = request.json()
        except orjson.JSONDecodeError:
            body = {
                "error": {
                    "code": "InvalidRequestContent",
                    "message": "The request content is not valid JSON.",
                }
            }
            return 400, {"Content-Type": "application/json"}, orjson.dumps(body)
        attachments = message.get("attachments") if isinstance(message, dict) else None
        with self.lock:
            if len(request.body) > TEAMS_LIMIT:
                self.failed_runs.append("payload is too large")
            elif message.get("type") != "message" or not isinstance(attachments, list) or not attachments:
                self.failed_runs.append("not a message with attachments")
            elif attachments[0].get("contentType") != "application/vnd.microsoft.card.adaptive":
                self.failed_runs.append("attachment is not an Adaptive Card")
            else:
                self.posted.append(attachments[0]["content"])
        return 202, {}, b""


# -- Slack -----------------------------------------------------------------------------------------------------
class FakeSlack(FakeServer):
    """An incoming webhook: ``200 ok``, or a 4xx with Slack's plain-text error code."""

    path = "/services/T0000/B0000/XXXXXXXXXXXXXXXXXXXXXXXX"

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock=clock)
        self.messages: list[dict[str, Any]] = []

    @property
    def webhook_url(self) -> str:
        return self.url(self.path)

    def respond(self, request: Received) -> tuple[int, dict[str, str], bytes]:
        text = {"Content-Type": "text/plain"}
        if request.path != self.path:
            return 404, text, b"no_service"
        try:
            message = request.json()
        except orjson.JSONDecodeError:
            return 400, text, b"invalid_payload"
        if not isinstance(message, dict) or not (message.get("text") or message.get("blocks")):
            return 400, text, b"no_text"
        blocks = message.get("blocks") or []
        headers_ok = all(len(b["text"]["text"]) <= 150 for b in blocks if b.get("type") == "header")
        if len(blocks) > 50 or not headers_ok:
            return 400, text, b"invalid_blocks"
        with self.lock:
            self.messages.append(message)
        return 200, text, b"ok"


# -- a generic receiver --------------------------------------------------------------------------------------
class FakeReceiver(FakeServer):
    """A generic webhook receiver that checks the Vigil signature: 200 when valid, 401 when not."""

    def __init__(
        self, secret: str, *, clock: Callable[[], float] = time.monotonic, tolerance: float = 300
    ) -> None:
        super().__init__(clock=clock)
        self.secret = secret
        self.tolerance = tolerance
        self.accepted: list[dict[str, Any]] = []

    def respond(self, request: Received) -> tuple[int, dict[str, str], bytes]:
        stamp = request.headers.get("x-vigil-timestamp", "")
        signature = request.headers.get("x-vigil-signature", "")
        if not verify_signature(self.secret, stamp, request.body, signature, tolerance=self.tolerance):
            return 401, {}, b"bad signature"
        with self.lock:
            self.accepted.append(request.json())
        return 200, {}, b""


# -- helpers -----------------------------------------------------------------------------------------------------
async def deliver(sink: Sink, alert: Alert, *, timeout: float = 5.0) -> Delivery:
    """One ``send`` through a fresh client with the caller-set timeout, as the worker does it."""
    async with httpx.AsyncClient(timeout=timeout) as client:
        return await sink.send(client, alert)


def sample_alert(**changes: Any) -> Alert:
    """A realistic trigger alert (key released to a non-compliant node), with ``changes`` applied."""
    from vigil.alerts.model import AlertKind, dedup_key

    fields: dict[str, Any] = {
        "kind": AlertKind.TRIGGER,
        "dedup_key": dedup_key("skr.noncompliant", "kv-cctrain-weu/dek-llm-ckpt"),
        "rule": "skr.noncompliant",
        "title": "Key dek-llm-ckpt released to a non-compliant attestation",
        "severity": "high",
        "summary": "kv-cctrain-weu released dek-llm-ckpt to cvm-train-01 whose TCB is below the minimum.",
        "time": 1_795_513_651.118,
        "group": {"resource": "/subscriptions/3f9a/resourceGroups/rg-cctrain-weu/vaults/kv-cctrain-weu"},
        "incident_id": "inc-412",
        "finding_id": "fnd-9d8c",
        "count": 3,
        "details": {"caller_ip": "198.51.100.23", "node": "cvm-train-01", "tcb": {"snp": 8, "min": 10}},
        "actions": [
            {"remediation": "key.rotate", "target": "dek-llm-ckpt", "state": "succeeded", "id": "act-1"},
            {
                "remediation": "vm.quarantine",
                "target": "cvm-train-01",
                "state": "awaiting_approval",
                "id": "act-2",
            },
        ],
        "links": {
            "incident": "https://vigil.example/incidents/inc-412",
            "approve": "https://vigil.example/actions/act-2/approve",
            "reject": "https://vigil.example/actions/act-2/reject",
        },
    }
    fields.update(changes)
    return Alert(**fields)


def huge_alert(**changes: Any) -> Alert:
    """An alert far past every sink's size limit: megabytes of details, actions, group and text."""
    return sample_alert(
        title="T" * 10_000,
        summary="S" * 1_000_000,
        group={f"key{i}": "g" * 5_000 for i in range(50)},
        details={f"field{i}": "d" * 1_000 for i in range(3_000)},
        actions=[
            {"remediation": f"r{i}", "target": "t" * 300, "state": "pending", "id": str(i)}
            for i in range(2_000)
        ],
        **changes,
    )
