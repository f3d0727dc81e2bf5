"""The local key vault end to end: real SQLite, real AES-GCM / Ed25519 / RS256, no doubles of our classes."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import sqlite3
import stat
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vigil.platform.errors import (
    AlreadyExistsError,
    ConflictError,
    DisabledError,
    ForbiddenError,
    IntegrityError,
    InvalidError,
    NotFoundError,
    ReleaseDeniedError,
)
from vigil.platform.events import CollectingObserver, PlatformEvent
from vigil.platform.keyvault import KeyKind, KeyOp, KeyVault, WrappedKey
from vigil.platform.local.keyvault import LocalKeyVault, unwrap_with_material, wrap_with_material
from vigil.platform.local.masterkey import MasterKey
from vigil.platform.local.policy import policy_hash
from vigil.platform.local.release import unwrap_as_recipient
from vigil.platform.local.tokens import JwksTokenVerifier, TokenIssuer

from .conftest import ISSUER, ClaimsFor, pem

T = TypeVar("T")
ADMIN = "vigil"
POLICY: dict[str, Any] = {
    "version": "1.0.0",
    "anyOf": [
        {
            "authority": ISSUER,
            "allOf": [
                {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
                {"claim": "x-ms-compliance-status", "equals": "azure-compliant-uvm"},
                {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": False},
            ],
        }
    ],
}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Env:
    """A vault on a folder, reopenable from disk, trusting the test attestation issuer."""

    def __init__(self, root: Path, issuer: TokenIssuer) -> None:
        self.root = root
        self.issuer = issuer
        self.observer = CollectingObserver()
        self.vault = self.open()

    def open(self, master: MasterKey | None = None, **options: Any) -> LocalKeyVault:
        return LocalKeyVault(
            self.root / "vault.db",
            master or MasterKey.from_file(self.root / "master.key"),
            verifier=JwksTokenVerifier({ISSUER: self.issuer.jwks()}),
            observer=options.pop("observer", self.observer),
            **options,
        )

    def reopen(self, **options: Any) -> LocalKeyVault:
        self.vault.close()
        self.vault = self.open(**options)
        return self.vault

    def kinds(self) -> list[str]:
        return [e.kind for e in self.observer.events]

    def last(self) -> PlatformEvent:
        return self.observer.events[-1]

    def materials(self) -> dict[tuple[str, str], bytes]:
        """Every version's material, opened the way the vault opens it (for checks the API cannot make)."""
        master = MasterKey.from_file(self.root / "master.key")
        with sqlite3.connect(self.root / "vault.db") as db:
            rows = db.execute("SELECT name, version, sealed FROM versions").fetchall()
        return {(n, v): master.open(s, f"{n}/{v}".encode()) for n, v, s in rows}

    def sql(self, statement: str, *args: Any) -> None:
        with sqlite3.connect(self.root / "vault.db") as db:
            db.execute(statement, args)


class FlakyObserver:
    """An observer whose audit log can be made to fail, like a full disk."""

    def __init__(self) -> None:
        self.fail = False
        self.events: list[PlatformEvent] = []

    async def record(self, event: PlatformEvent) -> None:
        if self.fail:
            raise RuntimeError("audit log unavailable")
        self.events.append(event)


@pytest.fixture
def env(tmp_path: Path, token_issuer: TokenIssuer) -> Iterator[Env]:
    env = Env(tmp_path, token_issuer)
    yield env
    env.vault.close()


def test_the_vault_satisfies_the_protocol(env: Env) -> None:
    vault: KeyVault = env.vault
    assert repr(vault) == f"LocalKeyVault(path='{env.root / 'vault.db'}', admins=['vigil'])"
    assert stat.S_IMODE((env.root / "vault.db").stat().st_mode) == 0o600


def test_create_get_and_list(env: Env) -> None:
    async def scenario() -> None:
        info = await env.vault.create_key(ADMIN, "data-key", tags={"team": "ml"})
        assert (info.name, info.kind, info.exportable, info.release_policy, info.deleted) == (
            "data-key",
            KeyKind.AES256,
            False,
            None,
            None,
        )
        assert info.current == info.versions[0].version and len(info.current) == 32
        assert info.versions[0].public_key is None and info.tags == {"team": "ml"}
        signer = await env.vault.create_key(ADMIN, "audit-signer", KeyKind.ED25519)
        assert signer.versions[0].public_key is not None and len(signer.versions[0].public_key) == 32
        assert await env.vault.get_key(ADMIN, "data-key") == info
        assert [k.name for k in await env.vault.list_keys(ADMIN)] == ["audit-signer", "data-key"]
        event = env.observer.events[0]
        assert (event.kind, event.principal, event.subject, event.outcome) == (
            "platform.key.create",
            ADMIN,
            "data-key",
            "success",
        )
        assert event.details == {
            "version": info.current,
            "kind": "aes256",
            "exportable": False,
            "policy_hash": None,
        }
        with pytest.raises(AlreadyExistsError, match="already exists"):
            await env.vault.create_key(ADMIN, "data-key")
        with pytest.raises(NotFoundError, match="no key named 'nope'"):
            await env.vault.get_key(ADMIN, "nope")

    run(scenario())


