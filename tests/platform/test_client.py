"""PlatformClient against a real server over the real local providers: the Protocols work the same remotely.

Each test runs one scenario on a fresh platform served by uvicorn on 127.0.0.1 (``served`` from
``test_service.py``); errors raised by the providers on the server must come back as the same classes.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import logging
import os
import tracemalloc
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from tests.platform.test_service import API, ISSUER, Platform, bearer, served
from vigil.api.listen import bind, url_of
from vigil.platform import wire
from vigil.platform.client import PlatformClient
from vigil.platform.client_base import ServiceUnreachableError, error_from
from vigil.platform.compute import Node, NodeState
from vigil.platform.errors import (
    AlreadyExistsError,
    ConflictError,
    DisabledError,
    ForbiddenError,
    IntegrityError,
    InvalidError,
    LockedError,
    NotFoundError,
    PlatformError,
    ReleaseDeniedError,
)
from vigil.platform.keyvault import KeyInfo, KeyKind, KeyOp, KeyVersion, ReleasedKey, Signature
from vigil.platform.local.keyvault import unwrap_with_material
from vigil.platform.local.release import encryption_jwk, unwrap_as_recipient
from vigil.platform.storage import ContainerInfo, Lock, ObjectInfo, StorageOp

T = TypeVar("T")
MEASUREMENT = "5a" * 48
MIB = 1 << 20
POLICY = {
    "version": "1.0.0",
    "anyOf": [{"authority": ISSUER, "allOf": [{"claim": "x-ms-attestation-type", "equals": "sevsnpvm"}]}],
}


@functools.cache
def recipient() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def recipient_pem() -> bytes:
    return (
        recipient()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def attestation_token(p: Platform, attestation_type: str = "sevsnpvm") -> str:
    claims = {
        "x-ms-attestation-type": attestation_type,
        "x-ms-runtime": {"keys": [encryption_jwk(recipient().public_key())]},
    }
    return p.issuer.issue(claims, ttl=300)


def test_key_lifecycle_and_wrap_unwrap_round_trip(tmp_path: Path) -> None:
    async def scenario(p: Platform, url: str) -> None:
        async with PlatformClient(url, p.admin_token) as client:
            keys = client.keys
            info = await keys.create_key("vigil", "k1", tags={"team": "ml"})
            assert (info.name, info.kind, info.tags, len(info.versions)) == (
                "k1",
                KeyKind.AES256,
                {"team": "ml"},
                1,
            )
            assert await keys.get_key("vigil", "k1") == info
            data_key = os.urandom(32)
            old = await keys.wrap("vigil", "k1", data_key)
            assert old.version == info.current and data_key not in old.ciphertext
            v2 = await keys.rotate_key("vigil", "k1")
            new = await keys.wrap("vigil", "k1", data_key)
            assert new.version == v2.version != old.version
            assert await keys.unwrap("vigil", old) == data_key == await keys.unwrap("vigil", new)
            disabled = await keys.set_version_enabled("vigil", "k1", old.version, False)
            assert disabled.enabled is False
            with pytest.raises(DisabledError):
                await keys.unwrap("vigil", old)
            await keys.set_version_enabled("vigil", "k1", old.version, True)
            assert await keys.unwrap("vigil", old) == data_key
            mac = await keys.hmac("vigil", "k1", b"subject-42")
            assert len(mac) == 32 and mac == await keys.hmac("vigil", "k1", b"subject-42")
            assert await keys.hmac("vigil", "k1", b"subject-42", old.version) != mac  # (k1 was rotated)
            assert await keys.hmac("vigil", "k1", b"subject-42", v2.version) == mac
            signer = await keys.create_key("vigil", "audit", KeyKind.ED25519)
            signature = await keys.sign("vigil", "audit", b"checkpoint")
            public = signer.versions[0].public_key
            assert public is not None and signature.algorithm == "Ed25519"
            Ed25519PublicKey.from_public_bytes(public).verify(signature.value, b"checkpoint")
            assert [k.name for k in await keys.list_keys("vigil")] == ["audit", "k1"]
            deleted = await keys.delete_key("vigil", "k1")
            assert deleted.deleted is not None
            assert [k.name for k in await keys.list_keys("vigil")] == ["audit"]
            assert [k.name for k in await keys.list_keys("vigil", include_deleted=True)] == ["audit", "k1"]
            with pytest.raises(ConflictError):
                await keys.purge_key("vigil", "k1")  # purge protection inside the retention period
            assert (await keys.recover_key("vigil", "k1")).deleted is None
            policy = await keys.set_release_policy("vigil", "k1", POLICY)
            assert policy.release_policy == POLICY
            assert (await keys.set_release_policy("vigil", "k1", None)).release_policy is None

    served(tmp_path, scenario)


def test_provider_errors_come_back_as_the_same_classes(tmp_path: Path) -> None:
    async def scenario(p: Platform, url: str) -> None:
        async with PlatformClient(url, p.admin_token) as admin, PlatformClient(url, p.node_token) as node:
            await admin.keys.create_key("vigil", "k1")
            await admin.storage.create_container("vigil", "data", key_name="k1")
            with pytest.raises(NotFoundError, match="nope"):
                await admin.keys.get_key("vigil", "nope")
            with pytest.raises(AlreadyExistsError, match="k1"):
                await admin.keys.create_key("vigil", "k1")
            with pytest.raises(InvalidError):
                await admin.keys.create_key("vigil", "bad name!")
            with pytest.raises(ForbiddenError):
                await node.keys.get_key("node-1", "k1")
            with pytest.raises(ForbiddenError):
                await node.storage.read("node-1", "data", "anything")
            with pytest.raises(NotFoundError):
                await admin.storage.read("vigil", "data", "missing")
            with pytest.raises(NotFoundError):
                await admin.compute.get_node("vigil", "ghost")
            with pytest.raises(ConflictError):
                await admin.keys.release("vigil", "k1", "token", recipient_pem())  # not exportable
            await admin.keys.create_key("vigil", "export", exportable=True, release_policy=POLICY)
            with pytest.raises(ReleaseDeniedError) as denied:
                await admin.keys.release("vigil", "export", "not.a.jwt", recipient_pem())
            assert denied.value.reason and str(denied.value) == f"key release denied: {denied.value.reason}"

    served(tmp_path, scenario)


def test_the_principal_argument_must_be_the_tokens(tmp_path: Path) -> None:
    async def scenario(p: Platform, url: str) -> None:
        async with PlatformClient(url, p.node_token) as node:
            with pytest.raises(ForbiddenError, match="belongs to principal 'node-1'"):
                await node.keys.list_keys("vigil")  # node-1's token, claiming to be the admin
            with pytest.raises(ForbiddenError, match="not a valid principal name"):
                await node.keys.list_keys("node 1\n")
        async with PlatformClient(url, "wrong-token") as stranger:
            with pytest.raises(ForbiddenError, match="not valid"):
                await stranger.keys.list_keys("vigil")

    served(tmp_path, scenario)


def test_grants_let_a_node_wrap_and_read_and_suspension_cuts_both(tmp_path: Path) -> None:
    async def scenario(p: Platform, url: str) -> None:
        async with PlatformClient(url, p.admin_token) as admin, PlatformClient(url, p.node_token) as node:
            await admin.keys.create_key("vigil", "k1")
            await admin.storage.create_container("vigil", "data", key_name="k1")
            await admin.storage.put("vigil", "data", "shard", b"training data")
            await admin.keys.grant("vigil", "node-1", "k1", {KeyOp.WRAP, KeyOp.UNWRAP})
            info = await admin.storage.set_access("vigil", "data", "node-1", frozenset({StorageOp.READ}))
            assert info.access == {"node-1": frozenset({StorageOp.READ})}
            wrapped = await node.keys.wrap("node-1", "k1", b"\x01" * 32)
            assert await node.keys.unwrap("node-1", wrapped) == b"\x01" * 32
            assert await node.storage.read("node-1", "data", "shard") == b"training data"
            await admin.keys.set_suspended("vigil", "node-1", True, reason="incident 7")
            await admin.storage.set_suspended("vigil", "node-1", True, reason="incident 7")
            with pytest.raises(ForbiddenError):
                await node.keys.unwrap("node-1", wrapped)
            with pytest.raises(ForbiddenError):
                await node.storage.read("node-1", "data", "shard")
            await admin.keys.set_suspended("vigil", "node-1", False)
            await admin.storage.set_suspended("vigil", "node-1", False)
            assert await node.storage.read("node-1", "data", "shard") == b"training data"
            await admin.keys.revoke("vigil", "node-1", "k1", {KeyOp.WRAP})
            with pytest.raises(ForbiddenError):
                await node.keys.wrap("node-1", "k1", b"\x02" * 32)
            assert await node.keys.unwrap("node-1", wrapped) == b"\x01" * 32  # unwrap kept
            await admin.keys.revoke("vigil", "node-1", "k1")
            with pytest.raises(ForbiddenError):
                await node.keys.unwrap("node-1", wrapped)

    served(tmp_path, scenario)


async def _pattern(total: int, block: int = MIB) -> AsyncIterator[bytes]:
    """``total`` bytes of a deterministic pattern, made as they are sent (never held whole)."""
    for i in range(0, total, block):
        yield hashlib.sha256(i.to_bytes(8, "big")).digest() * (min(block, total - i) // 32)


async def _peak(step: Awaitable[T]) -> tuple[T, int]:
    """``step``'s result and the peak of traced memory while it ran."""
    tracemalloc.reset_peak()
    result = await step
    return result, tracemalloc.get_traced_memory()[1]


