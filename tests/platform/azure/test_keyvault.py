"""AzureKeyVault over the real ``azure-keyvault-keys`` async client, against the loopback fake Key Vault.

Each test starts :class:`FakeKeyVault` (TLS on 127.0.0.1, challenge protocol) and talks to it through the
SDK; assertions read the fake's state and ledger, so "exactly one new version" and "only GETs" are
checked on the server side, where a retry could not hide.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.platform.azure.fake_keyvault import FakeKeyVault, StaticCredential
from vigil.platform.azure.keyvault import AzureKeyVault
from vigil.platform.azure.keyvault_models import NO_RELEASE_CLAIM
from vigil.platform.azure.keyvault_retry import RetrySettings
from vigil.platform.errors import (
    AlreadyExistsError,
    DisabledError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    ReleaseDeniedError,
    UnavailableError,
)
from vigil.platform.keyvault import WrappedKey
from vigil.platform.local.compute import LocalCompute
from vigil.platform.local.release import encryption_jwk, unwrap_as_recipient
from vigil.platform.local.storage import LocalStorage
from vigil.remediators.base import Context
from vigil.remediators.revoke_release import RevokeRelease, RevokeReleaseParams, policy_digest
from vigil.remediators.rotate_key import RotateKey, RotateKeyParams

T = TypeVar("T")
ISSUER = "https://sharedweu.weu.attest.azure.net"
POLICY = {
    "version": "1.0.0",
    "anyOf": [{"authority": ISSUER, "allOf": [{"claim": "x-ms-attestation-type", "equals": "sevsnpvm"}]}],
}
FAST = RetrySettings(attempts=4, backoff=0.01, max_retry_after=5.0)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeKeyVault]:
    with FakeKeyVault(tmp_path) as server:
        yield server


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    """(attestation issuer key, node encryption key), made once: RSA generation is slow on a small VM."""
    return tuple(rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))  # type: ignore[return-value]


def with_vault(fake: FakeKeyVault, body: Callable[[AzureKeyVault], Awaitable[T]], **options: Any) -> T:
    async def main() -> T:
        vault = AzureKeyVault.connect(
            fake.url,
            StaticCredential(),
            connection_verify=str(fake.ca_path),
            verify_challenge_resource=False,
            retry=options.pop("retry", FAST),
            **options,
        )
        try:
            return await body(vault)
        finally:
            await vault.close()

    return asyncio.run(main())


def token(issuer_key: rsa.RSAPrivateKey, node_key: rsa.RSAPrivateKey, issuer: str = ISSUER) -> str:
    now = int(time.time())
    claims = {
        "iss": issuer,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "x-ms-ver": "1.0",
        "x-ms-attestation-type": "sevsnpvm",
        "x-ms-runtime": {"keys": [encryption_jwk(node_key.public_key())]},
    }
    return jwt.encode(claims, issuer_key, algorithm="RS256", headers={"kid": "k1"})


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- reading -------------------------------------------------------------------------------------------


def test_get_key_reports_versions_current_and_release_policy(fake: FakeKeyVault) -> None:
    key = fake.add_key("dek", versions=3, exportable=True, policy=POLICY)
    key.versions[2].enabled = False  # the newest is disabled: current is the one before
    info = with_vault(fake, lambda v: v.get_key("vigil", "dek"))
    assert [v.version for v in info.versions] == [v.id for v in key.versions]
    assert [v.enabled for v in info.versions] == [True, True, False]
    assert info.current == key.versions[1].id
    assert info.exportable is True
    assert info.release_policy == POLICY
    # the disabled version was never fetched (Key Vault answers 403 to that), only listed
    assert not [e for e in fake.requests("get_key") if e.path.endswith(key.versions[2].id)]


def test_list_keys_and_missing_key(fake: FakeKeyVault) -> None:
    fake.add_key("b")
    fake.add_key("a", versions=2)

    async def body(vault: AzureKeyVault) -> list[str]:
        with pytest.raises(NotFoundError, match="HTTP 404 KeyNotFound"):
            await vault.get_key("vigil", "nope")
        return [k.name for k in await vault.list_keys("vigil")]

    assert with_vault(fake, body) == ["a", "b"]


# --- rotate: safe retries --------------------------------------------------------------------------------


def test_rotate_answered_503_after_applying_makes_exactly_one_version(fake: FakeKeyVault) -> None:
    key = fake.add_key("dek", versions=2)
    fake.inject("rotate", 503, after=True)
    new = with_vault(fake, lambda v: v.rotate_key("vigil", "dek"))
    assert len(key.versions) == 3
    assert new.version == key.latest.id
    assert len(fake.requests("rotate")) == 1  # reconciled by reading the versions, never re-sent
    assert [e.status for e in fake.requests("rotate")] == [503]


def test_rotate_refused_with_503_before_applying_is_sent_again(fake: FakeKeyVault) -> None:
    key = fake.add_key("dek")
    fake.inject("rotate", 503)
    new = with_vault(fake, lambda v: v.rotate_key("vigil", "dek"))
    assert len(key.versions) == 2
    assert new.version == key.latest.id
    assert [e.status for e in fake.requests("rotate")] == [503, 200]


def test_rotate_throttled_waits_for_retry_after(fake: FakeKeyVault) -> None:
    key = fake.add_key("dek")
    fake.inject("rotate", 429, retry_after="1")
    with_vault(fake, lambda v: v.rotate_key("vigil", "dek"))
    first, second = fake.requests("rotate")
    assert (first.status, second.status) == (429, 200)
    assert second.time - first.time >= 0.95
    assert len(key.versions) == 2


def test_retry_after_beyond_the_limit_fails_at_once(fake: FakeKeyVault) -> None:
    fake.add_key("dek")
    fake.inject("list_versions", 429, retry_after="120")
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="retry after 120s"):
        with_vault(fake, lambda v: v.get_key("vigil", "dek"))
    assert time.monotonic() - started < 5


def test_persistent_5xx_becomes_unavailable_and_403_forbidden(fake: FakeKeyVault) -> None:
    fake.add_key("dek")
    fake.inject("list_versions", 503, times=10)
    with pytest.raises(UnavailableError, match="HTTP 503"):
        with_vault(fake, lambda v: v.get_key("vigil", "dek"))
    assert len(fake.requests("list_versions")) == FAST.attempts
    fake.faults.clear()
    fake.inject("rotate", 403, message="Caller is not authorized to perform action on resource.")
    with pytest.raises(ForbiddenError, match="HTTP 403 Forbidden"):
        with_vault(fake, lambda v: v.rotate_key("vigil", "dek"))


# --- versions, policies ------------------------------------------------------------------------------------


def test_disabling_old_versions_leaves_only_the_newest_enabled(fake: FakeKeyVault) -> None:
    key = fake.add_key("dek", versions=3)

    async def body(vault: AzureKeyVault) -> str:
        before = await vault.get_key("vigil", "dek")
        new = await vault.rotate_key("vigil", "dek")
        for version in before.versions:
            disabled = await vault.set_version_enabled("vigil", "dek", version.version, False)
            assert disabled.enabled is False
        after = await vault.get_key("vigil", "dek")
        assert after.current == new.version
        return new.version

    newest = with_vault(fake, body)
    assert [(v.id, v.enabled) for v in key.versions if v.enabled] == [(newest, True)]
    assert len(key.versions) == 4


def test_wrap_unwrap_and_disabled_version(fake: FakeKeyVault) -> None:
    fake.add_key("dek")

    async def body(vault: AzureKeyVault) -> None:
        data_key = bytes(range(32))
        wrapped = await vault.wrap("vigil", "dek", data_key)
        assert await vault.unwrap("vigil", WrappedKey.from_json(wrapped.to_json())) == data_key
        await vault.rotate_key("vigil", "dek")
        await vault.set_version_enabled("vigil", "dek", wrapped.version, False)
        with pytest.raises(DisabledError, match="disabled"):
            await vault.unwrap("vigil", wrapped)
        with pytest.raises(InvalidError, match="multiple of 8"):
            await vault.wrap("vigil", "dek", b"short")

    with_vault(fake, body)


def test_release_policy_set_read_back_and_released_to_nobody(fake: FakeKeyVault) -> None:
    key = fake.add_key("dek", exportable=True, policy=POLICY)
    tightened = {
        "version": "1.0.0",
        "anyOf": [
            {"authority": ISSUER, "allOf": [{"claim": "x-ms-sevsnpvm-is-debuggable", "equals": False}]}
        ],
    }

    async def body(vault: AzureKeyVault) -> None:
        info = await vault.set_release_policy("vigil", "dek", tightened)
        assert policy_digest(info.release_policy) == policy_digest(tightened)
        nobody = await vault.set_release_policy("vigil", "dek", None)
        assert nobody.release_policy is None

    with_vault(fake, body)
    assert key.latest.release_policy is not None
    stored = json.loads(base64.urlsafe_b64decode(key.latest.release_policy["data"] + "=="))
    assert stored["anyOf"][0]["authority"] == ISSUER  # the authority is kept
    assert stored["anyOf"][0]["allOf"] == [{"claim": NO_RELEASE_CLAIM, "equals": "disabled"}]


def test_rotation_policy_round_trip(fake: FakeKeyVault) -> None:
    fake.add_key("dek")

    async def body(vault: AzureKeyVault) -> dict[str, Any]:
        await vault.set_rotation_policy(
            "vigil", "dek", rotate_after_create="P30D", notify_before_expiry="P7D", expires_in="P90D"
        )
        return await vault.get_rotation_policy("vigil", "dek")

    policy = with_vault(fake, body)
    assert policy == {
        "lifetimeActions": [
            {"trigger": {"timeAfterCreate": "P30D"}, "action": {"type": "Rotate"}},
            {"trigger": {"timeBeforeExpiry": "P7D"}, "action": {"type": "Notify"}},
        ],
        "attributes": {"expiryTime": "P90D"},
    }
    assert fake.keys["dek"].rotation_policy is not None


# --- release ------------------------------------------------------------------------------------------------


def test_release_returns_the_key_wrapped_to_the_attested_node(
    fake: FakeKeyVault, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    issuer_key, node_key = rsa_keys
    key = fake.add_key("dek", exportable=True, policy=POLICY)
    good = token(issuer_key, node_key)
    released = with_vault(fake, lambda v: v.release("vigil", "dek", good, pem(node_key)))
    assert released.version == key.latest.id
    assert released.algorithm == "RSA_AES_KEY_WRAP_256"
    assert unwrap_as_recipient(released.wrapped, node_key) == key.latest.material
    assert len(fake.requests("release")) == 1


def test_release_refusals(fake: FakeKeyVault, rsa_keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> None:
    issuer_key, node_key = rsa_keys
    fake.add_key("dek", exportable=True, policy=POLICY)

    async def body(vault: AzureKeyVault) -> None:
        # a recipient that is not the token's key is refused before Key Vault is asked
        with pytest.raises(ReleaseDeniedError, match="recipient key"):
            await vault.release("vigil", "dek", token(issuer_key, node_key), pem(issuer_key))
        with pytest.raises(ReleaseDeniedError, match="malformed token"):
            await vault.release("vigil", "dek", "not-a-token", pem(node_key))
        assert fake.requests("release") == []
        # Key Vault's own refusal (another authority) is a ReleaseDeniedError too
        other = token(issuer_key, node_key, issuer="https://evil.example")
        with pytest.raises(ReleaseDeniedError, match="HTTP 403"):
            await vault.release("vigil", "dek", other, pem(node_key))

    with_vault(fake, body)


def test_operations_azure_does_not_have_are_refused(fake: FakeKeyVault) -> None:
    fake.add_key("dek")

    async def body(vault: AzureKeyVault) -> None:
        with pytest.raises(InvalidError, match="Ed25519"):
            await vault.sign("vigil", "dek", b"x")
        with pytest.raises(InvalidError, match="HMAC"):
            await vault.hmac("vigil", "dek", b"x")
        with pytest.raises(InvalidError, match="role assignments"):
            await vault.grant("vigil", "someone", "dek", set())
        with pytest.raises(AlreadyExistsError):
            await vault.create_key("vigil", "dek")

    with_vault(fake, body)
    assert all(e.method == "GET" for e in fake.requests())


def test_create_key_makes_an_exportable_oct_hsm_key(fake: FakeKeyVault) -> None:
    fake.inject("create", 503, after=True)  # answered 503 after creating: reconciled, not created twice
    info = with_vault(fake, lambda v: v.create_key("vigil", "new", exportable=True, release_policy=POLICY))
    assert info.exportable and info.release_policy == POLICY
    assert len(fake.keys["new"].versions) == 1 and fake.keys["new"].kty == "oct-HSM"


# --- remediators against Azure -------------------------------------------------------------------------------


def test_rotate_key_remediator_dry_run_issues_only_gets_then_applies(
    fake: FakeKeyVault, tmp_path: Path
) -> None:
    key = fake.add_key("dek", versions=2)
    fake.add_key("other")

    async def body(vault: AzureKeyVault) -> None:
        storage = LocalStorage(tmp_path / "storage", vault)  # holds no containers: no re-wrap step
        ctx = Context(vault, storage, LocalCompute(tmp_path / "compute.db", vault, storage))
        remediator, params = RotateKey(), RotateKeyParams()
        assert await remediator.fleet(ctx) == ["dek", "other"]
        state = await remediator.check(ctx, "dek", params)
        plan = remediator.plan("dek", params, state)
        revoke = RevokeRelease()
        revoke_params = RevokeReleaseParams(measurements=("ab" * 48,), authority=ISSUER)
        revoke.plan("dek", revoke_params, await revoke.check(ctx, "dek", revoke_params))
        assert {e.method for e in fake.requests()} == {"GET"}  # the dry run changed nothing
        assert [s.name for s in plan.steps] == ["rotate", "disable_previous"]
        for index in range(len(plan.steps)):
            await remediator.apply_step(ctx, plan, index)
        again = await remediator.apply_step(ctx, plan, 0)  # a resumed step does not rotate twice
        assert again["changed"] is False
        assert await remediator.verify(ctx, plan) is None

    with_vault(fake, body)
    assert len(key.versions) == 3
    assert [v.enabled for v in key.versions] == [False, False, True]
    assert len(fake.requests("rotate")) == 1


def test_a_key_is_named_by_its_name_or_its_identifier_uri() -> None:
    from vigil.platform.azure.keyvault_models import key_name

    assert key_name("data-key") == "data-key"
    assert key_name("https://v.vault.azure.net/keys/data-key") == "data-key"
    assert key_name("https://v.vault.azure.net/keys/data-key/0123abcd") == "data-key"