@pytest.mark.parametrize(
    ("args", "options", "message"),
    [
        (("bad/name",), {}, "key name"),
        (("*",), {}, "key name"),
        (("x" * 128,), {}, "key name"),
        (("k", "rsa"), {}, "key kinds are aes256, ed25519"),
        (("k", KeyKind.ED25519), {"exportable": True}, "only aes256 keys can be exportable"),
        (
            ("k",),
            {"release_policy": {"version": "1.0.0", "anyOf": []}},
            r"release policy: \$.anyOf: must not be empty",
        ),
        (("k",), {"tags": {"a": 1}}, "tags"),
    ],
)
def test_invalid_creates(env: Env, args: tuple[Any, ...], options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidError, match=message):
        run(env.vault.create_key(ADMIN, *args, **options))
    assert env.observer.events == []


def test_rotation_keeps_old_wraps_readable_and_new_wraps_use_the_new_version(env: Env) -> None:
    async def scenario() -> None:
        v1 = (await env.vault.create_key(ADMIN, "k")).current
        old = await env.vault.wrap(ADMIN, "k", b"data key one")
        assert old.version == v1
        v2 = await env.vault.rotate_key(ADMIN, "k")
        assert v2.version != v1 and v2.enabled
        assert env.last().kind == "platform.key.rotate"
        assert env.last().details == {"version": v2.version, "previous": v1}
        new = await env.vault.wrap(ADMIN, "k", b"data key two")
        assert new.version == v2.version
        assert await env.vault.unwrap(ADMIN, old) == b"data key one"
        assert await env.vault.unwrap(ADMIN, new) == b"data key two"
        info = await env.vault.get_key(ADMIN, "k")
        assert info.current == v2.version and [v.version for v in info.versions] == [v1, v2.version]
        materials = env.materials()
        assert materials[("k", v1)] != materials[("k", v2.version)]

    run(scenario())


def test_a_disabled_version_cannot_unwrap_until_it_is_enabled_again(env: Env) -> None:
    async def scenario() -> None:
        v1 = (await env.vault.create_key(ADMIN, "k")).current
        assert v1 is not None
        old = await env.vault.wrap(ADMIN, "k", b"old")
        v2 = (await env.vault.rotate_key(ADMIN, "k")).version
        disabled = await env.vault.set_version_enabled(ADMIN, "k", v1, False)
        assert not disabled.enabled and env.last().kind == "platform.key.disable"
        with pytest.raises(DisabledError, match=f"version {v1} is disabled"):
            await env.vault.unwrap(ADMIN, old)
        count = len(env.observer.events)
        await env.vault.set_version_enabled(ADMIN, "k", v1, False)  # already disabled: no event
        assert len(env.observer.events) == count
        # disabling the current version makes the older enabled one current; none left: no wraps
        await env.vault.set_version_enabled(ADMIN, "k", v1, True)
        assert env.last().kind == "platform.key.enable"
        assert await env.vault.unwrap(ADMIN, old) == b"old"
        await env.vault.set_version_enabled(ADMIN, "k", v2, False)
        assert (await env.vault.get_key(ADMIN, "k")).current == v1
        assert (await env.vault.wrap(ADMIN, "k", b"x")).version == v1
        await env.vault.set_version_enabled(ADMIN, "k", v1, False)
        assert (await env.vault.get_key(ADMIN, "k")).current is None
        with pytest.raises(DisabledError, match="no enabled version"):
            await env.vault.wrap(ADMIN, "k", b"x")
        with pytest.raises(NotFoundError, match="no version 'f00'"):
            await env.vault.set_version_enabled(ADMIN, "k", "f00", True)

    run(scenario())


def test_wrapped_keys_are_authenticated(env: Env) -> None:
    async def scenario() -> None:
        await env.vault.create_key(ADMIN, "k")
        await env.vault.create_key(ADMIN, "other")
        wrapped = await env.vault.wrap(ADMIN, "k", b"dek")
        damaged = bytearray(wrapped.ciphertext)
        damaged[-1] ^= 1
        with pytest.raises(IntegrityError, match="failed its authentication check"):
            await env.vault.unwrap(ADMIN, WrappedKey("k", wrapped.version, bytes(damaged)))
        v2 = (await env.vault.rotate_key(ADMIN, "k")).version
        with pytest.raises(IntegrityError):  # relabelled to another version of the same key
            await env.vault.unwrap(ADMIN, WrappedKey("k", v2, wrapped.ciphertext))
        other_current = (await env.vault.get_key(ADMIN, "other")).current
        assert other_current is not None
        with pytest.raises(NotFoundError):  # relabelled to another key: that key has no such version
            await env.vault.unwrap(ADMIN, WrappedKey("other", wrapped.version, wrapped.ciphertext))
        with pytest.raises(IntegrityError):
            await env.vault.unwrap(ADMIN, WrappedKey("other", other_current, wrapped.ciphertext))
        assert await env.vault.unwrap(ADMIN, WrappedKey.from_json(wrapped.to_json())) == b"dek"
        with pytest.raises(InvalidError, match="1 to 1024 bytes"):
            await env.vault.wrap(ADMIN, "k", b"")

    run(scenario())