async def _digest(blocks: AsyncIterator[bytes]) -> tuple[int, str]:
    digest, length = hashlib.sha256(), 0
    async for block in blocks:
        digest.update(block)
        length += len(block)
    return length, digest.hexdigest()


def test_a_20_mib_object_streams_up_and_down_without_being_held_whole(tmp_path: Path) -> None:
    """Client and server share this process, so traced memory covers both: going through HTTP may cost
    the provider's own peak (its encryption batches) plus a little, never another copy of the object."""
    size = 20 * MIB
    expected = asyncio.run(_digest(_pattern(size)))

    async def scenario(p: Platform, url: str) -> None:
        await p.vault.create_key("vigil", "k1")
        await p.storage.create_container("vigil", "data", key_name="k1")
        async with PlatformClient(url, p.admin_token) as client:
            tracemalloc.start()
            try:
                _, direct_put = await _peak(p.storage.put("vigil", "data", "direct", _pattern(size)))
                _, direct_get = await _peak(_digest(p.storage.get("vigil", "data", "direct")))
                upload = client.storage.put("vigil", "data", "big.bin", _pattern(size), metadata={"n": "1"})
                info, http_put = await _peak(upload)
                got, http_get = await _peak(_digest(client.storage.get("vigil", "data", "big.bin")))
            finally:
                tracemalloc.stop()
            assert (info.size, info.metadata) == (size, {"n": "1"})
            assert got == expected
            slack = 8 * MIB  # well under the object's 20 MiB: a whole copy anywhere would not fit
            assert http_put < direct_put + slack, f"upload peak {http_put / MIB:.1f} MiB"
            assert http_get < direct_get + slack, f"download peak {http_get / MIB:.1f} MiB"
            assert (await client.storage.head("vigil", "data", "big.bin")) == info

    served(tmp_path, scenario)


