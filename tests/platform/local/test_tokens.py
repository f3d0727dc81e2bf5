"""The local attestation service's signing key and the JWKS verifier that the key vault trusts."""

from __future__ import annotations

import base64
import datetime
import json
import re
import stat
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from vigil.platform.errors import IntegrityError, ReleaseDeniedError
from vigil.platform.local.masterkey import MasterKey
from vigil.platform.local.tokens import JwksTokenVerifier, TokenIssuer, jwk_thumbprint

from .conftest import ISSUER, ClaimsFor


def denied(verifier: JwksTokenVerifier, token: str) -> str:
    with pytest.raises(ReleaseDeniedError) as caught:
        verifier.verify(token)
    return caught.value.reason


def forge(key: rsa.RSAPrivateKey, payload: dict[str, Any], **header: Any) -> str:
    """A token signed by ``key`` with exactly this payload and header (for shapes TokenIssuer never makes)."""
    return jwt.encode(payload, key, algorithm="RS256", headers=header)


def times(offset: float = 0, ttl: float = 3600) -> dict[str, int]:
    now = int(time.time() + offset)
    return {"iat": now, "nbf": now, "exp": int(now + ttl)}


def test_issued_tokens_have_the_maa_shape_and_verify(
    token_issuer: TokenIssuer, claims_for: ClaimsFor
) -> None:
    token = token_issuer.issue(claims_for(None), ttl=28800)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "RS256", "typ": "JWT", "kid": token_issuer.kid, "jku": ISSUER + "/certs"}
    verified = JwksTokenVerifier({ISSUER: token_issuer.jwks()}).verify(token)
    claims = verified.claims
    assert verified.issuer == ISSUER and claims["iss"] == ISSUER
    assert claims["exp"] - claims["iat"] == 28800 and claims["nbf"] == claims["iat"]
    assert verified.expires == float(claims["exp"])
    assert len(claims["jti"]) == 64 and int(claims["jti"], 16) >= 0
    assert claims["x-ms-attestation-type"] == "sevsnpvm"
    assert token_issuer.issue({}, ttl=60) != token_issuer.issue({}, ttl=60)  # a fresh jti each time


def test_jwks_publishes_only_the_public_key(token_issuer: TokenIssuer, issuer_key: rsa.RSAPrivateKey) -> None:
    (jwk,) = token_issuer.jwks()["keys"]
    assert set(jwk) == {"kty", "kid", "alg", "use", "n", "e"}
    assert jwk["kid"] == jwk_thumbprint(issuer_key.public_key()) == token_issuer.kid
    assert (jwk["alg"], jwk["use"], jwk["kty"]) == ("RS256", "sig", "RSA")
    assert repr(token_issuer) == f"TokenIssuer(issuer='{ISSUER}', kid='{token_issuer.kid}')"


def test_reserved_claims_belong_to_the_issuer(token_issuer: TokenIssuer) -> None:
    with pytest.raises(ValueError, match="exp, jti"):
        token_issuer.issue({"exp": 1, "jti": "x", "nonce": "ok"}, ttl=60)


def test_expired_and_not_yet_valid_tokens(token_issuer: TokenIssuer) -> None:
    verifier = JwksTokenVerifier({ISSUER: token_issuer.jwks()}, leeway=60)
    assert re.fullmatch(  # reliability I1: the refusal says how far off the clock is
        r"expired \((3599|3600|3601) s past exp, leeway 60 s; is a clock off\?\)",
        denied(verifier, token_issuer.issue({}, ttl=3600, now=time.time() - 7200)),
    )
    # inside the leeway a token that just expired still verifies; without leeway it does not
    just_expired = token_issuer.issue({}, ttl=3600, now=time.time() - 3630)
    assert verifier.verify(just_expired).issuer == ISSUER
    strict = denied(JwksTokenVerifier({ISSUER: token_issuer.jwks()}, leeway=0), just_expired)
    assert re.fullmatch(r"expired \(3[01] s past exp, leeway 0 s; is a clock off\?\)", strict)
    ahead = denied(verifier, token_issuer.issue({}, ttl=3600, now=time.time() + 600))
    assert re.fullmatch(r"not yet valid \((599|600|601) s until iat, leeway 60 s; is a clock off\?\)", ahead)