def test_sign_and_hmac(env: Env) -> None:
    async def scenario() -> None:
        info = await env.vault.create_key(ADMIN, "signer", KeyKind.ED25519)
        info_macs = await env.vault.create_key(ADMIN, "macs")
        signature = await env.vault.sign(ADMIN, "signer", b"checkpoint 42")
        assert (signature.algorithm, signature.version) == ("Ed25519", info.current)
        public = info.versions[0].public_key
        assert public is not None
        Ed25519PublicKey.from_public_bytes(public).verify(signature.value, b"checkpoint 42")
        first = await env.vault.hmac(ADMIN, "macs", b"10.0.0.7")
        assert len(first) == 32 and first == await env.vault.hmac(ADMIN, "macs", b"10.0.0.7")
        assert first != await env.vault.hmac(ADMIN, "macs", b"10.0.0.8")
        await env.vault.rotate_key(ADMIN, "macs")
        assert first != await env.vault.hmac(ADMIN, "macs", b"10.0.0.7")
        # an older version still computes what it computed (matching what was written before the rotation)
        old = info_macs.versions[0].version
        assert await env.vault.hmac(ADMIN, "macs", b"10.0.0.7", old) == first
        await env.vault.set_version_enabled(ADMIN, "macs", old, False)
        with pytest.raises(DisabledError, match="is disabled"):
            await env.vault.hmac(ADMIN, "macs", b"10.0.0.7", old)
        with pytest.raises(NotFoundError):
            await env.vault.hmac(ADMIN, "macs", b"10.0.0.7", "no-such-version")
        with pytest.raises(ConflictError, match="sign needs an ed25519 key"):
            await env.vault.sign(ADMIN, "macs", b"x")
        with pytest.raises(ConflictError, match="hmac needs an aes256 key"):
            await env.vault.hmac(ADMIN, "signer", b"x")
        with pytest.raises(ConflictError, match="wrap needs an aes256 key"):
            await env.vault.wrap(ADMIN, "signer", b"x")

    run(scenario())


def test_soft_delete_recover_and_purge_protection(env: Env) -> None:
    async def scenario() -> None:
        await env.vault.create_key(ADMIN, "k")
        wrapped = await env.vault.wrap(ADMIN, "k", b"dek")
        deleted = await env.vault.delete_key(ADMIN, "k")
        assert deleted.deleted is not None and env.last().kind == "platform.key.delete"
        for attempt in (env.vault.unwrap(ADMIN, wrapped), env.vault.wrap(ADMIN, "k", b"x")):
            with pytest.raises(DisabledError, match="key 'k' is deleted"):
                await attempt
        with pytest.raises(ConflictError, match="recover it first"):
            await env.vault.rotate_key(ADMIN, "k")
        with pytest.raises(AlreadyExistsError, match="soft-deleted"):
            await env.vault.create_key(ADMIN, "k")
        assert await env.vault.list_keys(ADMIN) == []
        assert [k.name for k in await env.vault.list_keys(ADMIN, include_deleted=True)] == ["k"]
        with pytest.raises(ConflictError, match="purge protection is on: key 'k' cannot be purged before 20"):
            await env.vault.purge_key(ADMIN, "k")
        refusal = env.last()
        assert (refusal.kind, refusal.outcome) == ("platform.key.purge", "denied")
        assert "purge protection" in refusal.details["reason"]
        recovered = await env.vault.recover_key(ADMIN, "k")
        assert recovered.deleted is None and env.last().kind == "platform.key.recover"
        assert await env.vault.unwrap(ADMIN, wrapped) == b"dek"
        with pytest.raises(ConflictError, match="not deleted"):
            await env.vault.recover_key(ADMIN, "k")
        with pytest.raises(ConflictError, match="delete it before purging"):
            await env.vault.purge_key(ADMIN, "k")

    run(scenario())


def test_purge_after_retention_or_without_protection(env: Env) -> None:
    async def scenario(vault: LocalKeyVault) -> None:
        await vault.create_key(ADMIN, "k")
        await vault.grant(ADMIN, "node-a", "k", {KeyOp.WRAP})
        await vault.delete_key(ADMIN, "k")
        await vault.purge_key(ADMIN, "k")
        with pytest.raises(NotFoundError):
            await vault.get_key(ADMIN, "k")
        fresh = await vault.create_key(ADMIN, "k")  # the name is free again, without the old grants
        with pytest.raises(ForbiddenError):
            await vault.wrap("node-a", "k", b"x")
        assert fresh.versions[0].version not in {v for (_, v) in env.materials() if _ != "k"}

    run(scenario(env.reopen(soft_delete_days=0)))
    assert env.kinds()[-2:] == ["platform.key.purge", "platform.key.create"]
    env.sql("DELETE FROM versions")
    env.sql("DELETE FROM keys")
    run(scenario(env.reopen(purge_protection=False, soft_delete_days=90)))