def test_locks_refuse_through_the_client(tmp_path: Path) -> None:
    async def scenario(p: Platform, url: str) -> None:
        async with PlatformClient(url, p.admin_token) as client:
            st = client.storage
            await client.keys.create_key("vigil", "k1")
            await st.create_container("vigil", "data", key_name="k1")
            await st.put("vigil", "data", "a", b"kept")
            assert (await st.set_lock("vigil", "data", Lock.READ_ONLY)).lock is Lock.READ_ONLY
            with pytest.raises(LockedError):
                await st.put("vigil", "data", "b", b"refused")
            with pytest.raises(LockedError):
                await st.put("vigil", "data", "b", _pattern(4 * MIB))  # streamed: refused, answer still read
            with pytest.raises(LockedError):
                await st.delete("vigil", "data", "a")
            assert await st.read("vigil", "data", "a") == b"kept"
            await st.set_lock("vigil", "data", Lock.NO_ACCESS)
            with pytest.raises(LockedError):
                await st.read("vigil", "data", "a")
            await st.set_lock("vigil", "data", Lock.NONE)
            assert [o.name for o in await st.list_objects("vigil", "data")] == ["a"]
            assert (await st.set_public_read("vigil", "data", True)).public_read is True
            assert [c.name for c in await st.list_containers("vigil")] == ["data"]
            await client.keys.rotate_key("vigil", "k1")
            assert await st.rewrap("vigil", "data") == 1
            assert await st.read("vigil", "data", "a") == b"kept"
            await st.delete("vigil", "data", "a")
            await st.delete_container("vigil", "data")
            with pytest.raises(NotFoundError):
                await st.get_container("vigil", "data")

    served(tmp_path, scenario)


