"""AzureCompute and the ``quarantine_vm`` remediator against the stateful fake ARM, over the real SDK clients.

Scenarios from the issue: quarantine then rollback (the ARM requests, in order, and the end state), a dry
run that only reads, 429 with ``Retry-After`` honoured, a 503 after the deallocate ran (reconciled, not
re-sent), and a crash during the deallocate wait that resumes polling from the persisted token without a
second ``POST``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from tests.platform.azure.fake_arm import FakeArm, mutations, serving
from vigil.platform.azure.arm import ArmConfig
from vigil.platform.azure.compute import AzureCompute
from vigil.platform.azure.lro import LroStore
from vigil.platform.azure.network import PLATFORM_TAGS
from vigil.platform.compute import NodeState
from vigil.platform.errors import ConflictError, ForbiddenError, NotFoundError
from vigil.remediators.base import Context
from vigil.remediators.quarantine_vm import QuarantineVm

RG = "rg-train"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[FakeArm, ArmConfig]]:
    with serving(tmp_path / "tls") as (fake, arm):
        old = fake.add_nsg(RG, "nsg-app")
        fake.add_vm(RG, "cvm-1", nics={"cvm-1-nic0": old, "cvm-1-nic1": None}, tags={"team": "ml"})
        yield fake, arm


def compute(arm: ArmConfig, tmp_path: Path, **kw: Any) -> AzureCompute:
    return AzureCompute(arm, resource_groups=[RG], lro_store=tmp_path / "lro.db", **kw)


def context(provider: AzureCompute) -> Context:
    # the remediator acts through compute only; vault and storage are not touched by quarantine_vm
    return Context(cast(Any, None), cast(Any, None), provider, "vigil")


def vm(fake: FakeArm, name: str = "cvm-1") -> dict[str, Any]:
    return fake.get(fake.rid(RG, "Microsoft.Compute", "virtualMachines", name))


def nic_nsg(fake: FakeArm, nic: str) -> str | None:
    props = fake.get(fake.rid(RG, "Microsoft.Network", "networkInterfaces", nic))["properties"]
    return (props.get("networkSecurityGroup") or {}).get("id")


def power(fake: FakeArm, name: str = "cvm-1") -> str:
    return fake.power[fake.rid(RG, "Microsoft.Compute", "virtualMachines", name).lower()]


def test_quarantine_then_rollback_through_the_remediator(
    env: tuple[FakeArm, ArmConfig], tmp_path: Path
) -> None:
    fake, arm = env
    old = fake.rid(RG, "Microsoft.Network", "networkSecurityGroups", "nsg-app")
    qnsg = fake.rid(RG, "Microsoft.Network", "networkSecurityGroups", "vigil-quarantine-cvm-1")
    remediator = QuarantineVm()

    async def main() -> None:
        provider = compute(arm, tmp_path)
        ctx = context(provider)
        try:
            params = remediator.params({"reason": "INC-412 exfiltration"})
            plan = remediator.plan("cvm-1", params, await remediator.check(ctx, "cvm-1", params))
            assert [s.name for s in plan.steps] == ["collect_evidence", "quarantine"]
            start = len(fake.ledger)
            for i in range(len(plan.steps)):
                await remediator.apply_step(ctx, plan, i)
            assert await remediator.verify(ctx, plan) is None
            assert mutations(fake, start) == [
                ("PATCH", "virtualMachines/cvm-1"),  # the record, before anything changes
                ("PUT", "networkSecurityGroups/vigil-quarantine-cvm-1"),
                ("PUT", "networkInterfaces/cvm-1-nic0"),
                ("PUT", "networkInterfaces/cvm-1-nic1"),
                ("PUT", f"snapshots/{vm(fake)['tags']['vigil-q-snapshot']}"),
                ("POST", "cvm-1/deallocate"),
                ("PATCH", "virtualMachines/cvm-1"),  # done, last
            ]
            node = await provider.get_node("vigil", "cvm-1")
            assert node.state == NodeState.QUARANTINED
            assert node.quarantine["previous_nsgs"] == {"cvm-1-nic0": f"{RG}/nsg-app", "cvm-1-nic1": "none"}
            assert node.quarantine["previous_power"] == "running"
            assert node.labels == {"team": "ml"}

            # end state: isolation NSG on every NIC, with flush and the platform service-tag denies
            assert nic_nsg(fake, "cvm-1-nic0") == nic_nsg(fake, "cvm-1-nic1") == qnsg
            nsg = fake.get(qnsg)["properties"]
            assert nsg["flushConnection"] is True
            outbound_denied = {
                r["properties"]["destinationAddressPrefix"]
                for r in nsg["securityRules"]
                if r["properties"]["direction"] == "Outbound" and r["properties"]["access"] == "Deny"
            }
            assert outbound_denied == {"*", *PLATFORM_TAGS}
            snap = fake.get(fake.rid(RG, "Microsoft.Compute", "snapshots", node.quarantine["snapshot"]))
            assert snap["properties"]["creationData"]["sourceResourceId"].endswith("/disks/cvm-1-os")
            assert snap["properties"]["networkAccessPolicy"] == "DenyAll"
            assert power(fake) == "deallocated"

            # a repeated quarantine changes nothing
            again = len(fake.ledger)
            await provider.quarantine("vigil", "cvm-1", reason="again", evidence={})
            assert mutations(fake, again) == []

            start = len(fake.ledger)
            result = await remediator.rollback(ctx, plan)
            assert result == {"changed": True, "state": "pending"}
            assert mutations(fake, start) == [
                ("PUT", "networkInterfaces/cvm-1-nic0"),
                ("PUT", "networkInterfaces/cvm-1-nic1"),
                ("DELETE", "networkSecurityGroups/vigil-quarantine-cvm-1"),
                ("POST", "cvm-1/start"),
                ("PATCH", "virtualMachines/cvm-1"),
            ]
        finally:
            await provider.close()

    asyncio.run(main())
    assert nic_nsg(fake, "cvm-1-nic0") == old
    assert nic_nsg(fake, "cvm-1-nic1") is None
    assert qnsg.lower() not in fake.resources
    assert power(fake) == "running"
    assert vm(fake)["tags"] == {"team": "ml", "vigil-state": "pending"}
    assert any("/snapshots/vigil-q-cvm-1-" in key for key in fake.resources)  # evidence is kept


def test_dry_run_issues_only_gets(env: tuple[FakeArm, ArmConfig], tmp_path: Path) -> None:
    fake, arm = env
    remediator = QuarantineVm()

    async def main() -> None:
        provider = compute(arm, tmp_path)
        try:
            ctx = context(provider)
            params = remediator.params({})
            plan = remediator.plan("cvm-1", params, await remediator.check(ctx, "cvm-1", params))
            assert not plan.noop
            await remediator.fleet(ctx)
        finally:
            await provider.close()

    asyncio.run(main())
    assert fake.ledger and {c.method for c in fake.ledger} == {"GET"}


def test_429_retry_after_is_honoured_and_a_503_after_deallocate_is_not_resent(
    env: tuple[FakeArm, ArmConfig], tmp_path: Path
) -> None:
    fake, arm = env
    fake.fail("GET", r"/networkInterfaces/cvm-1-nic0$", 429, retry_after="1")
    fake.fail("POST", r"/deallocate$", 503, after_apply=True)
    _quarantine_cvm1(arm, tmp_path)
    assert _throttled_gap(fake) >= 0.95  # the advised second, not azure-core's immediate retry
    posts = fake.calls("POST", r"/deallocate$")
    assert [c.status for c in posts] == [503]  # ran on the server; reconciled by reading, never re-sent
    assert power(fake) == "deallocated"


@pytest.mark.parametrize("header", ["retry-after-ms", "x-ms-retry-after-ms"])
def test_429_with_a_millisecond_retry_header_is_honoured(
    env: tuple[FakeArm, ArmConfig], tmp_path: Path, header: str
) -> None:
    """ARM's other throttling headers (reliability C4): the wait they advise, in milliseconds, is kept."""
    fake, arm = env
    fake.fail("GET", r"/networkInterfaces/cvm-1-nic0$", 429, headers={header: "1200"})
    _quarantine_cvm1(arm, tmp_path)
    assert _throttled_gap(fake) >= 1.15


