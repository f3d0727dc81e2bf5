from __future__ import annotations

import pytest

from vigil.events.arm import parse_resource_id

SUB = "3f9a2c71-8e4d-4b1a-b6c5-0d2e7f9a4c13"


@pytest.mark.parametrize(
    ("rid", "rtype", "name", "group"),
    [
        (
            f"/SUBSCRIPTIONS/{SUB.upper()}/RESOURCEGROUPS/RG-CCTRAIN-WEU/PROVIDERS/MICROSOFT.KEYVAULT/VAULTS/KV-CCTRAIN-WEU",
            "microsoft.keyvault/vaults",
            "kv-cctrain-weu",
            "rg-cctrain-weu",
        ),
        (
            f"/subscriptions/{SUB}/resourceGroups/rg-cctrain-weu/providers/Microsoft.Storage/storageAccounts/stcctrainckpt/blobServices/default",
            "microsoft.storage/storageaccounts/blobservices",
            "stcctrainckpt/default",
            "rg-cctrain-weu",
        ),
        (
            f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/vm1/providers/Microsoft.Authorization/locks/lk",
            "microsoft.authorization/locks",
            "lk",
            "rg",
        ),
        (f"/subscriptions/{SUB}/resourceGroups/rg-x", "microsoft.resources/resourcegroups", "rg-x", "rg-x"),
        (f"/subscriptions/{SUB}", "microsoft.resources/subscriptions", SUB, None),
        (
            f"/subscriptions/{SUB}/resourcegroups/rg/providers/Microsoft.Network/",
            "microsoft.network",
            None,
            "rg",
        ),
    ],
)
def test_parse_resource_id(rid: str, rtype: str, name: str | None, group: str | None) -> None:
    res = parse_resource_id(rid)
    assert res.id == rid.lower().rstrip("/")
    assert res.type == rtype
    assert res.name == name
    assert res.subscription == SUB
    assert res.group == group


def test_upper_and_lower_forms_give_the_same_resource() -> None:
    low = f"/subscriptions/{SUB}/resourcegroups/rg/providers/microsoft.compute/virtualmachines/vm"
    assert parse_resource_id(low.upper()) == parse_resource_id(low)


def test_non_arm_values_keep_only_the_lowered_id() -> None:
    res = parse_resource_id("KV-CCTRAIN-WEU")
    assert res.id == "kv-cctrain-weu" and res.type is None and res.subscription is None


def test_empty_gives_no_resource() -> None:
    assert parse_resource_id("").id is None
    assert parse_resource_id(None).id is None