def test_access_policy(env: Env) -> None:
    async def scenario() -> None:
        await env.vault.create_key(ADMIN, "k1")
        await env.vault.create_key(ADMIN, "k2")
        with pytest.raises(ForbiddenError) as caught:
            await env.vault.wrap("node-a", "k1", b"dek")
        assert str(caught.value) == "principal 'node-a' is not allowed to wrap key 'k1'"
        await env.vault.grant(ADMIN, "node-a", "k1", {KeyOp.WRAP, KeyOp.UNWRAP})
        assert env.last().details == {"grantee": "node-a", "ops": ["unwrap", "wrap"]}
        assert env.last().subject == "k1"
        wrapped = await env.vault.wrap("node-a", "k1", b"dek")
        assert await env.vault.unwrap("node-a", wrapped) == b"dek"
        with pytest.raises(ForbiddenError, match="not allowed to wrap key 'k2'"):
            await env.vault.wrap("node-a", "k2", b"dek")
        with pytest.raises(ForbiddenError, match="not allowed to rotate key 'k1'"):
            await env.vault.rotate_key("node-a", "k1")
        denial = env.last()
        assert (denial.kind, denial.outcome, denial.principal) == ("platform.key.rotate", "denied", "node-a")
        # list shows only readable keys
        assert await env.vault.list_keys("node-a") == []
        await env.vault.grant(ADMIN, "node-a", "*", {KeyOp.READ, KeyOp.WRAP})
        assert [k.name for k in await env.vault.list_keys("node-a")] == ["k1", "k2"]
        await env.vault.wrap("node-a", "k2", b"dek")
        # granting what is held is no change and no event
        count = len(env.observer.events)
        await env.vault.grant(ADMIN, "node-a", "k1", {KeyOp.WRAP})
        assert len(env.observer.events) == count
        await env.vault.revoke(ADMIN, "node-a", "*")
        assert env.last().kind == "platform.key.revoke" and env.last().details["ops"] == ["read", "wrap"]
        with pytest.raises(ForbiddenError):
            await env.vault.wrap("node-a", "k2", b"dek")
        await env.vault.revoke(ADMIN, "node-a", "k1", {KeyOp.UNWRAP})
        with pytest.raises(ForbiddenError, match="unwrap key 'k1'"):
            await env.vault.unwrap("node-a", wrapped)
        await env.vault.wrap("node-a", "k1", b"still allowed")

    run(scenario())


def test_only_admins_change_the_access_policy(env: Env) -> None:
    async def scenario() -> None:
        await env.vault.create_key(ADMIN, "k1")
        with pytest.raises(ForbiddenError, match="'mallory' is not allowed to admin key 'k1'"):
            await env.vault.grant("mallory", "mallory", "k1", {KeyOp.RELEASE})
        assert (env.last().kind, env.last().outcome) == ("platform.key.grant", "denied")
        await env.vault.grant(ADMIN, "owner", "k1", {KeyOp.ADMIN})
        await env.vault.grant("owner", "node-a", "k1", {KeyOp.WRAP})  # admin of one key
        await env.vault.wrap("node-a", "k1", b"x")
        with pytest.raises(ForbiddenError, match="admin every key"):
            await env.vault.grant("owner", "node-a", "*", {KeyOp.WRAP})
        with pytest.raises(ForbiddenError, match="admin every key"):
            await env.vault.set_suspended("owner", "node-a", True, reason="x")
        with pytest.raises(InvalidError, match="operations are"):
            await env.vault.grant(ADMIN, "node-a", "k1", {"fly"})  # type: ignore[arg-type]
        with pytest.raises(InvalidError, match="at least one"):
            await env.vault.grant(ADMIN, "node-a", "k1", set())
        with pytest.raises(InvalidError, match="grantee"):
            await env.vault.grant(ADMIN, "", "k1", {KeyOp.WRAP})

    run(scenario())


def test_suspension_refuses_everything_and_restore_gives_back_the_grants(
    env: Env, claims_for: ClaimsFor, node_a_key: rsa.RSAPrivateKey
) -> None:
    async def scenario() -> None:
        await env.vault.create_key(ADMIN, "k", exportable=True, release_policy=POLICY)
        await env.vault.grant(ADMIN, "node-a", "k", {KeyOp.WRAP, KeyOp.UNWRAP, KeyOp.RELEASE, KeyOp.READ})
        wrapped = await env.vault.wrap("node-a", "k", b"dek")
        await env.vault.set_suspended(ADMIN, "node-a", True, reason="quarantined: finding f-17")
        assert (env.last().kind, env.last().subject) == ("platform.key.suspend", "node-a")
        token = env.issuer.issue(claims_for(node_a_key), ttl=600)
        attempts = [
            env.vault.wrap("node-a", "k", b"dek"),
            env.vault.unwrap("node-a", wrapped),
            env.vault.get_key("node-a", "k"),
            env.vault.list_keys("node-a"),
            env.vault.release("node-a", "k", token, pem(node_a_key)),
        ]
        for attempt in attempts:
            with pytest.raises(
                ForbiddenError, match="principal 'node-a' is suspended: quarantined: finding f-17"
            ):
                await attempt
        assert (env.last().kind, env.last().outcome) == ("platform.key.release", "denied")
        await env.vault.set_suspended(ADMIN, "node-a", False, reason="released after review")
        assert env.last().kind == "platform.key.restore"
        assert await env.vault.unwrap("node-a", wrapped) == b"dek"
        released = await env.vault.release("node-a", "k", token, pem(node_a_key))
        assert released.key_name == "k"
        with pytest.raises(ConflictError, match="cannot suspend itself"):
            await env.vault.set_suspended(ADMIN, ADMIN, True)
        # an admin can be suspended by another admin, and is then refused too
        await env.vault.grant(ADMIN, "second-admin", "*", {KeyOp.ADMIN})
        await env.vault.set_suspended("second-admin", ADMIN, True, reason="credential leaked")
        with pytest.raises(ForbiddenError, match="'vigil' is suspended: credential leaked"):
            await env.vault.create_key(ADMIN, "k9")
        await env.vault.set_suspended("second-admin", ADMIN, False)

    run(scenario())