def _quarantine_cvm1(arm: ArmConfig, tmp_path: Path) -> None:
    """Quarantine cvm-1 (no snapshot) through the provider; it must end quarantined."""

    async def main() -> None:
        provider = compute(arm, tmp_path, snapshot=False)
        try:
            node = await provider.quarantine("vigil", "cvm-1", reason="test", evidence={})
            assert node.state == NodeState.QUARANTINED
        finally:
            await provider.close()

    asyncio.run(main())


def _throttled_gap(fake: FakeArm) -> float:
    """Seconds between the throttled GET of cvm-1's NIC (429) and its successful retry."""
    throttled, retried = fake.calls("GET", r"/networkInterfaces/cvm-1-nic0$")[:2]
    assert (throttled.status, retried.status) == (429, 200)
    return retried.time - throttled.time


def test_crash_during_deallocate_resumes_polling_without_a_second_post(
    env: tuple[FakeArm, ArmConfig], tmp_path: Path
) -> None:
    fake, arm = env
    fake.hold = True

    async def crash() -> None:
        provider = compute(arm, tmp_path)
        store = LroStore(tmp_path / "lro.db")
        task = asyncio.create_task(provider.quarantine("vigil", "cvm-1", reason="test", evidence={}))
        try:
            for _ in range(400):
                if store.pending() and fake.calls("GET", "/operations/"):
                    break
                await asyncio.sleep(0.02)
            assert store.pending() == [f"{arm.subscription_id}/{RG}/cvm-1/deallocate"]
        finally:
            task.cancel()  # the daemon dies while it waits for the deallocate
            with pytest.raises(asyncio.CancelledError):
                await task
            store.close()
            await provider.close()

    asyncio.run(crash())
    assert power(fake) == "deallocating"
    node_mid = vm(fake)["tags"]
    assert "vigil-q-id" in node_mid and "vigil-q-done" not in node_mid
    crashed_at = len(fake.ledger)
    fake.release_hold()

    async def resume() -> None:
        provider = compute(arm, tmp_path)
        try:
            before = await provider.get_node("vigil", "cvm-1")
            assert before.state == NodeState.RUNNING  # half done: shows as found, so it is resumed
            node = await provider.quarantine("vigil", "cvm-1", reason="test", evidence={})
            assert node.state == NodeState.QUARANTINED
        finally:
            await provider.close()

    asyncio.run(resume())
    assert len(fake.calls("POST", r"/deallocate$")) == 1
    assert any("/operations/" in c.path for c in fake.ledger[crashed_at:])  # polled from the stored token
    assert power(fake) == "deallocated"
    store = LroStore(tmp_path / "lro.db")
    assert store.pending() == []
    store.close()


