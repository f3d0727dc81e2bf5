"""Client construction, the safe retry policy, error translation and the LRO token store."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.storage.aio import StorageManagementClient
from azure.mgmt.storage.models import StorageAccountRegenerateKeyParameters

from tests.platform.azure.fake_arm import SUB, FakeArm, StaticCredential, serving
from vigil.platform.azure.arm import ArmConfig, arm_errors, parse_id
from vigil.platform.azure.compute import RBAC_ACTIONS as COMPUTE_ACTIONS
from vigil.platform.azure.lro import LroStore
from vigil.platform.azure.storage_lock import RBAC_ACTIONS as STORAGE_ACTIONS
from vigil.platform.errors import InvalidError, LockedError, NotFoundError, UnavailableError

RG = "rg-data"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[FakeArm, ArmConfig, str]]:
    with serving(tmp_path / "tls") as (fake, arm):
        yield fake, arm, fake.add_account(RG, "acct")


def regenerate(client: StorageManagementClient) -> object:
    return client.storage_accounts.regenerate_key(
        RG, "acct", StorageAccountRegenerateKeyParameters(key_name="key1")
    )


def test_a_post_is_not_resent_after_a_503_but_azure_core_would(env: tuple[FakeArm, ArmConfig, str]) -> None:
    fake, arm, _ = env

    async def main() -> None:
        fake.fail("POST", "/regenerateKey$", 503, after_apply=True)
        client = arm.client(StorageManagementClient)
        try:
            with pytest.raises(HttpResponseError):
                await regenerate(client)  # type: ignore[misc]
        finally:
            await client.close()
        # the same request through azure-core's default policy: re-sent, so the key is regenerated twice
        fake.fail("POST", "/regenerateKey$", 503, after_apply=True)
        default = StorageManagementClient(
            arm.credential, SUB, base_url=arm.endpoint, credential_scopes=arm.scopes,
            connection_verify=arm.connection_verify, retry_backoff_factor=0.01,
        )  # fmt: skip
        try:
            await regenerate(default)  # type: ignore[misc]
        finally:
            await default.close()

    asyncio.run(main())
    assert [c.status for c in fake.calls("POST", "/regenerateKey$")] == [503, 503, 200]


def test_idempotent_methods_are_retried_and_a_throttled_post_too(env: tuple[FakeArm, ArmConfig, str]) -> None:
    fake, arm, _ = env
    fake.fail("GET", "/storageAccounts/acct$", 503)
    fake.fail("POST", "/regenerateKey$", 429, retry_after="0")

    async def main() -> None:
        client = arm.client(StorageManagementClient)
        try:
            await client.storage_accounts.get_properties(RG, "acct")
            await regenerate(client)  # type: ignore[misc]
        finally:
            await client.close()

    asyncio.run(main())
    assert [c.status for c in fake.calls("GET", "/storageAccounts/acct$")] == [503, 200]
    assert [c.status for c in fake.calls("POST", "/regenerateKey$")] == [429, 200]


def test_errors_are_translated_and_name_the_operation(env: tuple[FakeArm, ArmConfig, str]) -> None:
    fake, arm, rid = env
    fake.resources[f"{rid}/providers/microsoft.authorization/locks/l".lower()] = {
        "id": f"{rid}/providers/Microsoft.Authorization/locks/l", "name": "l", "properties": {"level": "ReadOnly"}
    }  # fmt: skip

    async def main() -> None:
        client = arm.client(StorageManagementClient)
        try:
            with (
                pytest.raises(NotFoundError, match="read account nope: not found"),
                arm_errors("read account nope"),
            ):
                await client.storage_accounts.get_properties(RG, "nope")
            with pytest.raises(LockedError, match="ScopeLocked"), arm_errors("regenerate key1"):
                await regenerate(client)  # type: ignore[misc]
            fake.fail("GET", "/storageAccounts/acct$", 500, times=10)
            with pytest.raises(UnavailableError, match="ARM answered 500"), arm_errors("read account acct"):
                await client.storage_accounts.get_properties(RG, "acct", retry_total=1)
        finally:
            await client.close()

    asyncio.run(main())


def test_config_validation_and_secrets_kept_out_of_repr() -> None:
    arm = ArmConfig(SUB, StaticCredential())
    assert "StaticCredential" not in repr(arm) and arm.scopes == ["https://management.azure.com/.default"]
    with pytest.raises(InvalidError, match="https"):
        ArmConfig(SUB, StaticCredential(), endpoint="http://127.0.0.1:1")
    with pytest.raises(InvalidError, match="subscription"):
        ArmConfig("../x", StaticCredential())
    assert parse_id(f"/subscriptions/{SUB}/resourceGroups/g/providers/Microsoft.Compute/virtualMachines/v") == (
        SUB, "g", "Microsoft.Compute", "virtualMachines", "v"
    )  # fmt: skip
    with pytest.raises(InvalidError):
        parse_id("/subscriptions/x/resourceGroups/g")


def test_lro_tokens_outlive_the_store(tmp_path: Path) -> None:
    store = LroStore(tmp_path / "lro.db")
    store.put("s/g/vm/deallocate", "token-1")
    store.close()
    again = LroStore(tmp_path / "lro.db")
    assert again.pending() == ["s/g/vm/deallocate"] and again.get("s/g/vm/deallocate") == "token-1"
    again.delete("s/g/vm/deallocate")
    assert again.get("s/g/vm/deallocate") is None
    again.close()


def test_rbac_actions_are_declared() -> None:
    for actions in (COMPUTE_ACTIONS, STORAGE_ACTIONS):
        assert actions and all(a.startswith("Microsoft.") and a.count("/") >= 2 for a in actions)
    assert "Microsoft.Compute/virtualMachines/deallocate/action" in COMPUTE_ACTIONS
    assert "Microsoft.Network/networkSecurityGroups/join/action" in COMPUTE_ACTIONS
    assert "Microsoft.Authorization/locks/write" in STORAGE_ACTIONS
