"""Vault lockdown over the real ``azure-mgmt-keyvault`` async client, against the fake's ARM vault routes.

The acceptance here: lock the network, remove a principal's access policy, then restore from the snapshot
taken before, and the vault document (network ACLs, public network access, access policies) is what it was.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.platform.azure.fake_keyvault import TENANT, FakeKeyVault, StaticCredential
from vigil.platform.azure.keyvault_lockdown import AzureVaultLockdown, VaultSnapshot
from vigil.platform.azure.keyvault_retry import RetrySettings
from vigil.platform.errors import ConflictError, NotFoundError

T = TypeVar("T")
SUB, GROUP, NAME = "3f9a2c71-8e4d-4b1a-b6c5-0d2e7f9a4c13", "rg-cctrain-weu", "kv-cctrain-weu"
SUSPECT = "0b7e4c2a-9d1f-4e3b-8a6c-5f2d1e0c9b8a"
KEEPER = "1c8f5d3b-0e2a-4f4c-9b7d-6a3e2f1d0c9b"
POLICIES = [
    {"tenantId": TENANT, "objectId": SUSPECT, "permissions": {"keys": ["get", "unwrapKey", "release"]}},
    {"tenantId": TENANT, "objectId": KEEPER, "permissions": {"keys": ["get", "wrapKey"], "secrets": ["get"]}},
]
ACLS = {
    "bypass": "AzureServices",
    "defaultAction": "Allow",
    "ipRules": [{"value": "198.51.100.0/24"}],
    "virtualNetworkRules": [],
}


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeKeyVault]:
    with FakeKeyVault(tmp_path) as server:
        yield server


def with_lockdown(
    fake: FakeKeyVault, body: Callable[[AzureVaultLockdown], Awaitable[T]], name: str = NAME
) -> T:
    async def main() -> T:
        lockdown = AzureVaultLockdown.connect(
            StaticCredential(),
            SUB,
            GROUP,
            name,
            endpoint=fake.url,
            connection_verify=str(fake.ca_path),
            retry=RetrySettings(attempts=3, backoff=0.01, max_retry_after=2.0),
        )
        try:
            return await body(lockdown)
        finally:
            await lockdown.close()

    return asyncio.run(main())


def test_lock_remove_and_restore_round_trip(fake: FakeKeyVault) -> None:
    vault_id = fake.add_vault(
        SUB, GROUP, NAME, accessPolicies=copy.deepcopy(POLICIES), networkAcls=copy.deepcopy(ACLS)
    )
    original = copy.deepcopy(fake.vault(vault_id)["properties"])

    async def lock(lockdown: AzureVaultLockdown) -> dict[str, object]:
        before = await lockdown.snapshot()
        assert await lockdown.lock_network() is True
        removed = await lockdown.remove_access_policy(SUSPECT)
        assert removed is not None and removed["objectId"] == SUSPECT
        return before.to_json()  # what an action stores in plan.before

    record = with_lockdown(fake, lock)
    props = fake.vault(vault_id)["properties"]
    assert props["networkAcls"]["defaultAction"] == "Deny"
    assert props["networkAcls"]["ipRules"] == []
    assert props["publicNetworkAccess"] == "Disabled"
    assert [p["objectId"] for p in props["accessPolicies"]] == [KEEPER]

    snapshot = VaultSnapshot.from_json(record)
    assert snapshot.vault_id.lower() == vault_id.lower() and not snapshot.locked
    with_lockdown(fake, lambda lockdown: lockdown.restore(snapshot, object_ids=[SUSPECT]))
    restored = fake.vault(vault_id)["properties"]
    assert restored["networkAcls"] == original["networkAcls"]
    assert restored["publicNetworkAccess"] == original["publicNetworkAccess"]
    by_id = {p["objectId"]: p for p in restored["accessPolicies"]}
    assert by_id == {p["objectId"]: p for p in original["accessPolicies"]}
    kinds = [e.path.rsplit("/", 1)[-1] for e in fake.requests("vault_access_policy")]
    assert kinds == ["remove", "add"]


def test_steps_are_idempotent_and_send_nothing_when_done(fake: FakeKeyVault) -> None:
    fake.add_vault(SUB, GROUP, NAME, accessPolicies=copy.deepcopy(POLICIES))

    async def body(lockdown: AzureVaultLockdown) -> None:
        assert await lockdown.lock_network() is True
        assert await lockdown.lock_network() is False
        assert await lockdown.remove_access_policy(SUSPECT) is not None
        assert await lockdown.remove_access_policy(SUSPECT) is None
        assert (await lockdown.snapshot()).locked

    with_lockdown(fake, body)
    assert len(fake.requests("vault_patch")) == 1
    assert len(fake.requests("vault_access_policy")) == 1


def test_throttled_patch_is_retried_after_retry_after(fake: FakeKeyVault) -> None:
    vault_id = fake.add_vault(SUB, GROUP, NAME)
    fake.inject("vault_patch", 429, retry_after="1")
    with_lockdown(fake, lambda lockdown: lockdown.lock_network())
    first, second = fake.requests("vault_patch")
    assert (first.status, second.status) == (429, 200)
    assert second.time - first.time >= 0.95
    assert fake.vault(vault_id)["properties"]["publicNetworkAccess"] == "Disabled"


def test_rbac_vault_and_missing_vault_are_refused(fake: FakeKeyVault) -> None:
    fake.add_vault(SUB, GROUP, NAME, enableRbacAuthorization=True, accessPolicies=copy.deepcopy(POLICIES))
    with pytest.raises(ConflictError, match="RBAC"):
        with_lockdown(fake, lambda lockdown: lockdown.remove_access_policy(SUSPECT))
    with pytest.raises(NotFoundError, match="HTTP 404"):
        with_lockdown(fake, lambda lockdown: lockdown.snapshot(), name="kv-missing")
    assert {e.method for e in fake.requests()} == {"GET"}