def test_release_succeeds_and_the_node_unwraps_exactly_the_material(
    env: Env, claims_for: ClaimsFor, node_a_key: rsa.RSAPrivateKey
) -> None:
    async def scenario() -> None:
        await env.vault.create_key(ADMIN, "dataset", exportable=True, release_policy=POLICY)
        await env.vault.grant(ADMIN, "node-a", "dataset", {KeyOp.RELEASE})
        data_key = os.urandom(32)
        wrapped = await env.vault.wrap(ADMIN, "dataset", data_key)  # stored beside the dataset
        token = env.issuer.issue(claims_for(node_a_key), ttl=600)
        released = await env.vault.release("node-a", "dataset", token, pem(node_a_key))
        assert (released.algorithm, released.version) == ("RSA_AES_KEY_WRAP_256", wrapped.version)
        material = unwrap_as_recipient(released.wrapped, node_a_key)  # on the node
        assert material == env.materials()[("dataset", wrapped.version)]
        assert unwrap_with_material(material, wrapped) == data_key
        # and the node can wrap new data keys that the vault unwraps
        mine = wrap_with_material(material, "dataset", released.version, b"node's own data key")
        assert await env.vault.unwrap(ADMIN, mine) == b"node's own data key"
        event = env.last()
        assert (event.kind, event.principal, event.subject, event.outcome) == (
            "platform.key.release",
            "node-a",
            "dataset",
            "success",
        )
        claims = JwksTokenVerifier({ISSUER: env.issuer.jwks()}).verify(token).claims
        assert event.details["jti"] == claims["jti"] and event.details["issuer"] == ISSUER
        assert event.details["policy_hash"] == policy_hash(POLICY)
        assert event.details["version"] == wrapped.version and len(event.details["recipient"]) == 64
        # after a rotation the release hands out the new current version
        v2 = (await env.vault.rotate_key(ADMIN, "dataset")).version
        again = await env.vault.release("node-a", "dataset", token, pem(node_a_key))
        assert again.version == v2
        assert unwrap_as_recipient(again.wrapped, node_a_key) == env.materials()[("dataset", v2)]

    run(scenario())


def release_reason(env: Env, token: str, recipient: bytes, key: str = "dataset") -> str:
    with pytest.raises(ReleaseDeniedError) as caught:
        run(env.vault.release("node-a", key, token, recipient))
    event = env.last()
    assert (event.kind, event.outcome, event.subject) == ("platform.key.release", "denied", key)
    assert event.details["reason"] == caught.value.reason
    return caught.value.reason


@pytest.fixture
def release_env(env: Env) -> Env:
    run(env.vault.create_key(ADMIN, "dataset", exportable=True, release_policy=POLICY))
    run(env.vault.grant(ADMIN, "node-a", "*", {KeyOp.RELEASE}))
    return env


def test_release_refuses_a_token_that_does_not_satisfy_the_policy(
    release_env: Env, claims_for: ClaimsFor, node_a_key: rsa.RSAPrivateKey
) -> None:
    debuggable = release_env.issuer.issue(claims_for(node_a_key, x_ms_sevsnpvm_is_debuggable=True), ttl=600)
    reason = release_reason(release_env, debuggable, pem(node_a_key))
    assert reason == "claim 'x-ms-sevsnpvm-is-debuggable' is true, the policy requires false"
    details = release_env.last().details
    assert (
        details["issuer"] == ISSUER
        and len(details["jti"]) == 64
        and details["policy_hash"] == policy_hash(POLICY)
    )


def test_release_refuses_an_expired_token(
    release_env: Env, claims_for: ClaimsFor, node_a_key: rsa.RSAPrivateKey
) -> None:
    import time

    expired = release_env.issuer.issue(claims_for(node_a_key), ttl=600, now=time.time() - 3600)
    assert release_reason(release_env, expired, pem(node_a_key)).startswith("expired (")


def test_release_refuses_untrusted_signers(
    release_env: Env, claims_for: ClaimsFor, node_a_key: rsa.RSAPrivateKey, rogue_key: rsa.RSAPrivateKey
) -> None:
    rogue_issuer = TokenIssuer(rogue_key, "https://rogue.example").issue(claims_for(node_a_key), ttl=600)
    assert release_reason(release_env, rogue_issuer, pem(node_a_key)) == "untrusted issuer"
    rogue_key_same_issuer = TokenIssuer(rogue_key, ISSUER).issue(claims_for(node_a_key), ttl=600)
    assert release_reason(release_env, rogue_key_same_issuer, pem(node_a_key)) == "unknown key id"


