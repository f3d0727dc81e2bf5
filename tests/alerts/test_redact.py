"""Redaction (reliability D8): a corpus of canary secrets in nested structures never survives, in any
position (values, free text, lists, JSON written as text); the evidence around them (hashes,
measurements, ids, SAS expiry and permissions) does; logs are redacted by the filter."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.alerts.fakes import ROUTING_KEY, FakePagerDuty, FakeReceiver, FakeSlack, FakeTeams, sample_alert
from tests.alerts.test_worker import drive
from vigil.alerts.console import ConsoleSink
from vigil.alerts.dispatcher import AlertDispatcher
from vigil.alerts.model import Alert, AlertKind, Sink, dedup_key
from vigil.alerts.outbox import Outbox
from vigil.alerts.pagerduty import PagerDutySink
from vigil.alerts.redact import (
    REDACTED,
    RedactingFilter,
    is_key_name,
    is_secret_name,
    looks_like_key,
    redact,
    redact_alert,
    redact_all,
    redact_text,
)
from vigil.alerts.slack import SlackSink
from vigil.alerts.teams import TeamsSink
from vigil.alerts.webhook import WebhookSink

_RNG = random.Random(9)
B64_32 = base64.b64encode(_RNG.randbytes(32)).decode()  # an AES-256 key
B64_64 = base64.b64encode(_RNG.randbytes(64)).decode()  # a storage account key
HEX_KEY = _RNG.randbytes(32).hex()
SHA256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
MEASUREMENT = "3c" * 48  # SNP launch measurement: SHA-384, 96 hex characters
REPORT_DATA = "ab" * 64

#: canary -> where it hides; every canary is a secret that must never survive
CANARIES: dict[str, Any] = {
    "CANARYsig0aB": "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&sp=r&se=2026-01-01T00:00:00Z&sig=CANARYsig0aB%2Bc%3D",
    "CANARYenc12": "https://x.example/?next=https%3A%2F%2Facct.blob%2Fc%3Fsv%3D2022%26sig%3DCANARYenc12",
    "CANARYteamsSig": "https://prod-00.westus.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke"
    "?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=CANARYteamsSig",
    "CANARYbearer": "GET /x failed: Authorization: Bearer CANARYbearer.abc-def_ghi1234567",
    "CANARYbearer2": "retried with bearer CANARYbearer2xyzXYZ0123456789 after 401",
    "CANARYjwt": "token eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJDQU5BUlkifQ.CANARYjwt_Sig-abc in the log",
    "CANARYacctKEY": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=CANARYacctKEY+/==;EndpointSuffix=x",
    "CANARYsbKEY": "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey=CANARYsbKEY1=",
    "CANARYsbSAS": "SharedAccessSignature sr=sb%3A%2F%2Fns&sig=CANARYsbSAS%3D&se=1767225600&skn=Root",
    "CANARYpem": "key: -----BEGIN EC PRIVATE KEY-----\nMHcCAQEEICANARYpem\nAoGBAL\n-----END EC PRIVATE KEY-----",
    "CANARYtruncPem": "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANCANARYtruncPem",
    "CANARYjsonText": 'body was {"client_secret": "CANARYjsonText", "grant_type": "client_credentials"}',
    "CANARYyaml": "config:\n  password: CANARYyaml\n  user: bob",
    "CANARYurlPw": "amqps://vigil:CANARYurlPw@broker.example:5671/",
    "CANARYslack": "https://hooks.slack.com/services/T0000/B0000/CANARYslack",
    "CANARYghp": "pushed with ghp_CANARYghp0123456789abcdefghijklmnopq",
    "CANARYquery": "https://api.example/v1?api_key=CANARYquery&page=2",
    "CANARYfunc": "https://fn.azurewebsites.net/api/hook?code=CANARYfunc==&x=1",
    "CANARYpw": {"password": "CANARYpw"},
    "CANARYcs": {"clientSecret": "CANARYcs"},
    "CANARYsasTok": {"sasToken": "sv=2022&sig=CANARYsasTok"},
    "CANARYauth": {"headers": {"Authorization": "Basic CANARYauth", "Accept": "*/*"}},
    "CANARYconn": {"connectionString": "Server=tcp:db;Password=CANARYconn;"},
    "CANARYsig": {"sig": "CANARYsig"},
    "CANARYrouting": {"routing_key": "CANARYrouting0123456789abcdef0123"},
    "CANARYnested": {"credentials": {"user": "CANARYnested", "list": ["CANARYnested"], "n": 3}},
    "CANARYcookie": {"Set-Cookie": "session=CANARYcookie; HttpOnly"},
    "CANARYapiKey": {"X-Api-Key": "CANARYapiKey"},
    "CANARYaccess": {"access_token": "CANARYaccess", "token_type": "Bearer"},
    B64_32: {"key": B64_32},
    HEX_KEY: {"wrappedKey": HEX_KEY},
    B64_64: f"storage key rotated; old value {B64_64} was leaked",
}


def _deep(secret: Any, depth: int) -> Any:
    """``secret`` buried in lists, tuples and dicts."""
    for i in range(depth):
        secret = [{"level": i, "value": secret, "more": ("x", secret)}]
    return secret


@pytest.mark.parametrize("depth", [0, 1, 4])
def test_no_canary_survives_anywhere(depth: int) -> None:
    corpus = {f"item{i}": _deep(where, depth) for i, where in enumerate(CANARIES.values())}
    corpus["all text"] = " | ".join(w for w in CANARIES.values() if isinstance(w, str))
    out = json.dumps(redact(corpus))
    for canary in CANARIES:
        assert canary not in out, canary
    assert REDACTED in out


def test_each_free_text_canary_alone() -> None:
    for canary, where in CANARIES.items():
        if isinstance(where, str):
            assert canary not in redact_text(where), where


def test_the_screen_never_skips_a_match() -> None:
    """``redact_text`` skips the patterns when none of their literal triggers occurs; on the canaries, the
    evidence and random splices of both, it must give exactly what every pattern applied in turn gives."""
    texts = [w for w in CANARIES.values() if isinstance(w, str)]
    texts += [SHA256, MEASUREMENT, REPORT_DATA, B64_32, B64_64, "AKIA" + "A" * 16, "xoxb-0123456789ab"]
    texts += ["password:  x", "'token': 'x'", "eyJabcd.eyJabcd.x", "Bearer " + "a" * 20, "a://u:p@h"]
    # the second screens (a separator right after a name, an @ in a URL): names next to and away from
    # their separators, whitespace between, a long run of it, URL-encoded ones, and summaries that only
    # look alike (``sig`` in "assignment", ``field=value``)
    texts += ["sig \t= abc", "x-api-key%3Dv", "SIG\n=\nz", "token" + " " * 70 + "=v", "sig" + " " * 64 + "=v"]
    texts += [
        f"my {n}{' ' * k}{sep} v" for n in ("token", "password") for k in (55, 59, 60, 63) for sep in "=:"
    ]
    texts += ['"PassWord" :\t"v"', "'secret'\n: 'v'", "apikey :  v", "connection_string:\tv", "a sig= b"]
    texts += ["Role assignment created (actor.id=u1, resource.id=/r/sig)", "design: x=1, key=2", "ghp_ x"]
    texts += ["https://user:pw@host/x?sig=1", "mailto://a@b", "://x@", "%26sig%3Dq", "x%3Fpwd%3Dq"]
    rng = random.Random(5)
    for _ in range(3000):
        a, b = rng.choice(texts), rng.choice(texts)
        i, j = rng.randrange(len(a) + 1), rng.randrange(len(b) + 1)
        texts.append(a[:i] + rng.choice(["", " ", "\n", "=", "x"]) + b[j:])
    # generated name/separator/value sentences: every name the patterns know, in any case, with runs of
    # whitespace of any length up to well past the guards' view, each separator, and prose around them
    names = ["sig", "Signature", "AccountKey", "SharedAccessSignature", "password", "PASSWD", "pwd"]
    names += ["client_secret", "secret", "refresh_token", "token", "api-key", "x-api-key", "private_key"]
    names += ["secret_key", "connection_string", "'password'", '"Token"', "authorization", "assignment"]
    spaces = [" ", "\t", "\n", "\u00a0", "\u2003"]
    for _ in range(3000):
        gap = "".join(
            rng.choice(spaces) for _ in range(rng.choice([0, 1, 2, 8, 50, 60, 62, 63, 64, 70, 130]))
        )
        sep = rng.choice(["=", ":", ": ", "%3D", "%3d", " = "])
        lead = rng.choice(["", "x ", "%26", "%3F", "a_", '{"', "id=1, "])
        texts.append(f"{lead}{rng.choice(names)}{gap}{sep}{rng.choice(['v4lue', ' v', '[REDACTED]', ''])}")
    for text in texts:
        assert redact_text(text) == redact_all(text), text


def test_evidence_survives() -> None:
    evidence = {
        "sha256": SHA256,
        "measurement": MEASUREMENT,
        "report_data": REPORT_DATA,
        "text": f"launch measurement {MEASUREMENT} did not match; report digest {SHA256}",
        "event_ids": ["e-0001", "c0ffee00-1111-2222-3333-444455556666"],
        "resource": "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/acct",
        "key_id": "https://kv.vault.azure.net/keys/training-data/0123456789abcdef0123456789abcdef",
        "key": "training-data-key",
        "key_name": "training-data-key",
        "key_version": "0123456789abcdef0123456789abcdef",
        "public_key": "-----BEGIN PUBLIC KEY-----\nMHYwEAYHKoZIzj0CAQYFK4EEACIDYgAE\n-----END PUBLIC KEY-----",
        "dedup_key": dedup_key("t.rule", "203.0.113.9"),
        "idem_key": "0123456789abcdef0123456789abcdef",
        "signature": base64.b64encode(bytes(96)).decode() + "AbC",
        "max_tokens": 512,
        "tokenizer": "bpe",
        "enabled": True,
        "summary": "missing bearer token; exit code=1; authorization failed",
        "none": None,
    }
    assert redact(evidence) == evidence
    sas = "https://a.blob.core.windows.net/c/b?sv=2022-11-02&se=2026-01-01T00%3A00%3A00Z&sp=r&sig=abc"
    assert redact_text(sas) == sas.replace("sig=abc", f"sig={REDACTED}")  # expiry and rights stay


def test_names_and_values() -> None:
    for name in ("password", "clientSecret", "client_secret", "AccountKey", "sas", "sasToken", "SIG",
                 "connection_string", "Authorization", "privateKey", "id_token", "routingKey", "dek"):  # fmt: skip
        assert is_secret_name(name), name
    for name in ("key_id", "keyName", "tokenizer", "max_tokens_used", "signature", "dedup_key", "design"):
        assert not is_secret_name(name), name
    assert is_key_name("key") and is_key_name("wrappedKey") and is_key_name("primary_key")
    assert not is_key_name("key_id") and not is_key_name("public_key") and not is_key_name("dedupKey")
    assert looks_like_key(B64_32) and looks_like_key(HEX_KEY)
    assert not looks_like_key("training-data-key") and not looks_like_key("vigil-t-rule-0123456789abcdef0123")
    assert redact({"key": b"\x00" * 32, "data": b"kept"}) == {"key": REDACTED, "data": b"kept"}


def test_redact_alert_keeps_the_identity() -> None:
    alert = Alert(
        kind=AlertKind.TRIGGER, dedup_key=dedup_key("r", "g"), rule="r", title="SAS sig=CANARYt used",
        severity="high", summary="Bearer CANARYsummary0123456789", time=1.0, group={"sas": "CANARYgroup"},
        incident_id="i", finding_id="f", count=3, details={"password": "CANARYd"},
        actions=[{"target": "https://a/b?sig=CANARYa"}], links={"x": "https://a/b?sig=CANARYl"},
    )  # fmt: skip
    clean = redact_alert(alert)
    assert "CANARY" not in json.dumps(clean.to_json())
    assert (clean.kind, clean.dedup_key, clean.rule, clean.count, clean.incident_id) == (
        alert.kind, alert.dedup_key, alert.rule, 3, "i",
    )  # fmt: skip


def test_the_logging_filter_redacts_messages(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("vigil.test.redact")
    redactor = RedactingFilter()
    logger.addFilter(redactor)
    try:
        with caplog.at_level(logging.INFO, logger="vigil.test.redact"):
            logger.info("posting to %s", "https://h/x?sig=CANARYlog&se=1")
            logger.info("plain %d", 5)
    finally:
        logger.removeFilter(redactor)
    assert "CANARYlog" not in caplog.text and f"sig={REDACTED}&se=1" in caplog.text
    assert "plain 5" in caplog.text


def test_a_canary_secret_never_reaches_any_sink(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Reliability D8 end to end: an alert built carelessly from an event full of secrets goes through the
    outbox to all five sinks; a grep over every captured outbound body, the console file, the outbox
    database and the log finds no canary."""
    canaries = {k: v for k, v in CANARIES.items() if k.startswith("CANARY")}
    careless = replace(
        sample_alert(time=time.time()),
        summary=" ".join(v for v in canaries.values() if isinstance(v, str))[:900],
        details={"event": {f"field{i}": _deep(v, 2) for i, v in enumerate(canaries.values())}},
        group={"sas": "CANARYsasGroupValue", "resource": "kv-cctrain-weu"},
        actions=[{"remediation": "storage.lock", "target": CANARIES["CANARYsig0aB"], "state": "pending"}],
    )
    outbox = Outbox(tmp_path / "vigil.db")

    async def scenario() -> list[bytes]:
        async with httpx.AsyncClient(timeout=5.0) as client:
            with (
                FakePagerDuty() as pd,
                FakeTeams() as teams,
                FakeSlack() as slack,
                FakeReceiver("k3y") as hook,
            ):
                sinks: dict[str, Sink] = {
                    "pd": PagerDutySink("pd", {"routing_key": ROUTING_KEY, "url": pd.enqueue_url}),
                    "teams": TeamsSink("teams", {"url": teams.webhook_url}),
                    "slack": SlackSink("slack", {"url": slack.webhook_url}),
                    "hook": WebhookSink("hook", {"url": hook.url("/hook"), "secret": "k3y"}),
                    "console": ConsoleSink("console", {"path": str(tmp_path / "alerts.jsonl")}),
                }
                d = AlertDispatcher(outbox, sinks, client)
                await d.submit(list(sinks), careless)
                await drive(d, lambda: sum(s["sent"] for s in outbox.stats().values()) == 5)
                assert (
                    len(pd.incidents) == len(teams.posted) == len(slack.messages) == len(hook.accepted) == 1
                )
                return [r.body for fake in (pd, teams, slack, hook) for r in fake.received()]

    with caplog.at_level(logging.DEBUG):
        bodies = asyncio.run(scenario())
    outbox.close()
    captured = [*bodies, (tmp_path / "alerts.jsonl").read_bytes(), (tmp_path / "vigil.db").read_bytes()]
    captured.append(caplog.text.encode())
    hits = [(c, i) for c in canaries for i, body in enumerate(captured) if c.encode() in body]
    assert hits == []
    assert all(b"kv-cctrain-weu" in body for body in captured[:5])  # the evidence did arrive