def test_release_round_trip_and_a_denied_release(tmp_path: Path) -> None:
    async def scenario(p: Platform, url: str) -> None:
        async with PlatformClient(url, p.admin_token) as client:
            await client.keys.create_key("vigil", "model", exportable=True, release_policy=POLICY)
            wrapped = await client.keys.wrap("vigil", "model", b"\x07" * 32)
            released = await client.keys.release("vigil", "model", attestation_token(p), recipient_pem())
            assert released.algorithm == "RSA_AES_KEY_WRAP_256" and released.version == wrapped.version
            material = unwrap_as_recipient(released.wrapped, recipient())
            assert (
                unwrap_with_material(material, wrapped) == b"\x07" * 32
            )  # the node opens what the vault wrapped
            with pytest.raises(ReleaseDeniedError) as denied:
                await client.keys.release("vigil", "model", attestation_token(p, "sgx"), recipient_pem())
            assert "x-ms-attestation-type" in denied.value.reason

    served(tmp_path, scenario)


def test_compute_through_the_client_and_quarantine_cuts_the_node(tmp_path: Path) -> None:
    async def scenario(p: Platform, url: str) -> None:
        async with PlatformClient(url, p.admin_token) as admin, PlatformClient(url, p.node_token) as node:
            await admin.keys.create_key("vigil", "k1")
            await admin.storage.create_container("vigil", "data", key_name="k1")
            await admin.storage.put("vigil", "data", "shard", b"rows")
            await admin.storage.set_access("vigil", "data", "node-1", frozenset({StorageOp.READ}))
            registered = await admin.compute.register(
                "vigil", "n1", node_principal="node-1", measurement=MEASUREMENT, labels={"pool": "a"}
            )
            assert (registered.state, registered.labels) == (NodeState.PENDING, {"pool": "a"})
            await admin.compute.set_state("vigil", "n1", NodeState.ATTESTED)
            assert (
                await node.compute.set_state("node-1", "n1", NodeState.RUNNING)
            ).state is NodeState.RUNNING
            assert await node.storage.read("node-1", "data", "shard") == b"rows"
            quarantined = await admin.compute.quarantine(
                "vigil", "n1", reason="exfiltration", evidence={"finding": "f-1"}
            )
            assert quarantined.state is NodeState.QUARANTINED
            assert quarantined.quarantine.get("reason") == "exfiltration"
            with pytest.raises(ForbiddenError):
                await node.storage.read("node-1", "data", "shard")
            assert (
                await node.compute.get_node("node-1", "n1")
            ).state is NodeState.QUARANTINED  # its control channel
            with pytest.raises(ConflictError):
                await admin.compute.set_state("vigil", "n1", NodeState.RUNNING)
            released = await admin.compute.release("vigil", "n1", reason="false positive")
            assert released.state is NodeState.PENDING
            assert await node.storage.read("node-1", "data", "shard") == b"rows"
            assert [n.id for n in await admin.compute.list_nodes("vigil")] == ["n1"]

    served(tmp_path, scenario)


