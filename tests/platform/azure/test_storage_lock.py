"""Storage-account lockdown against the stateful fake ARM: order (lock last, removed first), exact restore,
no blind re-send of ``regenerateKey``, self-protection, and a dry run that only reads."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.platform.azure.fake_arm import FakeArm, mutations, serving
from vigil.platform.azure.arm import ArmConfig
from vigil.platform.azure.storage_lock import AzureStorageLock
from vigil.platform.errors import ForbiddenError, LockedError

RG = "rg-data"
ACLS = {"defaultAction": "Allow", "bypass": "AzureServices", "ipRules": [{"value": "203.0.113.0/24", "action": "Allow"}],
        "virtualNetworkRules": []}  # fmt: skip


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[FakeArm, ArmConfig, str]]:
    with serving(tmp_path / "tls") as (fake, arm):
        rid = fake.add_account(RG, "trainingdata", networkAcls=dict(ACLS))
        fake.add_account(RG, "vigilcheckpoints")
        yield fake, arm, rid


def props(fake: FakeArm, rid: str) -> dict[str, Any]:
    return dict(fake.get(rid)["properties"])


def test_lock_then_rollback_restores_every_recorded_property(env: tuple[FakeArm, ArmConfig, str]) -> None:
    fake, arm, rid = env
    original = props(fake, rid)
    keys_before = dict(fake.keys[rid.lower()])

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        locker = AzureStorageLock(arm, protected_accounts=["vigilcheckpoints"])
        try:
            before = await locker.check(rid)
            assert locker.plan_steps(before) == [
                "restrict_access", "regenerate_keys", "revoke_user_delegation_keys", "apply_lock"
            ]  # fmt: skip
            start = len(fake.ledger)
            done = await locker.lock(rid, before=before)
            assert mutations(fake, start) == [
                ("PATCH", "storageAccounts/trainingdata"),
                ("POST", "trainingdata/regenerateKey"),
                ("POST", "trainingdata/regenerateKey"),
                ("POST", "trainingdata/revokeUserDelegationKeys"),
                ("PUT", "locks/vigil-lockdown"),  # last: it blocks every later POST
            ]
            assert locker.plan_steps(await locker.check(rid)) == []  # locked down: a re-run is a no-op
            locked = props(fake, rid)
            assert (locked["allowBlobPublicAccess"], locked["allowSharedKeyAccess"]) == (False, False)
            assert locked["networkAcls"]["defaultAction"] == "Deny" and locked["networkAcls"]["ipRules"] == []
            assert [lk["properties"]["level"] for lk in fake.locks_on(rid)] == ["ReadOnly"]
            start = len(fake.ledger)
            undone = await locker.rollback(rid, done["before"])
            assert mutations(fake, start) == [
                ("DELETE", "locks/vigil-lockdown"),  # first: nothing else can change while it is on
                ("PATCH", "storageAccounts/trainingdata"),
            ]
            return before, undone
        finally:
            await locker.close()

    before, undone = asyncio.run(main())
    restored = props(fake, rid)
    for field in ("allowBlobPublicAccess", "allowSharedKeyAccess", "networkAcls", "publicNetworkAccess"):
        assert restored[field] == original[field], field
    assert fake.locks_on(rid) == []
    assert all(fake.keys[rid.lower()][k] != keys_before[k] for k in ("key1", "key2"))  # SAS stay revoked
    assert undone["changed"] and "account keys (regenerated)" in undone["not_restorable"]
    assert before["network_acls"]["ipRules"] == ACLS["ipRules"]


def test_the_read_only_lock_blocks_later_posts(env: tuple[FakeArm, ArmConfig, str]) -> None:
    fake, arm, rid = env

    async def main() -> None:
        locker = AzureStorageLock(arm)
        try:
            before = await locker.check(rid)
            await locker.apply_step(rid, "apply_lock", before)  # wrong order on purpose
            with pytest.raises(LockedError, match="ScopeLocked"):
                await locker.apply_step(rid, "regenerate_keys", before)
        finally:
            await locker.close()

    asyncio.run(main())
    assert [c.status for c in fake.calls("POST", "/regenerateKey$")] == [409]


def test_a_503_after_regenerate_key_is_reconciled_not_resent(env: tuple[FakeArm, ArmConfig, str]) -> None:
    fake, arm, rid = env
    fake.fail("POST", "/regenerateKey$", 503, after_apply=True)

    async def main() -> dict[str, Any]:
        locker = AzureStorageLock(arm)
        try:
            before = await locker.check(rid)
            done = await locker.lock(rid, before=before)
            # a resumed step finds both keys regenerated already and sends nothing
            start = len(fake.ledger)
            again = await locker.apply_step(rid, "regenerate_keys", before)
            assert again["keys"] == [] and mutations(fake, start) == []
            return done
        finally:
            await locker.close()

    done = asyncio.run(main())
    assert [c.status for c in fake.calls("POST", "/regenerateKey$")] == [503, 200]  # key1 once, key2 once
    assert [c.body["keyName"] for c in fake.calls("POST", "/regenerateKey$")] == ["key1", "key2"]
    assert done["steps"]["regenerate_keys"]["keys"] == ["key1", "key2"]


def test_vigils_own_account_is_refused_before_any_request(env: tuple[FakeArm, ArmConfig, str]) -> None:
    fake, arm, _ = env

    async def main() -> None:
        locker = AzureStorageLock(arm, protected_accounts=["VigilCheckpoints"])
        try:
            with pytest.raises(ForbiddenError, match="protected"):
                await locker.lock(f"{RG}/vigilcheckpoints")
            with pytest.raises(ForbiddenError, match="protected"):
                await locker.check(fake.rid(RG, "Microsoft.Storage", "storageAccounts", "vigilcheckpoints"))
        finally:
            await locker.close()

    asyncio.run(main())
    assert fake.ledger == []


def test_dry_run_issues_only_gets(env: tuple[FakeArm, ArmConfig, str]) -> None:
    fake, arm, _ = env

    async def main() -> None:
        locker = AzureStorageLock(arm)
        try:
            assert locker.plan_steps(await locker.check(f"{RG}/trainingdata"))
        finally:
            await locker.close()

    asyncio.run(main())
    assert fake.ledger and {c.method for c in fake.ledger} == {"GET"}