def test_untrusted_issuer_and_unknown_key(
    token_issuer: TokenIssuer, rogue_key: rsa.RSAPrivateKey, issuer_key: rsa.RSAPrivateKey
) -> None:
    verifier = JwksTokenVerifier({ISSUER: token_issuer.jwks()})
    rogue = TokenIssuer(rogue_key, "https://rogue.example")
    assert denied(verifier, rogue.issue({}, ttl=600)) == "untrusted issuer"
    # the rogue key claiming our issuer: its own kid is not in our JWKS
    impostor = TokenIssuer(rogue_key, ISSUER)
    assert denied(verifier, impostor.issue({}, ttl=600)) == "unknown key id"
    # ... and borrowing our kid does not help: the signature does not verify
    payload = {"iss": ISSUER, "jti": "a" * 64, **times()}
    assert denied(verifier, forge(rogue_key, payload, kid=token_issuer.kid)) == "bad signature"
    assert denied(verifier, forge(issuer_key, payload)) == "unknown key id"  # no kid at all


def test_jku_pointing_elsewhere_changes_nothing(
    token_issuer: TokenIssuer, rogue_key: rsa.RSAPrivateKey
) -> None:
    verifier = JwksTokenVerifier({ISSUER: token_issuer.jwks()})
    rogue = TokenIssuer(rogue_key, ISSUER)
    payload = {"iss": ISSUER, "jti": "b" * 64, **times()}
    token = forge(rogue_key, payload, kid=rogue.kid, jku="https://rogue.example/certs")
    assert denied(verifier, token) == "unknown key id"


def test_a_tampered_payload_fails_the_signature(token_issuer: TokenIssuer, claims_for: ClaimsFor) -> None:
    verifier = JwksTokenVerifier({ISSUER: token_issuer.jwks()})
    head, body, sig = token_issuer.issue(claims_for(None), ttl=600).split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["x-ms-sevsnpvm-is-debuggable"] = True
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    assert denied(verifier, f"{head}.{forged}.{sig}") == "bad signature"


def test_algorithm_confusion_and_none_are_refused(
    token_issuer: TokenIssuer, issuer_key: rsa.RSAPrivateKey
) -> None:
    verifier = JwksTokenVerifier({ISSUER: token_issuer.jwks()})
    payload = {"iss": ISSUER, **times()}
    public_pem = issuer_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # HS256 keyed with the public key: the classic confusion attack
    head = (
        base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": token_issuer.kid}).encode())
        .decode()
        .rstrip("=")
    )
    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")
    import hmac

    mac = hmac.new(public_pem, f"{head}.{body}".encode(), "sha256").digest()
    hs256 = f"{head}.{body}.{base64.urlsafe_b64encode(mac).decode().rstrip('=')}"
    assert denied(verifier, hs256) == "unsupported algorithm"
    none = jwt.encode(payload, None, algorithm="none")
    assert denied(verifier, none) == "unsupported algorithm"


@pytest.mark.parametrize("token", ["", "abc", "a.b.c", "x" * 70_000, "e30.e30.e30"])
def test_malformed_tokens(token_issuer: TokenIssuer, token: str) -> None:
    verifier = JwksTokenVerifier({ISSUER: token_issuer.jwks()})
    assert denied(verifier, token) in {"malformed token", "unsupported algorithm"}


def test_required_time_claims(token_issuer: TokenIssuer, issuer_key: rsa.RSAPrivateKey) -> None:
    verifier = JwksTokenVerifier({ISSUER: token_issuer.jwks()})
    for missing in ("exp", "iat", "nbf"):
        payload = {"iss": ISSUER, **times()}
        del payload[missing]
        assert denied(verifier, forge(issuer_key, payload, kid=token_issuer.kid)) == "malformed token"
    no_issuer = times()
    assert denied(verifier, forge(issuer_key, no_issuer, kid=token_issuer.kid)) == "malformed token"