def test_canary_key_material_and_tokens_stay_out_of_logs_and_other_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    canary = os.urandom(32)
    answers: list[str] = []
    secrets_seen: dict[str, bytes] = {}

    async def scenario(p: Platform, url: str) -> None:
        async with PlatformClient(url, p.admin_token) as client, PlatformClient(url, p.node_token) as node:
            await client.keys.create_key("vigil", "model", exportable=True, release_policy=POLICY)
            await client.storage.create_container("vigil", "data", key_name="model")
            wrapped = await client.keys.wrap("vigil", "model", canary)
            assert await client.keys.unwrap("vigil", wrapped) == canary
            released = await client.keys.release("vigil", "model", attestation_token(p), recipient_pem())
            secrets_seen["material"] = unwrap_as_recipient(released.wrapped, recipient())
            await client.storage.put("vigil", "data", "o", b"payload", metadata={"k": "v"})
            with pytest.raises(ForbiddenError):
                await node.keys.unwrap("node-1", wrapped)
            with pytest.raises(ForbiddenError):
                await node.keys.list_keys("vigil")
        async with httpx.AsyncClient(base_url=url) as http:
            admin = bearer(p.admin_token)
            for path in (
                "/keys",
                "/keys?include_deleted=true",
                "/keys/model",
                "/storage/containers",
                "/storage/containers/data",
                "/storage/containers/data/objects",
                "/storage/containers/data/info/o",
                "/nodes",
            ):
                r = await http.get(API + path, headers=admin)
                assert r.status_code == 200, path
                answers.append(r.text)
            for headers in (bearer(p.admin_token + "x"), bearer(p.node_token, "vigil")):
                answers.append((await http.get(f"{API}/keys", headers=headers)).text)
            r = await http.post(
                f"{API}/keys/model/wrap", json={"data_key": wire.b64e(canary), "x": 1}, headers=admin
            )
            answers.append(r.text)
        secrets_seen["admin token"] = p.admin_token.encode()
        secrets_seen["node token"] = p.node_token.encode()

    served(tmp_path, scenario)
    secrets_seen["canary"] = canary
    assert any("uvicorn.access" in r.name for r in caplog.records)  # the access log was captured
    haystacks = {"logs": caplog.text, **{f"answer {i}": text for i, text in enumerate(answers)}}
    for what, secret in secrets_seen.items():
        forms = {
            secret.hex(),
            wire.b64e(secret),
            base64.b64encode(secret).decode().rstrip("="),
            secret.decode("latin-1"),
        }
        for where, text in haystacks.items():
            for form in forms:
                assert form not in text, f"{what} found in {where}"


def test_wire_shapes_round_trip() -> None:
    version = KeyVersion("k", "v1", KeyKind.ED25519, True, 1.5, public_key=b"\x01" * 32)
    info = KeyInfo("k", KeyKind.ED25519, "v1", (version,), False, {"version": "1.0.0"}, 2.5, {"a": "b"})
    assert wire.key_info_from(wire.key_info_json(info)) == info
    sig = Signature("k", "v1", "Ed25519", b"\xff" * 64)
    assert wire.signature_from(wire.signature_json(sig)) == sig
    rel = ReleasedKey("k", "v1", "RSA_AES_KEY_WRAP_256", b"\x00\x01")
    assert wire.released_key_from(wire.released_key_json(rel)) == rel
    c = ContainerInfo(
        "data", "k", Lock.NO_ACCESS, True, {"n": frozenset({StorageOp.READ, StorageOp.WRITE})}, 3.0
    )
    assert wire.container_from(wire.container_json(c)) == c
    o = ObjectInfo("data", "a/b", 10, 65536, "v1", 4.0, {"m": "é"})
    assert wire.object_from(wire.object_json(o)) == o
    n = Node("n1", "node-1", MEASUREMENT, NodeState.RUNNING, 5.0, "http://x", {"reason": "r"}, {"l": "1"})
    assert wire.node_from(wire.node_json(n)) == n
    with pytest.raises(PlatformError, match="malformed answer"):
        wire.node_from({"id": "n1"})
    with pytest.raises(PlatformError, match="malformed answer"):
        wire.key_info_from([])
    with pytest.raises(ValueError, match="not valid base64url"):
        wire.b64d("a*b")


def test_answers_without_the_error_envelope_map_by_status() -> None:
    def error(status: int, content: bytes) -> PlatformError:
        return error_from(httpx.Response(status, content=content))

    assert type(error(401, b"{}")) is ForbiddenError
    assert type(error(404, b'{"detail": "Not Found"}')) is NotFoundError
    assert type(error(502, b"<html>bad gateway</html>")) is PlatformError
    assert "502" in str(error(502, b""))
    known = error(500, b'{"error": {"code": "integrity", "message": "chunk 3 failed"}}')
    assert type(known) is IntegrityError and str(known) == "chunk 3 failed"
    unknown = error(418, b'{"error": {"code": "teapot", "message": "short and stout"}}')
    assert type(unknown) is PlatformError and str(unknown) == "short and stout"


def test_an_unreachable_service_is_a_platform_error() -> None:
    sock = bind("127.0.0.1", 0)
    url = url_of(sock)
    sock.close()  # nothing listens there now

    async def scenario() -> None:
        async with PlatformClient(url, "token", timeout=5) as client:
            with pytest.raises(ServiceUnreachableError):
                await client.keys.list_keys("vigil")
            with pytest.raises(ServiceUnreachableError):
                await client.storage.read("vigil", "data", "o")
            assert "token" not in repr(client)

    asyncio.run(scenario())
