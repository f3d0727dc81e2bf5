"""Audit records: canonical bytes, the chain hash, details normalisation and the secrets guard."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from vigil.audit.record import (
    Actor,
    ActorKind,
    AuditEntry,
    AuditKind,
    build_record,
    canonical_bytes,
    check_no_secrets,
    genesis_hash,
    normalise_details,
    secret_key_name,
)


def _record(details: dict[str, object] | None = None, prev: bytes = b"\x11" * 32):
    return build_record(
        7, 1_767_225_600_123_456, 42, Actor.rule("r.1"), AuditKind.ACTION_INTENT, "vm/web-1",
        normalise_details(details or {"b": 1, "a": [1, 2]}), prev,
    )  # fmt: skip


def test_canonical_bytes_are_sorted_compact_json() -> None:
    rec = _record()
    assert rec.canonical() == (
        b'{"actor":{"id":"r.1","kind":"rule"},"details":{"a":[1,2],"b":1},"kind":"action_intent",'
        b'"mono_us":42,"seq":7,"subject":"vm/web-1","time_us":1767225600123456,"v":1}'
    )


def test_hash_is_sha256_of_leaf_prefix_prev_and_canonical() -> None:
    rec = _record()
    assert rec.hash == hashlib.sha256(b"\x00" + rec.prev_hash + rec.canonical()).digest()
    assert rec.computed_hash() == rec.hash


def test_any_field_change_changes_the_hash() -> None:
    base = _record()
    assert _record({"b": 2, "a": [1, 2]}).hash != base.hash
    assert _record(prev=b"\x12" * 32).hash != base.hash
    moved = canonical_bytes(8, base.time_us, base.mono_us, base.actor, base.kind, base.subject, base.details)
    assert moved != base.canonical()  # seq is inside the hashed bytes: a moved record does not verify


def test_key_order_of_details_does_not_matter() -> None:
    assert _record({"a": [1, 2], "b": 1}).hash == _record({"b": 1, "a": [1, 2]}).hash


def test_genesis_binds_the_log_id() -> None:
    assert genesis_hash("a" * 32) != genesis_hash("b" * 32)
    assert len(genesis_hash("x")) == 32


def test_normalise_details_round_trips_json() -> None:
    assert normalise_details({"t": (1, 2), "n": float("nan"), "d": {"z": 1}}) == {
        "d": {"z": 1},
        "n": None,
        "t": [1, 2],
    }
    with pytest.raises(ValueError, match="string keys"):
        normalise_details({1: "x"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="JSON object"):
        normalise_details({"x": object()})


def test_to_json_has_hex_hashes() -> None:
    data = _record().to_json()
    assert data["hash"] == _record().hash.hex()
    assert data["actor"] == {"kind": "rule", "id": "r.1"}
    orjson.dumps(data)


@pytest.mark.parametrize(
    "name",
    [
        "password", "webhook_secret", "sasToken", "private_key", "privateKey", "key_material", "apiKey",
        "client-secret", "Authorization", "connection_string", "SAS", "refresh_token", "signingKey",
        "db.passwd", "accessKey", "PRIVATE_KEY", "credentials",
    ],
)  # fmt: skip
def test_secret_key_names_are_recognised(name: str) -> None:
    assert secret_key_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "key",
        "key_name",
        "key_version",
        "keyRelease",
        "policy_hash",
        "subject",
        "rule_id",
        "principal",
        "kind",
    ],
)
def test_ordinary_key_names_pass(name: str) -> None:
    assert not secret_key_name(name)


def test_secrets_are_refused_at_any_depth_without_echoing_them() -> None:
    with pytest.raises(ValueError, match=r"details\.a\[1\]\.password names a secret") as err:
        check_no_secrets({"a": [{"ok": 1}, {"password": "hunter2-canary"}]})
    assert "hunter2-canary" not in str(err.value)


@pytest.mark.parametrize(
    "value",
    [
        "-----BEGIN PRIVATE KEY-----\nMIIE...",
        "-----BEGIN EC PRIVATE KEY-----",
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJub2RlLTEifQ.c2lnbmF0dXJl",
        "https://acct.blob.core.windows.net/c/b?sv=2022-11-02&se=2026&sig=AbCdEf0123456789abcdEF%3D",
        "Bearer abcdefghijklmnopqrstuvwxyz012345",
    ],
)
def test_secret_looking_values_are_refused(value: str) -> None:
    with pytest.raises(ValueError, match="looks like") as err:
        check_no_secrets({"note": value})
    assert value not in str(err.value)
    with pytest.raises(ValueError, match="subject looks like"):
        check_no_secrets({}, subject=value)


def test_ordinary_details_pass() -> None:
    check_no_secrets({"key": "vigil-audit-signing", "version": "ab" * 16, "hash": "00" * 32, "n": [1, None]})


def test_actor_constructors_and_entry_repr_hides_secrets() -> None:
    assert Actor.user("alice") == Actor(ActorKind.USER, "alice")
    assert Actor.system().id == "vigil"
    entry = AuditEntry(Actor.user("a"), AuditKind.LOGIN, "ui", {}, secrets={"token": "canary-value"})
    assert "canary-value" not in repr(entry)
