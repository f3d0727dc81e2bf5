"""Telemetry signatures checked at ingestion against the key each node attested with."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from vigil.events.normalizers.telemetry import TelemetryNormalizer
from vigil.platform.local.node_keys import NodeKeys
from vigil.streams.telemetry_check import TelemetryCheck
from vigil.training_node.telemetry import sign

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _record(node: str, seq: int) -> dict[str, object]:
    return {
        "schema": "vigil.telemetry/1", "type": "heartbeat", "node_id": node, "time": "2026-11-26T04:00:00Z",
        "seq": seq, "attested": True,
    }  # fmt: skip


def test_each_record_gets_its_verdict_and_only_a_valid_one_keeps_attested(tmp_path: Path) -> None:
    keys = NodeKeys(tmp_path / "node-keys.json")
    keys.set("node-1", _pem(KEY))
    check = TelemetryCheck(NodeKeys(tmp_path / "node-keys.json"))  # another reader of the same file
    n = TelemetryNormalizer()
    events = [
        n.normalize(sign(_record("node-1", 1), KEY)),
        n.normalize(sign(_record("node-1", 2), OTHER)),
        n.normalize(_record("node-1", 3)),
        n.normalize(sign(_record("node-9", 4), KEY)),
    ]
    checked = check(events)
    assert [e.labels["signature"] for e in checked] == ["valid", "invalid", "missing", "unknown-key"]
    assert [e.node.attested for e in checked] == [True, False, False, False]
    assert [e.id for e in checked] == [e.id for e in events]
    assert check.counts == {"valid": 1, "invalid": 1, "missing": 1, "unknown-key": 1}


def test_a_new_attestation_replaces_the_key(tmp_path: Path) -> None:
    keys = NodeKeys(tmp_path / "node-keys.json")
    keys.set("node-1", _pem(OTHER))
    check = TelemetryCheck(keys)
    record = TelemetryNormalizer().normalize(sign(_record("node-1", 1), KEY))
    assert check([record])[0].labels["signature"] == "invalid"
    keys.set("node-1", _pem(KEY))
    assert check([record])[0].labels["signature"] == "valid"