def test_release_refuses_a_token_for_another_key(
    release_env: Env, claims_for: ClaimsFor, node_a_key: rsa.RSAPrivateKey, node_b_key: rsa.RSAPrivateKey
) -> None:
    """Node B's valid token, replayed by someone asking for the key wrapped to node A's key."""
    token_b = release_env.issuer.issue(claims_for(node_b_key), ttl=600)
    assert (
        release_reason(release_env, token_b, pem(node_a_key))
        == "recipient key is not the one the token carries"
    )
    no_key = release_env.issuer.issue(claims_for(None), ttl=600)
    assert release_reason(release_env, no_key, pem(node_a_key)) == "the token carries no encryption key"


def test_release_refuses_a_node_whose_token_lacks_a_required_claim(
    release_env: Env, claims_for: ClaimsFor, node_a_key: rsa.RSAPrivateKey, node_b_key: rsa.RSAPrivateKey
) -> None:
    pinned = {
        "version": "1.0.0",
        "anyOf": [
            {
                "authority": ISSUER,
                "allOf": [
                    *POLICY["anyOf"][0]["allOf"],
                    {"claim": "x-ms-sevsnpvm-hostdata", "equals": "ab" * 32},
                ],
            }
        ],
    }
    run(release_env.vault.set_release_policy(ADMIN, "dataset", pinned))
    assert release_env.last().details == {
        "policy_hash": policy_hash(pinned),
        "previous_policy_hash": policy_hash(POLICY),
    }
    node_a = release_env.issuer.issue(claims_for(node_a_key, x_ms_sevsnpvm_hostdata="ab" * 32), ttl=600)
    run(release_env.vault.release("node-a", "dataset", node_a, pem(node_a_key)))
    node_b = release_env.issuer.issue(claims_for(node_b_key, x_ms_sevsnpvm_hostdata=None), ttl=600)
    reason = release_reason(release_env, node_b, pem(node_b_key))
    assert reason == f"claim 'x-ms-sevsnpvm-hostdata' is missing, the policy requires \"{'ab' * 32}\""


def test_release_preconditions(
    release_env: Env, claims_for: ClaimsFor, node_a_key: rsa.RSAPrivateKey, tmp_path: Path
) -> None:
    env = release_env
    token = env.issuer.issue(claims_for(node_a_key), ttl=600)
    run(env.vault.create_key(ADMIN, "internal"))
    with pytest.raises(ConflictError, match="key 'internal' is not exportable"):
        run(env.vault.release("node-a", "internal", token, pem(node_a_key)))
    assert env.last().outcome == "denied"
    run(env.vault.create_key(ADMIN, "no-policy", exportable=True))
    with pytest.raises(ConflictError, match="has no release policy"):
        run(env.vault.release("node-a", "no-policy", token, pem(node_a_key)))
    with pytest.raises(ForbiddenError, match="'node-b' is not allowed to release key 'dataset'"):
        run(env.vault.release("node-b", "dataset", token, pem(node_a_key)))
    assert (env.last().principal, env.last().outcome) == ("node-b", "denied")
    assert release_reason(env, token, b"not a key") == "the recipient key is not a PEM public key"
    run(env.vault.delete_key(ADMIN, "dataset"))
    with pytest.raises(DisabledError, match="is deleted"):
        run(env.vault.release("node-a", "dataset", token, pem(node_a_key)))
    blind = LocalKeyVault(
        tmp_path / "vault.db", MasterKey.from_file(tmp_path / "master.key"), observer=env.observer
    )
    try:
        run(blind.recover_key(ADMIN, "dataset"))
        with pytest.raises(ReleaseDeniedError, match="no attestation verifier"):
            run(blind.release("node-a", "dataset", token, pem(node_a_key)))
    finally:
        blind.close()


def test_an_observer_failure_changes_nothing(
    env: Env, claims_for: ClaimsFor, node_a_key: rsa.RSAPrivateKey
) -> None:
    observer = FlakyObserver()
    vault = env.reopen(observer=observer)

    async def scenario() -> None:
        await vault.create_key(ADMIN, "k", exportable=True, release_policy=POLICY)
        await vault.create_key(ADMIN, "doomed")
        await vault.grant(ADMIN, "node-a", "k", {KeyOp.RELEASE})
        wrapped = await vault.wrap(ADMIN, "k", b"dek")
        before = await vault.list_keys(ADMIN, include_deleted=True)
        v1 = before[1].current
        assert v1 is not None
        token = env.issuer.issue(claims_for(node_a_key), ttl=600)
        observer.fail = True
        attempts = [
            vault.create_key(ADMIN, "new"),
            vault.rotate_key(ADMIN, "k"),
            vault.set_version_enabled(ADMIN, "k", v1, False),
            vault.set_release_policy(ADMIN, "k", None),
            vault.delete_key(ADMIN, "doomed"),
            vault.grant(ADMIN, "node-b", "k", {KeyOp.UNWRAP}),
            vault.revoke(ADMIN, "node-a", "k"),
            vault.set_suspended(ADMIN, "node-a", True, reason="x"),
            vault.release("node-a", "k", token, pem(node_a_key)),
            vault.release("node-a", "k", "not a token", pem(node_a_key)),  # a refusal must be recorded too
            vault.rotate_key("mallory", "k"),
        ]
        for attempt in attempts:
            with pytest.raises(RuntimeError, match="audit log unavailable"):
                await attempt
        observer.fail = False
        assert await vault.list_keys(ADMIN, include_deleted=True) == before
        assert await vault.unwrap(ADMIN, wrapped) == b"dek"
        with pytest.raises(ForbiddenError):
            await vault.unwrap("node-b", wrapped)
        assert (await vault.release("node-a", "k", token, pem(node_a_key))).version == v1
        await vault.delete_key(ADMIN, "doomed")
        observer.fail = True
        with pytest.raises(RuntimeError):
            await vault.recover_key(ADMIN, "doomed")
        with pytest.raises(RuntimeError):
            await vault.purge_key(ADMIN, "doomed")
        observer.fail = False
        assert (await vault.get_key(ADMIN, "doomed")).deleted is not None

    run(scenario())
    assert [e.kind for e in observer.events][-2:] == ["platform.key.release", "platform.key.delete"]


