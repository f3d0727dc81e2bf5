"""The local platform inside a real ``vigil run``: served, audited, watched, failing closed, and never leaking.

One daemon per test, driven as a node or an operator would: over loopback HTTP with :class:`PlatformClient`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.alerts.fakes import FakeReceiver
from tests.conftest import run_vigil, wait_until
from tests.streams.test_embedded import COMMANDS, Daemon
from vigil.platform.client import PlatformClient
from vigil.platform.compute import NodeState
from vigil.platform.errors import ForbiddenError, ReleaseDeniedError, UnavailableError
from vigil.platform.keyvault import KeyKind, KeyOp
from vigil.platform.local.keyvault import unwrap_with_material
from vigil.platform.local.masterkey import MasterKey
from vigil.platform.local.release import encryption_jwk, unwrap_as_recipient
from vigil.platform.local.tokens import TokenIssuer
from vigil.platform.storage import Lock, StorageOp

T = TypeVar("T")
ISSUER = "https://attestation.vigil.local"
MEASUREMENT = (
    "3c9e7a15f2d84b60a9c1e3f5b7d9021468ace0f2b4d6089a1c3e5f7b9d0f2a4c6e8a0c2e4f6b8d0a2c4e6f8a0b2c4d6e"
)
POLICY = {
    "version": "1.0.0",
    "anyOf": [
        {
            "authority": ISSUER,
            "allOf": [
                {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
                {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": False},
                {"claim": "x-ms-sevsnpvm-launchmeasurement", "equals": MEASUREMENT},
            ],
        }
    ],
}
RULES = """\
id: t.any-platform-change
title: Any platform change
severity: low
kind: platform
match: startswith(action, "platform.")
tests:
  - {name: fires, events: [{kind: platform, action: platform.key.create}], expect: {findings: 1}}
"""


WEBHOOK_SECRET = "alarm-test-secret-0123456789abcdef"


class Running:
    def __init__(self, base: str, work: Path, daemon: Daemon, receiver: FakeReceiver) -> None:
        self.base, self.work, self.daemon, self.receiver = base, work, daemon, receiver
        self.platform_dir = work / "var" / "platform"
        self.operator = (self.platform_dir / "operator.token").read_text().strip()

    def client(self, token: str | None = None) -> PlatformClient:
        return PlatformClient(self.base, token or self.operator)

    def issuer(self) -> TokenIssuer:
        """The daemon's own attestation token issuer, opened from its files (same machine, same master)."""
        master = MasterKey.from_file(self.platform_dir / "master.key", create=False)
        return TokenIssuer.load_or_create(self.platform_dir / "attestation-signing.key", master, ISSUER)


def alarms(daemon: Running) -> list[str]:
    """The kinds of the degraded alarms the sink received, in order."""
    return [a["kind"] for a in daemon.receiver.accepted if a["rule"] == "vigil.degraded"]