def test_trailing_slashes_do_not_matter(token_issuer: TokenIssuer, issuer_key: rsa.RSAPrivateKey) -> None:
    verifier = JwksTokenVerifier({ISSUER + "/": token_issuer.jwks()})
    assert verifier.verify(token_issuer.issue({}, ttl=60)).issuer == ISSUER
    slashed = forge(issuer_key, {"iss": ISSUER + "/", **times()}, kid=token_issuer.kid)
    assert JwksTokenVerifier({ISSUER: token_issuer.jwks()}).verify(slashed).issuer == ISSUER


def test_maa_style_jwks_with_only_a_certificate(
    token_issuer: TokenIssuer, issuer_key: rsa.RSAPrivateKey
) -> None:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "attest.vigil.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(issuer_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(issuer_key, hashes.SHA256())
    )
    der = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    jwks = {"keys": [{"kty": "RSA", "kid": token_issuer.kid, "x5c": [der]}]}
    assert JwksTokenVerifier({ISSUER: jwks}).verify(token_issuer.issue({}, ttl=60)).issuer == ISSUER


def test_jwks_that_cannot_be_pinned_are_refused(token_issuer: TokenIssuer) -> None:
    with pytest.raises(ValueError, match="no 'keys' array"):
        JwksTokenVerifier({ISSUER: {}})
    with pytest.raises(ValueError, match="no RSA signing key"):
        JwksTokenVerifier({ISSUER: {"keys": [{**token_issuer.jwks()["keys"][0], "use": "enc"}]}})
    with pytest.raises(ValueError, match="has no kid"):
        JwksTokenVerifier(
            {ISSUER: {"keys": [{k: v for k, v in token_issuer.jwks()["keys"][0].items() if k != "kid"}]}}
        )
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    small_jwk = {**jwt.algorithms.RSAAlgorithm.to_jwk(small.public_key(), as_dict=True), "kid": "small"}
    with pytest.raises(ValueError, match="only 1024 bits"):
        JwksTokenVerifier({ISSUER: {"keys": [small_jwk]}})
    private_jwk = {**jwt.algorithms.RSAAlgorithm.to_jwk(small, as_dict=True), "kid": "private"}
    with pytest.raises(ValueError, match="not an RSA public key"):
        JwksTokenVerifier({ISSUER: {"keys": [private_jwk]}})
    with pytest.raises(ValueError, match="leeway"):
        JwksTokenVerifier({ISSUER: token_issuer.jwks()}, leeway=-1)
    ec_jwk = {
        "kty": "EC",
        "kid": "ec",
        **jwt.algorithms.ECAlgorithm.to_jwk(
            ec.generate_private_key(ec.SECP256R1()).public_key(), as_dict=True
        ),
    }
    assert JwksTokenVerifier({ISSUER: {"keys": [ec_jwk, *token_issuer.jwks()["keys"]]}}).issuers == [ISSUER]


def test_signing_key_is_persisted_sealed(tmp_path: Path) -> None:
    master = MasterKey.generate()
    path = tmp_path / "attestation-signing.key"
    issuer = TokenIssuer.load_or_create(path, master, ISSUER)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = path.read_bytes()
    assert b"PRIVATE KEY" not in stored and stored[0] == 1  # the sealed format, never PEM or DER
    again = TokenIssuer.load_or_create(path, master, ISSUER)
    assert again.kid == issuer.kid
    token = issuer.issue({"x-ms-ver": "1.0"}, ttl=60)
    assert JwksTokenVerifier({ISSUER: again.jwks()}).verify(token).claims["x-ms-ver"] == "1.0"
    with pytest.raises(IntegrityError):
        TokenIssuer.load_or_create(path, MasterKey.generate(), ISSUER)


def test_issuer_needs_an_url_and_a_real_key(issuer_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match="URL"):
        TokenIssuer(issuer_key, "attest.vigil.test")
    with pytest.raises(ValueError, match="2048"):
        TokenIssuer(rsa.generate_private_key(public_exponent=65537, key_size=1024), ISSUER)
