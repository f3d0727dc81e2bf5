"""Entra ID bearer tokens on the ingestion endpoints (``vigil.api.entra``), against a loopback keys endpoint
serving this test's own RSA keys: the JWT attacks of reliability row E5 and the claim checks of E4, then
a token through the daemon's ingestion front (accepted, and refused with its reason counted)."""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.api.test_ingest import front
from vigil.api import entra
from vigil.settings import SourceAuth

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
APP = "api://vigil-ingest"
ROLE = "AzureEventGridSecureWebhookSubscriber"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(n: int) -> str:
    return _b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def jwk(key: rsa.RSAPrivateKey, kid: str, **extra: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "use": "sig", "kid": kid, "n": _int(numbers.n), "e": _int(numbers.e), **extra}


class Keys:
    """The tenant's keys endpoint on 127.0.0.1: serves ``doc`` (or fails), counts the fetches."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {"keys": [jwk(KEY, "k1")]}
        self.fail = False
        self.fetches = 0
        keys = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                keys.fetches += 1
                body = json.dumps(keys.doc).encode()
                self.send_response(503 if keys.fail else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/{TENANT}/discovery/v2.0/keys"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def keys() -> Iterator[Keys]:
    served = Keys()
    try:
        yield served
    finally:
        served.close()
        entra._KEYSETS.clear()


def auth(keys: Keys, **changes: Any) -> SourceAuth:
    fields: dict[str, Any] = {
        "entra_tenant": TENANT,
        "entra_audiences": [APP],
        "entra_roles": [ROLE],
        "entra_jwks_url": keys.url,
        "entra_leeway": 60,
    }
    return SourceAuth(**(fields | changes))


def claims(**changes: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {
        "aud": APP,
        "iss": f"https://sts.windows.net/{TENANT}/",
        "tid": TENANT,
        "iat": now - 10,
        "nbf": now - 10,
        "exp": now + 3600,
        "roles": [ROLE],
        "appid": "4962773b-9cdb-44cf-a8bf-237846a00ab7",
    }
    return {k: v for k, v in (base | changes).items() if v is not None}


def token(body: dict[str, Any], *, key: rsa.RSAPrivateKey = KEY, kid: str = "k1", **header: Any) -> str:
    head = {"alg": "RS256", "typ": "JWT", "kid": kid} | header
    signed = f"{_b64(json.dumps(head).encode())}.{_b64(json.dumps(body).encode())}"
    if head["alg"] == "RS256":
        sig = key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    elif head["alg"] == "HS256":  # the classic confusion: the RSA public key used as an HMAC secret
        pem = KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        mac = hmac.HMAC(pem, hashes.SHA256())
        mac.update(signed.encode())
        sig = mac.finalize()
    else:
        sig = b""
    return f"{signed}.{_b64(sig)}"


def _nested() -> str:
    """A header nested deep enough to exhaust the JSON parser (before any signature is looked at)."""
    head = _b64(('{"alg":"RS256","kid":"k1","x":' + "[" * 5000 + "]" * 5000 + "}").encode())
    return f"{head}.{_b64(b'{}')}.{_b64(b'sig')}"


def _raw_exp(number: str) -> str:
    """A token, properly signed, whose exp is ``number`` as written (beyond what a float holds)."""
    body = json.dumps(claims(exp=None))[:-1] + f', "exp": {number}}}'
    head = _b64(json.dumps({"alg": "RS256", "kid": "k1"}).encode())
    signed = f"{head}.{_b64(body.encode())}"
    return f"{signed}.{_b64(KEY.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256()))}"


def check(source: SourceAuth, jwt: str) -> str:
    return asyncio.run(entra.verify(source, jwt))


def test_a_token_from_the_tenant_for_the_app_with_the_role_is_accepted(keys: Keys) -> None:
    assert check(auth(keys), token(claims())) == ""
    v2 = claims(iss=f"https://login.microsoftonline.com/{TENANT}/v2.0", aud=[APP, "other"])
    assert check(auth(keys), token(v2)) == ""
    assert keys.fetches == 1  # the keys are fetched once and kept


@pytest.mark.parametrize(
    ("jwt", "reason"),
    [
        (lambda: token(claims(), alg="none"), "bad_token"),
        (lambda: token(claims(), alg="HS256"), "bad_token"),
        (lambda: token(claims(), key=OTHER), "bad_signature"),
        (lambda: token(claims(exp=None)), "bad_token"),
        (lambda: token(claims(exp=int(time.time()) - 3600)), "expired"),
        (lambda: token(claims(nbf=int(time.time()) + 3600)), "not_yet_valid"),
        (lambda: token(claims(aud="api://someone-else")), "wrong_audience"),
        (lambda: token(claims(iss="https://sts.windows.net/another-tenant/")), "wrong_issuer"),
        (lambda: token(claims(tid="another-tenant")), "wrong_issuer"),
        (lambda: token(claims(roles=["SomethingElse"])), "missing_role"),
        (lambda: token(claims(roles=None)), "missing_role"),
        (lambda: token(claims(), kid="not-a-key"), "unknown_key"),
        (lambda: token(claims()) + "x" * entra.MAX_TOKEN_CHARS, "bad_token"),
        (lambda: "not.a.jwt", "bad_token"),
        (lambda: "onlyonepart", "bad_token"),
        (_nested, "bad_token"),
        (lambda: token(claims(exp=float("nan"))), "bad_token"),
        (lambda: token(claims(exp=True)), "bad_token"),
        (lambda: token(claims(exp=str(int(time.time()) + 60))), "bad_token"),
        (lambda: _raw_exp("1e400"), "bad_token"),
        (lambda: _raw_exp("1" + "0" * 400), "bad_token"),
        (lambda: token(claims(nbf=float("nan"))), "not_yet_valid"),
    ],
)
def test_attacks_and_wrong_claims_are_refused_with_their_reason(keys: Keys, jwt: Any, reason: str) -> None:
    assert check(auth(keys), jwt()) == reason


def test_leeway_follows_the_setting(keys: Keys) -> None:
    late = token(claims(exp=int(time.time()) - 30))  # expired 30 s ago
    assert check(auth(keys, entra_leeway=0), late) == "expired"
    assert check(auth(keys, entra_leeway=60), late) == ""


def test_keys_named_by_the_token_are_never_fetched(keys: Keys) -> None:
    """jku / x5u / jwk in the header point at an attacker's keys: ignored, only the tenant's are used."""
    elsewhere = Keys()
    elsewhere.doc = {"keys": [jwk(OTHER, "evil")]}
    try:
        forged = token(
            claims(), key=OTHER, kid="evil", jku=elsewhere.url, x5u=elsewhere.url, jwk=jwk(OTHER, "evil")
        )
        assert check(auth(keys), forged) == "unknown_key"
        assert elsewhere.fetches == 0
    finally:
        elsewhere.close()


def test_keys_for_another_algorithm_or_too_short_are_not_used(keys: Keys) -> None:
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    keys.doc = {
        "keys": [
            jwk(KEY, "k1", alg="RS384"),
            {"kty": "oct", "kid": "k2", "k": _b64(b"secret")},
            jwk(short, "k3"),
        ]
    }
    assert check(auth(keys), token(claims())) == "unknown_key"
    assert check(auth(keys), token(claims(), kid="k2")) == "key_not_fetched"
    assert check(auth(keys), token(claims(), key=short, kid="k3")) == "key_not_fetched"


def test_unknown_kids_refetch_the_keys_at_most_once_per_interval(keys: Keys) -> None:
    source = auth(keys)
    assert check(source, token(claims())) == ""
    for i in range(20):  # made-up kids right after a fetch: not checkable now (503), no fetch
        assert check(source, token(claims(), kid=f"made-up-{i}")) == "key_not_fetched"
    assert keys.fetches == 1
    entra.keyset(keys.url).fetched_at = time.monotonic() - entra.REFETCH_AFTER  # the interval has passed
    keys.doc = {"keys": [jwk(KEY, "k1"), jwk(OTHER, "k2")]}  # Entra rotated in a new key
    assert check(source, token(claims(), key=OTHER, kid="k2")) == ""
    assert keys.fetches == 2
    entra.keyset(keys.url).fetched_at = time.monotonic() - entra.REFETCH_AFTER
    assert check(source, token(claims(), kid="still-made-up")) == "unknown_key"  # fetched: really unknown


def test_known_keys_are_fetched_again_hourly_and_a_withdrawn_one_stops_working(keys: Keys) -> None:
    source = auth(keys)
    assert check(source, token(claims())) == ""
    keys.doc = {"keys": [jwk(OTHER, "k2")]}  # k1 withdrawn
    assert check(source, token(claims())) == ""  # (the set is fresh: not fetched for a known key)
    entra.keyset(keys.url).fetched_at = time.monotonic() - entra.REFRESH_AFTER
    assert check(source, token(claims())) == "unknown_key" and keys.fetches == 2


def test_keys_that_cannot_be_fetched_refuse_the_call(keys: Keys) -> None:
    keys.fail = True
    assert check(auth(keys), token(claims())) == "keys_unavailable"
    assert check(auth(keys), token(claims())) == "keys_unavailable"  # (no retry within RETRY_FAILED)
    assert keys.fetches == 1
    keys.fail = False
    entra.keyset(keys.url).fetched_at = time.monotonic() - entra.RETRY_FAILED
    assert check(auth(keys), token(claims())) == ""


def test_entra_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="entra_audiences and entra_roles"):
        SourceAuth(entra_tenant=TENANT, entra_audiences=[APP])
    with pytest.raises(ValueError, match="tenant id"):
        SourceAuth(entra_tenant="contoso.onmicrosoft.com", entra_audiences=[APP], entra_roles=[ROLE])
    with pytest.raises(ValueError, match="https"):
        SourceAuth(
            entra_tenant=TENANT,
            entra_audiences=[APP],
            entra_roles=[ROLE],
            entra_jwks_url="http://keys.example",
        )
    upper = SourceAuth(entra_tenant=TENANT.upper(), entra_audiences=[APP], entra_roles=[ROLE])
    assert upper.entra_tenant == TENANT  # as the issuer writes it


def test_through_the_ingestion_front(keys: Keys, tmp_path: Path) -> None:
    state, app = front(
        tmp_path,
        f"  sources:\n    eventgrid:\n      entra_tenant: {TENANT}\n      entra_audiences: [{APP}]\n"
        f"      entra_roles: [{ROLE}]\n      entra_jwks_url: {keys.url}\n",
        "local",
    )
    delivery = [
        {
            "id": "e-1",
            "topic": "/subscriptions/s1/resourceGroups/g1/providers/Microsoft.KeyVault/vaults/kv1",
            "subject": "secret1",
            "eventType": "Microsoft.KeyVault.SecretNearExpiry",
            "eventTime": "2026-11-28T00:00:00Z",
            "data": {"ObjectName": "secret1", "VaultName": "kv1"},
            "dataVersion": "1",
            "metadataVersion": "1",
        }
    ]

    async def post(jwt: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.post(
                "/v1/webhooks/eventgrid", json=delivery, headers={"Authorization": f"Bearer {jwt}"}
            )

    ok = asyncio.run(post(token(claims())))
    assert ok.status_code == 200 and ok.json()["accepted"] == 1, ok.text
    assert asyncio.run(post(token(claims(roles=["Reader"])))).status_code == 401
    assert (
        asyncio.run(post("local")).status_code == 401
    )  # a source with Entra set no longer takes the local token
    keys.fail = True
    entra.keyset(keys.url).keys.clear()
    entra.keyset(keys.url).fetched_at = None
    unavailable = asyncio.run(post(token(claims())))  # refused, but as "retry", which Azure's senders do
    assert unavailable.status_code == 503 and unavailable.headers["retry-after"] == "30"
    assert state.http_ingest.rejected == {
        ("eventgrid", "missing_role"): 1,
        ("eventgrid", "bad_token"): 1,
        ("eventgrid", "keys_unavailable"): 1,
    }