def test_a_change_is_invisible_until_its_event_is_recorded(env: Env) -> None:
    class GatedObserver:
        def __init__(self) -> None:
            self.gate = asyncio.Event()
            self.waiting = asyncio.Event()

        async def record(self, event: PlatformEvent) -> None:
            self.waiting.set()
            await self.gate.wait()

    async def scenario() -> None:
        observer = GatedObserver()
        vault = env.reopen(observer=observer)
        observer.gate.set()
        v1 = (await vault.create_key(ADMIN, "k")).current
        observer.gate.clear()
        observer.waiting.clear()
        rotation = asyncio.create_task(vault.rotate_key(ADMIN, "k"))
        grant = asyncio.create_task(vault.grant(ADMIN, "node-a", "k", {KeyOp.WRAP}))
        await observer.waiting.wait()
        # the rotation waits on its record: readers still see the old state, the grant waits its turn
        assert (await vault.get_key(ADMIN, "k")).current == v1
        assert (await vault.wrap(ADMIN, "k", b"x")).version == v1
        with pytest.raises(ForbiddenError):
            await vault.wrap("node-a", "k", b"x")
        observer.gate.set()
        v2 = (await rotation).version
        await grant
        assert (await vault.wrap("node-a", "k", b"x")).version == v2
        versions = await asyncio.gather(*(vault.rotate_key(ADMIN, "k") for _ in range(5)))
        assert len({v.version for v in versions}) == 5
        assert len((await vault.get_key(ADMIN, "k")).versions) == 7

    run(scenario())


def test_restart_keeps_everything(env: Env, claims_for: ClaimsFor, node_a_key: rsa.RSAPrivateKey) -> None:
    async def build() -> tuple[list[Any], WrappedKey, WrappedKey]:
        vault = env.vault
        await vault.create_key(ADMIN, "dataset", exportable=True, release_policy=POLICY, tags={"a": "b"})
        await vault.create_key(ADMIN, "signer", KeyKind.ED25519)
        await vault.create_key(ADMIN, "gone")
        old = await vault.wrap(ADMIN, "dataset", b"old dek")
        v2 = await vault.rotate_key(ADMIN, "dataset")
        new = await vault.wrap(ADMIN, "dataset", b"new dek")
        await vault.rotate_key(ADMIN, "dataset")
        await vault.set_version_enabled(ADMIN, "dataset", v2.version, False)
        await vault.delete_key(ADMIN, "gone")
        await vault.grant(ADMIN, "node-a", "dataset", {KeyOp.UNWRAP, KeyOp.RELEASE})
        await vault.grant(ADMIN, "node-s", "*", {KeyOp.READ})
        await vault.set_suspended(ADMIN, "node-s", True, reason="quarantined")
        return await vault.list_keys(ADMIN, include_deleted=True), old, new

    infos, old, new = run(build())
    env.reopen()  # a new MasterKey object read from the same file, a new connection

    async def check() -> None:
        vault = env.vault
        assert await vault.list_keys(ADMIN, include_deleted=True) == infos
        assert await vault.unwrap("node-a", old) == b"old dek"
        with pytest.raises(DisabledError):
            await vault.unwrap("node-a", new)
        with pytest.raises(ForbiddenError, match="suspended: quarantined"):
            await vault.get_key("node-s", "dataset")
        signer = await vault.get_key(ADMIN, "signer")
        signature = await vault.sign(ADMIN, "signer", b"after restart")
        assert signer.versions[0].public_key is not None
        Ed25519PublicKey.from_public_bytes(signer.versions[0].public_key).verify(
            signature.value, b"after restart"
        )
        token = env.issuer.issue(claims_for(node_a_key), ttl=600)
        released = await vault.release("node-a", "dataset", token, pem(node_a_key))
        assert released.version == (await vault.get_key(ADMIN, "dataset")).current != old.version
        material = unwrap_as_recipient(released.wrapped, node_a_key)
        assert unwrap_with_material(material, await vault.wrap(ADMIN, "dataset", b"x")) == b"x"
        assert (await vault.recover_key(ADMIN, "gone")).deleted is None

    run(check())


