"""Attestation through a real ``vigil run``: a node proves itself with software SEV-SNP evidence over the
platform API, gets a token, and the key vault releases its key; a debuggable node is refused and the shipped
attestation rules see it."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import run_vigil
from tests.streams.test_embedded import COMMANDS, Daemon
from vigil.platform.client import PlatformClient
from vigil.platform.compute import NodeState
from vigil.platform.keyvault import KeyKind, KeyOp
from vigil.platform.local.masterkey import MasterKey
from vigil.platform.local.release import unwrap_as_recipient
from vigil.training_node.evidence import LaunchConfig, SoftwareTee, bind_report_data
from vigil.training_node.telemetry import sign

RULES = Path(__file__).resolve().parents[2] / "rules"
MEASUREMENT = (
    "3c9e7a15f2d84b60a9c1e3f5b7d9021468ace0f2b4d6089a1c3e5f7b9d0f2a4c6e8a0c2e4f6b8d0a2c4e6f8a0b2c4d6e"
)
ISSUER = "https://attestation.vigil.local"
POLICY = {
    "version": "1.0.0",
    "anyOf": [
        {
            "authority": ISSUER,
            "allOf": [
                {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": False},
                {"claim": "x-ms-sevsnpvm-launchmeasurement", "equals": MEASUREMENT},
            ],
        }
    ],
}


class Running:
    def __init__(self, base: str, work: Path, daemon: Daemon) -> None:
        self.base, self.work, self.daemon = base, work, daemon
        self.operator = (work / "var" / "platform" / "operator.token").read_text().strip()

    def token_for(self, name: str) -> str:
        done = run_vigil("platform", "--config", "profile.yaml", "principals", "add", name, cwd=self.work)
        assert done.returncode == 0, done.stderr
        return done.stdout.decode().strip()

    def platform(self, fn: Callable[[PlatformClient], Any], token: str | None = None) -> Any:
        async def call() -> Any:
            async with PlatformClient(self.base, token or self.operator) as client:
                return await fn(client)

        return asyncio.run(call())


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    work = tmp_path_factory.mktemp("attest")
    (work / "profile.yaml").write_text(
        f"data_dir: var\nhttp:\n  port: 0\ndetect:\n  rules: {RULES}\n"
        f"platform:\n  allowed_measurements: [{MEASUREMENT}]\n  tee_key_bits: 2048\n",
        encoding="utf-8",
    )
    proc = Daemon([*COMMANDS["cli"], str(work / "profile.yaml")], work)
    try:
        base = proc.wait_for_log(r"serving on (http://127\.0\.0\.1:\d+)").group(1)
        yield Running(base, work, proc)
    finally:
        proc.stop()


def _attest(
    d: Running, node: str, token: str, debug: bool = False
) -> tuple[httpx.Response, rsa.RSAPrivateKey]:
    """What a node does: a nonce, a report binding it with a fresh key, the evidence posted."""
    auth = {"Authorization": f"Bearer {token}"}
    nonce = httpx.post(f"{d.base}/platform/v1/attestation/nonce", json={"node_id": node}, headers=auth)
    assert nonce.status_code == 200, nonce.text + d.daemon.read_log()[-3000:]
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    measurement = bytes.fromhex(MEASUREMENT)
    config = LaunchConfig.debuggable(measurement) if debug else LaunchConfig(measurement)
    master = MasterKey.from_file(d.work / "var" / "platform" / "master.key", create=False)
    tee = SoftwareTee.load_or_create(
        d.work / "var" / "platform" / "tee", config, key_bits=2048, master=master
    )
    bundle = asyncio.run(tee.report(bind_report_data(nonce.json()["nonce"], pem)))
    body = {
        "node_id": node,
        "nonce": nonce.json()["nonce"],
        "public_key": base64.urlsafe_b64encode(pem).decode().rstrip("="),
        "evidence": bundle.to_json(),
    }
    return httpx.post(f"{d.base}/platform/v1/attestation/attest", json=body, headers=auth, timeout=30), key


def test_an_attested_node_gets_its_key_and_a_debuggable_one_is_refused_and_seen(daemon: Running) -> None:
    token = daemon.token_for("node-1")
    daemon.platform(
        lambda c: c.compute.register("vigil", "node-1", node_principal="node-1", measurement=MEASUREMENT)
    )
    daemon.platform(
        lambda c: c.keys.create_key(
            "vigil", "data-key", KeyKind.AES256, exportable=True, release_policy=POLICY
        )
    )
    daemon.platform(lambda c: c.keys.grant("vigil", "node-1", "data-key", {KeyOp.RELEASE}))

    answer, key = _attest(daemon, "node-1", token)
    assert answer.status_code == 200, answer.text
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    released = daemon.platform(
        lambda c: c.keys.release("node-1", "data-key", answer.json()["token"], pem), token
    )
    assert len(unwrap_as_recipient(released.wrapped, key)) == 32
    assert daemon.platform(lambda c: c.compute.get_node("vigil", "node-1")).state is NodeState.ATTESTED

    token2 = daemon.token_for("node-2")
    refused, _ = _attest(daemon, "node-2", token2, debug=True)
    assert refused.status_code == 403 and "debug" in refused.json()["error"]["message"], refused.text

    def findings() -> list[str]:
        found = httpx.get(f"{daemon.base}/v1/findings", params={"limit": 1000}).json()["findings"]
        return [f["rule"] for f in found]

    end = time.monotonic() + 20
    while "att.debuggable-guest" not in findings() and time.monotonic() < end:
        time.sleep(0.2)
    assert "att.debuggable-guest" in findings(), findings()


def test_telemetry_signed_by_the_attested_key_passes_and_a_forged_record_is_a_finding(
    daemon: Running,
) -> None:
    token = daemon.token_for("node-3")
    answer, key = _attest(daemon, "node-3", token)
    assert answer.status_code == 200, answer.text
    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def record(seq: int) -> dict[str, Any]:
        return {
            "schema": "vigil.telemetry/1", "type": "train.step", "node_id": "node-3",
            "time": "2026-11-26T04:00:00Z", "seq": seq, "attested": True, "metrics": {"step": seq, "loss": 0.4},
        }  # fmt: skip

    ingest = (daemon.work / "var" / "ingest.token").read_text().strip()
    body = [sign(record(1), key), sign(record(2), forger)]
    r = httpx.post(f"{daemon.base}/v1/events", json=body, headers={"Authorization": f"Bearer {ingest}"})
    assert r.status_code == 200 and r.json()["accepted"] == 2, r.text

    def bad() -> list[dict[str, Any]]:
        found = httpx.get(f"{daemon.base}/v1/findings", params={"rule": "tel.bad-signature"}).json()
        return found["findings"]  # type: ignore[no-any-return]

    end = time.monotonic() + 20
    while not bad() and time.monotonic() < end:
        time.sleep(0.2)
    assert len(bad()) == 1, bad()
    # the signature check changed the events after normalising: the log keeps them, not the bytes received
    with sqlite3.connect(daemon.work / "var" / "vigil.db") as conn:
        form, stored = conn.execute(
            "SELECT form, body FROM event_batches WHERE source = 'http:events' ORDER BY last DESC LIMIT 1"
        ).fetchone()
    assert form == "events" and b'"signature":"valid"' in stored and b'"signature":"invalid"' in stored