def run(coro: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(coro())  # type: ignore[arg-type]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Running]:
    (tmp_path / "rules.yaml").write_text(RULES, encoding="utf-8")
    with FakeReceiver(WEBHOOK_SECRET) as receiver:  # the alert sink: where the alarm must arrive
        (tmp_path / "profile.yaml").write_text(
            "data_dir: var\nhttp:\n  port: 0\ndetect:\n  rules: rules.yaml\n"
            "audit:\n  checkpoint_every: 1\n  checkpoint_files: [var/cp/a.jsonl]\n"
            f"alerts:\n  default: [webhook]\n  webhook:\n    url: {receiver.url('/hook')}\n"
            f"    secret: {WEBHOOK_SECRET}\n",
            encoding="utf-8",
        )
        proc = Daemon([*COMMANDS["cli"], str(tmp_path / "profile.yaml")], tmp_path)
        try:
            base = proc.wait_for_log(r"serving on (http://127\.0\.0\.1:\d+)").group(1)
            yield Running(base, tmp_path, proc, receiver)
        finally:
            proc.stop()


def _wait(check: Callable[[], object], what: str, deadline: float = 20.0) -> None:
    wait_until(check, what, deadline=deadline)


def _findings(base: str) -> list[dict[str, Any]]:
    return httpx.get(f"{base}/v1/findings", params={"limit": 1000}).json()["findings"]  # type: ignore[no-any-return]


def test_key_material_never_reaches_logs_audit_store_or_responses(daemon: Running) -> None:
    node_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    node_pem = node_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    data_key = os.urandom(32)
    node_token = daemon.work / "node.token"
    responses: list[str] = []

    async def scenario() -> bytes:
        async with daemon.client() as op:
            await op.keys.create_key(
                "vigil", "data-key", KeyKind.AES256, exportable=True, release_policy=POLICY
            )
            await op.keys.grant("vigil", "node-1", "data-key", {KeyOp.RELEASE, KeyOp.UNWRAP})
            await op.storage.create_container("vigil", "train", key_name="data-key")
            await op.storage.set_access("vigil", "train", "node-1", frozenset({StorageOp.READ}))
            await op.storage.put("vigil", "train", "shard-0", b"secret training shard")
            wrapped = await op.keys.wrap("vigil", "data-key", data_key)
        token = issue_node_token(daemon)
        node_token.write_text(token)
        claims = {
            "x-ms-ver": "1.0", "x-ms-attestation-type": "sevsnpvm", "x-ms-sevsnpvm-is-debuggable": False,
            "x-ms-sevsnpvm-launchmeasurement": MEASUREMENT,
            "x-ms-runtime": {"keys": [encryption_jwk(node_key.public_key())]},
        }  # fmt: skip
        attestation = daemon.issuer().issue(claims, 600)
        async with daemon.client(token) as node:
            released = await node.keys.release("node-1", "data-key", attestation, node_pem)
            material = unwrap_as_recipient(released.wrapped, node_key)
            assert unwrap_with_material(material, wrapped) == data_key  # the node can open its data keys
            assert await node.storage.read("node-1", "train", "shard-0") == b"secret training shard"
            debug = daemon.issuer().issue({**claims, "x-ms-sevsnpvm-is-debuggable": True}, 600)
            with pytest.raises(ReleaseDeniedError, match="debuggable"):
                await node.keys.release("node-1", "data-key", debug, node_pem)
        for path in ("/v1/status", "/metrics", "/v1/findings?limit=1000", "/v1/dead-letters"):
            responses.append(httpx.get(daemon.base + path).text)
        return material

    material = run(scenario)
    _wait(
        lambda: any(f["rule"] == "t.any-platform-change" for f in _findings(daemon.base)), "platform findings"
    )
    daemon.daemon.stop()
    secrets = [material, data_key]
    forms = [
        form
        for s in secrets
        for form in (s, s.hex().encode(), base64.b64encode(s), base64.urlsafe_b64encode(s).rstrip(b"="))
    ]
    forms += [daemon.operator.encode(), node_token.read_text().encode()]
    haystacks: dict[str, bytes] = {"daemon log": daemon.daemon.read_log().encode()}
    haystacks |= {f"response {i}": r.encode() for i, r in enumerate(responses)}
    for path in (daemon.work / "var").rglob("*"):
        if path.is_file() and path.suffix != ".token":  # the token files hold tokens by design
            haystacks[str(path.relative_to(daemon.work))] = path.read_bytes()
    assert any("audit.db" in name for name in haystacks) and any("vigil.db" in name for name in haystacks)
    for name, hay in haystacks.items():
        for form in forms:
            assert form not in hay, f"a secret ({len(form)} bytes) leaked into {name}"


def issue_node_token(daemon: Running) -> str:
    """A token for principal node-1, as an operator issues it with ``vigil platform principals add``."""
    result = run_vigil("platform", "--config", "profile.yaml", "principals", "add", "node-1", cwd=daemon.work)
    assert result.returncode == 0, result.stderr
    return result.stdout.decode().strip()


def test_audit_failure_refuses_changes_degrades_and_recovers(daemon: Running) -> None:
    sink = daemon.work / "var" / "cp" / "a.jsonl"

    async def create(name: str) -> None:
        async with daemon.client() as op:
            await op.keys.create_key("vigil", name)

    run(lambda: create("k1"))
    assert httpx.get(daemon.base + "/readyz").json() == {"status": "ready"}
    sink.unlink()
    sink.mkdir()  # the only checkpoint sink cannot be written: every append owes a checkpoint (every 1)
    with pytest.raises(UnavailableError, match="cannot be recorded"):
        run(lambda: create("k2"))
    ready = httpx.get(daemon.base + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    assert "audit log unavailable" in ready.json()["reason"] and "sink" in ready.json()["reason"]
    # the alarm went out past the outbox: a critical trigger at the sink, no outbox row for it
    wait_until(lambda: alarms(daemon) == ["trigger"], "the degraded alarm at the sink", deadline=30)
    [raised] = [a for a in daemon.receiver.accepted if a["rule"] == "vigil.degraded"]
    assert raised["severity"] == "critical" and "audit log unavailable" in raised["summary"]
    outbox = httpx.get(daemon.base + "/v1/alerts").json()
    assert all("dedup_key" in row for row in outbox["alerts"])
    assert not [row for row in outbox["alerts"] if row["dedup_key"] == raised["dedup_key"]]
    metrics = httpx.get(daemon.base + "/metrics").text
    assert "vigil_degraded 1" in metrics and "vigil_platform_feed_failures_total 1" in metrics

    async def names() -> list[str]:
        async with daemon.client() as op:
            return [k.name for k in await op.keys.list_keys("vigil")]

    assert "k2" not in run(names)  # nothing changed: the change was refused, not half done
    shutil.rmtree(sink)
    run(lambda: create("k2"))
    assert httpx.get(daemon.base + "/readyz").json() == {"status": "ready"}
    assert "vigil_degraded 0" in httpx.get(daemon.base + "/metrics").text
    wait_until(lambda: alarms(daemon) == ["trigger", "resolve"], "the recovery at the sink", deadline=30)
    assert 'vigil_alarms_total{outcome="sent"} 2' in httpx.get(daemon.base + "/metrics").text
    daemon.daemon.stop()
    verify = run_vigil("audit", "verify", "--config", "profile.yaml", cwd=daemon.work)
    assert verify.returncode == 0, verify.stderr


def test_quarantine_through_the_api_cuts_the_node_off(daemon: Running) -> None:
    token = issue_node_token(daemon)

    async def scenario() -> None:
        async with daemon.client() as op:
            await op.keys.create_key("vigil", "data-key", exportable=True, release_policy=POLICY)
            await op.keys.grant("vigil", "node-1", "data-key", {KeyOp.WRAP, KeyOp.UNWRAP, KeyOp.RELEASE})
            await op.storage.create_container("vigil", "train", key_name="data-key")
            await op.storage.set_access("vigil", "train", "node-1", frozenset({StorageOp.READ}))
            await op.storage.put("vigil", "train", "shard-0", b"x" * 1000)
            await op.compute.register("vigil", "node-1", node_principal="node-1", measurement=MEASUREMENT)
            async with daemon.client(token) as node:
                wrapped = await node.keys.wrap("node-1", "data-key", b"k" * 32)
                assert await node.storage.read("node-1", "train", "shard-0") == b"x" * 1000
                await op.compute.quarantine("vigil", "node-1", reason="test", evidence={})
                assert (await node.compute.get_node("node-1", "node-1")).state is NodeState.QUARANTINED
                with pytest.raises(ForbiddenError, match="suspended"):
                    await node.keys.unwrap("node-1", wrapped)
                with pytest.raises(ForbiddenError, match="suspended"):
                    await node.storage.read("node-1", "train", "shard-0")
                node_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                claims = {
                    "x-ms-attestation-type": "sevsnpvm", "x-ms-sevsnpvm-is-debuggable": False,
                    "x-ms-sevsnpvm-launchmeasurement": MEASUREMENT,
                    "x-ms-runtime": {"keys": [encryption_jwk(node_key.public_key())]},
                }  # fmt: skip
                pem = node_key.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                )
                with pytest.raises(ForbiddenError, match="suspended"):
                    await node.keys.release("node-1", "data-key", daemon.issuer().issue(claims, 600), pem)
            await op.storage.set_lock("vigil", "train", Lock.NONE)

    run(scenario)
    _wait(lambda: sum(f["rule"] == "t.any-platform-change" for f in _findings(daemon.base)) >= 1, "findings")


def test_an_incident_change_is_audited_before_it_happens(daemon: Running) -> None:
    async def change() -> None:
        async with daemon.client() as op:
            await op.keys.create_key("vigil", "k1")

    run(change)
    _wait(lambda: bool(httpx.get(f"{daemon.base}/v1/incidents").json()["incidents"]), "an incident")
    incident = httpx.get(f"{daemon.base}/v1/incidents").json()["incidents"][0]["id"]
    token = (daemon.work / "var" / "ingest.token").read_text().strip()
    r = httpx.post(
        f"{daemon.base}/v1/incidents/{incident}/acknowledge",
        headers={"Authorization": f"Bearer {token}"},
        json={"note": "looking"},
    )
    assert r.status_code == 200, r.text
    shown = run_vigil(
        "audit", "show", "--config", "profile.yaml", "--kind", "incident_change", "--json", cwd=daemon.work
    )
    assert shown.returncode == 0, shown.stderr
    records = [json.loads(line) for line in shown.stdout.decode().splitlines()]
    assert [(r["subject"], r["details"]["to"], r["details"]["note"]) for r in records] == [
        (incident, "acknowledged", "looking")
    ]