def test_power_off_mode_node_ids_and_refusals(env: tuple[FakeArm, ArmConfig], tmp_path: Path) -> None:
    fake, arm = env
    fake.add_vm(RG, "cvm-2", nics={"cvm-2-nic0": None}, power="deallocated")
    full_id = fake.rid(RG, "Microsoft.Compute", "virtualMachines", "cvm-1")

    async def main() -> None:
        provider = compute(arm, tmp_path, stop_mode="power_off", snapshot=False)
        try:
            assert [n.id for n in await provider.list_nodes("vigil")] == ["cvm-1", "cvm-2"]
            assert (await provider.get_node("vigil", full_id.lower())).id == "cvm-1"
            with pytest.raises(ForbiddenError):
                await provider.quarantine("intern", "cvm-1", reason="x", evidence={})
            with pytest.raises(ConflictError, match="stopped"):
                await provider.quarantine("vigil", "cvm-2", reason="x", evidence={})
            with pytest.raises(NotFoundError):
                await provider.get_node("vigil", "nope")
            with pytest.raises(ConflictError, match="not quarantined"):
                await provider.release("vigil", "cvm-1", reason="x")
            await provider.quarantine("vigil", full_id, reason="x", evidence={})
        finally:
            await provider.close()

    asyncio.run(main())
    assert power(fake) == "stopped"
    assert fake.calls("POST", r"/powerOff$")[0].query.get("skipShutdown") == "true"
    assert fake.calls("POST", r"/deallocate$") == []


def test_register_and_node_reports_live_in_tags(env: tuple[FakeArm, ArmConfig], tmp_path: Path) -> None:
    fake, arm = env

    async def main() -> None:
        provider = compute(arm, tmp_path)
        try:
            node = await provider.register(
                "vigil", "cvm-1", node_principal="node-1", measurement="ab" * 48, labels={"pool": "a"}
            )
            assert (node.state, node.principal, node.labels) == (
                NodeState.PENDING,
                "node-1",
                {"team": "ml", "pool": "a"},
            )
            node = await provider.set_state("vigil", "cvm-1", NodeState.ATTESTED)
            node = await provider.set_state("node-1", "cvm-1", NodeState.RUNNING)
            assert node.state == NodeState.RUNNING
            with pytest.raises(ForbiddenError):
                await provider.set_state("node-1", "cvm-1", NodeState.ATTESTED)
        finally:
            await provider.close()

    asyncio.run(main())
    assert vm(fake)["tags"]["vigil-state"] == "running"