def test_a_wrong_master_key_or_passphrase_fails_at_open(tmp_path: Path) -> None:
    salt = tmp_path / "master.salt"
    vault = LocalKeyVault(tmp_path / "vault.db", MasterKey.from_passphrase("right", salt))
    run(vault.create_key(ADMIN, "k"))
    vault.close()
    with pytest.raises(IntegrityError, match="wrong key file or passphrase"):
        LocalKeyVault(tmp_path / "vault.db", MasterKey.from_passphrase("wrong", salt))
    with pytest.raises(IntegrityError, match="wrong key file or passphrase"):
        LocalKeyVault(tmp_path / "vault.db", MasterKey.generate())
    reopened = LocalKeyVault(tmp_path / "vault.db", MasterKey.from_passphrase("right", salt))
    assert run(reopened.get_key(ADMIN, "k")).name == "k"
    reopened.close()


@pytest.mark.parametrize(
    ("statement", "then"),
    [
        ("UPDATE keys SET exportable = 1 WHERE name = 'k'", "get"),
        ('UPDATE keys SET policy = \'{"version":"1.0.0","anyOf":[]}\' WHERE name = \'k\'', "get"),
        ("UPDATE keys SET deleted = NULL WHERE name = 'k'", "get"),
        ("UPDATE versions SET enabled = 1 WHERE name = 'k'", "unwrap"),
        (
            "UPDATE versions SET sealed = (SELECT sealed FROM versions WHERE name = 'other') WHERE name = 'k'",
            "unwrap",
        ),
        ("INSERT INTO grants VALUES ('mallory', '*', 'unwrap', x'00')", "mallory"),
        ("UPDATE grants SET grantee = 'mallory'", "mallory"),
        ("UPDATE suspensions SET reason = 'x'", "suspended"),
    ],
)
def test_rows_written_behind_the_vaults_back_are_detected(env: Env, statement: str, then: str) -> None:
    async def setup() -> WrappedKey:
        await env.vault.create_key(ADMIN, "k")
        await env.vault.create_key(ADMIN, "other")
        wrapped = await env.vault.wrap(ADMIN, "k", b"dek")
        version = wrapped.version
        await env.vault.rotate_key(ADMIN, "k")
        await env.vault.set_version_enabled(ADMIN, "k", version, False)
        await env.vault.grant(ADMIN, "helper", "k", {KeyOp.UNWRAP})
        await env.vault.set_suspended(ADMIN, "node-s", True, reason="quarantined")
        if then == "get":
            await env.vault.delete_key(ADMIN, "k")
        return wrapped

    wrapped = run(setup())
    env.sql(statement)
    with pytest.raises(IntegrityError, match="integrity check"):
        if then == "get":
            run(env.vault.get_key(ADMIN, "k"))
        elif then == "unwrap":
            run(env.vault.unwrap(ADMIN, wrapped))
        elif then == "mallory":
            run(env.vault.unwrap("mallory", wrapped))
        else:
            run(env.vault.get_key("node-s", "k"))


def test_canary_no_material_or_token_leaks(
    env: Env, claims_for: ClaimsFor, node_a_key: rsa.RSAPrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    returned: list[Any] = []

    async def scenario() -> str:
        vault = env.vault
        returned.append(await vault.create_key(ADMIN, "dataset", exportable=True, release_policy=POLICY))
        returned.append(await vault.create_key(ADMIN, "signer", KeyKind.ED25519))
        returned.append(await vault.create_key(ADMIN, "macs"))
        await vault.grant(ADMIN, "node-a", "dataset", {KeyOp.RELEASE})
        returned.append(await vault.wrap(ADMIN, "dataset", os.urandom(32)))
        token = env.issuer.issue(claims_for(node_a_key), ttl=600)
        returned.append(await vault.release("node-a", "dataset", token, pem(node_a_key)))
        returned.append(await vault.sign(ADMIN, "signer", b"checkpoint"))
        returned.append(await vault.hmac(ADMIN, "macs", b"value"))
        returned.append(await vault.rotate_key(ADMIN, "dataset"))
        for bad in (token, token[:-4] + "AAAA"):  # denied releases: a bad recipient, a bad signature
            with pytest.raises(ReleaseDeniedError) as caught:
                await vault.release("node-a", "dataset", bad, pem(node_a_key) if bad != token else b"x")
            returned.append(caught.value)
        returned.append(await vault.list_keys(ADMIN, include_deleted=True))
        return token

    token = run(scenario())
    env.vault.close()
    materials = list(env.materials().values())
    released = unwrap_as_recipient(returned[4].wrapped, node_a_key)
    assert released in materials  # the canary is alive: we know what to look for
    secrets = [token, token.split(".")[2], (env.root / "master.key").read_bytes().hex()]
    for material in materials:
        secrets += [
            material.hex(),
            material.hex().upper(),
            base64.b64encode(material).decode().rstrip("="),
            base64.urlsafe_b64encode(material).decode().rstrip("="),
        ]
    stored = b"".join(p.read_bytes() for p in env.root.iterdir() if p.name.startswith("vault.db"))
    texts = {
        "events": "\n".join(repr(e) + repr(e.to_record()) for e in env.observer.events),
        "log": caplog.text,
        "returned": "\n".join(repr(r) + str(r) for r in returned),
    }
    assert len(env.observer.events) == 8 and "'outcome': 'denied'" in texts["events"]
    for secret in secrets:
        assert secret.encode() not in stored
        for material in materials:
            assert material not in stored
        for where, text in texts.items():
            assert secret not in text, where
