"""lockdown_vault through the real AzureVaultLockdown and ``azure-mgmt-keyvault`` client, against the fake
ARM vault routes of the loopback Key Vault server.

What the fake's ledger proves: a dry run (check + plan) only reads, each step mutates once and a re-run
sends nothing, a rollback puts back the network ACLs, public access and the removed principal's access
policy (and a second one sends nothing), and a protected vault, a foreign vault or a missing provider fails
before any write.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
from pydantic import ValidationError

from tests.platform.azure.fake_keyvault import TENANT, FakeKeyVault, StaticCredential
from vigil.platform.azure import keyvault_lockdown
from vigil.platform.azure.keyvault_lockdown import AzureVaultLockdown
from vigil.platform.azure.keyvault_retry import RetrySettings
from vigil.remediators.base import Context, Plan, Protected, RemediationError, VaultLockProvider, remediators
from vigil.remediators.lockdown_vault import (
    OPEN_NETWORK_ACLS,
    RBAC_ACTIONS,
    STEP_DESCRIPTIONS,
    LockdownVault,
)

from .conftest import Env, plan_for, run

T = TypeVar("T")
R = LockdownVault()
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
PARAMS = {"object_id": SUSPECT.upper(), "ip_rules": ["203.0.113.7"]}  # a rule may write either case


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[FakeKeyVault]:
    with FakeKeyVault(tmp_path) as server:
        yield server


@pytest.fixture
def vault_id(fake: FakeKeyVault) -> str:
    return fake.add_vault(
        SUB, GROUP, NAME, accessPolicies=copy.deepcopy(POLICIES), networkAcls=copy.deepcopy(ACLS)
    )


def provider(lockdown: AzureVaultLockdown) -> VaultLockProvider:
    """The real provider, typed as the protocol (mypy checks that it matches)."""
    return lockdown


def with_ctx(
    env: Env,
    fake: FakeKeyVault,
    body: Callable[[Context], Awaitable[T]],
    *,
    name: str = NAME,
    protected: frozenset[str] = frozenset(),
) -> T:
    """Run ``body`` with a context holding a lockdown of vault ``name`` on the fake."""

    async def scenario() -> T:
        lockdown = AzureVaultLockdown.connect(
            StaticCredential(),
            SUB,
            GROUP,
            name,
            endpoint=fake.url,
            connection_verify=str(fake.ca_path),
            retry=RetrySettings(attempts=2, backoff=0.01, max_retry_after=1.0),
        )
        try:
            ctx = dataclasses.replace(
                env.ctx, vault_lock=provider(lockdown), protected=Protected(vaults=protected)
            )
            return await body(ctx)
        finally:
            await lockdown.close()

    return run(scenario())


def writes(fake: FakeKeyVault, start: int = 0) -> list[tuple[str, str]]:
    """The mutating requests since ledger position ``start``: (method, last path segment)."""
    return [(e.method, e.path.rsplit("/", 1)[-1]) for e in fake.requests()[start:] if e.method != "GET"]


def test_steps_permissions_and_defaults_are_the_providers() -> None:
    assert list(STEP_DESCRIPTIONS) == ["lock_network", "remove_access_policy"]
    provider_actions = {a for actions in keyvault_lockdown.RBAC_ACTIONS.values() for a in actions}
    assert set(RBAC_ACTIONS) == provider_actions and len(RBAC_ACTIONS) == len(provider_actions)
    assert R.permissions == tuple(f"azure:{a}" for a in RBAC_ACTIONS)
    assert OPEN_NETWORK_ACLS == keyvault_lockdown.DEFAULT_NETWORK_ACLS


def test_dry_run_plans_both_steps_on_an_open_vault_and_only_reads(
    env: Env, fake: FakeKeyVault, vault_id: str
) -> None:
    async def body(ctx: Context) -> tuple[Plan, str | None, list[str]]:
        plan = await plan_for(R, ctx, vault_id.lower(), **PARAMS)  # events carry resource.id lower-cased
        return plan, await R.verify(ctx, plan), await R.fleet(ctx)

    plan, verdict, fleet = with_ctx(env, fake, body)
    assert [s.name for s in plan.steps] == ["lock_network", "remove_access_policy"] and not plan.noop
    assert plan.steps[0].data == {"bypass": "AzureServices", "ip_rules": ["203.0.113.7/32"]}
    assert plan.steps[1].data == {"object_id": SUSPECT}
    assert plan.params == {"object_id": SUSPECT, "bypass": "AzureServices", "ip_rules": ["203.0.113.7/32"]}
    assert plan.before["vault_id"] == vault_id and plan.before["network_acls"] == ACLS
    assert plan.before["public_network_access"] == "Enabled" and plan.before["access_policies"] == POLICIES
    assert orjson.loads(orjson.dumps(plan.to_json())) == plan.to_json()
    assert verdict is not None and "not locked down" in verdict and "lock_network" in verdict
    assert fleet == [vault_id]
    assert fake.requests() and {e.method for e in fake.requests()} == {"GET"}


def test_apply_each_step_twice_then_verify_and_a_fresh_plan_is_a_noop(
    env: Env, fake: FakeKeyVault, vault_id: str
) -> None:
    async def body(ctx: Context) -> tuple[list[dict[str, Any]], Plan]:
        plan = await plan_for(R, ctx, f"{GROUP}/{NAME}", **PARAMS)
        results = []
        for index, step in enumerate(plan.steps):
            results.append(await R.apply_step(ctx, plan, index))
            # a crash before the progress was stored: the executor runs the step again
            state, start = copy.deepcopy(fake.vault(vault_id)), len(fake.requests())
            again = await R.apply_step(ctx, plan, index)
            assert fake.vault(vault_id) == state, f"re-running {step.name} changed the vault"
            assert writes(fake, start) == [] and again["changed"] is False, step.name
        assert await R.verify(ctx, plan) is None
        # locked, but not the way these ask: the network step is planned again (as the provider would send)
        for other in ({"bypass": "None", "ip_rules": ["203.0.113.7"]}, {"object_id": SUSPECT}):
            assert [s.name for s in (await plan_for(R, ctx, vault_id, **other)).steps] == ["lock_network"]
        return results, await plan_for(R, ctx, vault_id, **PARAMS)

    results, replan = with_ctx(env, fake, body)
    assert [r["changed"] for r in results] == [True, True]
    assert results[1]["removed"]["objectId"] == SUSPECT
    assert writes(fake) == [("PATCH", NAME), ("PUT", "remove")]
    assert replan.noop and replan.steps == ()
    props = fake.vault(vault_id)["properties"]
    assert props["networkAcls"]["defaultAction"] == "Deny" and props["publicNetworkAccess"] == "Disabled"
    assert props["networkAcls"]["ipRules"] == [{"value": "203.0.113.7/32"}]
    assert [p["objectId"] for p in props["accessPolicies"]] == [KEEPER]


def test_rollback_restores_network_public_access_and_the_access_policy(
    env: Env, fake: FakeKeyVault, vault_id: str
) -> None:
    original = copy.deepcopy(fake.vault(vault_id)["properties"])

    async def body(ctx: Context) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        plan = await plan_for(R, ctx, vault_id, **PARAMS)
        for index in range(len(plan.steps)):
            await R.apply_step(ctx, plan, index)
        locked_plan = await plan_for(R, ctx, NAME, **PARAMS)
        start = len(fake.requests())
        undone = await R.rollback(ctx, plan)
        assert writes(fake, start) == [("PATCH", NAME), ("PUT", "add")]
        start = len(fake.requests())
        twice = await R.rollback(ctx, plan)
        noop = await R.rollback(ctx, locked_plan)  # a no-op plan has nothing to undo
        assert writes(fake, start) == []
        return undone, twice, noop

    undone, twice, noop = with_ctx(env, fake, body)
    restored = fake.vault(vault_id)["properties"]
    assert restored["networkAcls"] == original["networkAcls"] == ACLS
    assert restored["publicNetworkAccess"] == original["publicNetworkAccess"] == "Enabled"
    by_id = {p["objectId"]: p for p in restored["accessPolicies"]}
    assert by_id == {p["objectId"]: p for p in original["accessPolicies"]}
    assert undone == {"changed": True, "restored": {"network": True, "access_policies": [SUSPECT]}}
    assert twice == {"changed": False, "restored": {"network": False, "access_policies": []}}
    assert noop == twice


def test_network_only_and_a_vault_without_acls_round_trip(env: Env, fake: FakeKeyVault) -> None:
    vault_id = fake.add_vault(SUB, GROUP, NAME, networkAcls=None, accessPolicies=copy.deepcopy(POLICIES))

    async def body(ctx: Context) -> tuple[Plan, dict[str, Any]]:
        plan = await plan_for(R, ctx, NAME, bypass="None")
        await R.apply_step(ctx, plan, 0)
        assert await R.verify(ctx, plan) is None
        locked = fake.vault(vault_id)["properties"]["networkAcls"]
        assert (locked["bypass"], locked["defaultAction"], locked["ipRules"]) == ("None", "Deny", [])
        undone = await R.rollback(ctx, plan)
        start = len(fake.requests())
        assert (await R.rollback(ctx, plan))["changed"] is False  # the open default counts as restored
        assert writes(fake, start) == []
        return plan, undone

    plan, undone = with_ctx(env, fake, body)
    assert [s.name for s in plan.steps] == ["lock_network"] and plan.before["network_acls"] is None
    assert undone["restored"] == {"network": True, "access_policies": []}
    props = fake.vault(vault_id)["properties"]
    assert props["networkAcls"] == OPEN_NETWORK_ACLS and props["publicNetworkAccess"] == "Enabled"
    assert len(props["accessPolicies"]) == 2


def test_a_protected_vault_is_refused_before_any_request(env: Env, fake: FakeKeyVault, vault_id: str) -> None:
    async def body(ctx: Context) -> None:
        plan = Plan(R.name, vault_id, {}, (), {})
        unguarded = dataclasses.replace(ctx, protected=Protected())
        stored = await plan_for(R, unguarded, vault_id)  # planned before the vault was protected
        start = len(fake.requests())
        for target in (vault_id, f"{GROUP}/{NAME}", NAME.upper(), f"{vault_id}/keys/model-key"):
            with pytest.raises(RemediationError, match=r"^protected: lockdown_vault refuses"):
                await plan_for(R, ctx, target)
        with pytest.raises(RemediationError, match=r"^protected: "):
            await R.apply_step(ctx, stored, 0)
        with pytest.raises(RemediationError, match=r"^protected: "):
            await R.rollback(ctx, dataclasses.replace(plan, noop=False))
        assert len(fake.requests()) == start

    with_ctx(env, fake, body, protected=frozenset({NAME.upper()}))
    assert fake.vault(vault_id)["properties"]["networkAcls"] == ACLS


def test_missing_provider_foreign_vault_and_bad_requests_are_clear_errors(
    env: Env, fake: FakeKeyVault, vault_id: str
) -> None:
    other = fake.add_vault(SUB, GROUP, "kv-other")
    rbac = fake.add_vault(
        SUB, GROUP, "kv-rbac", enableRbacAuthorization=True, accessPolicies=copy.deepcopy(POLICIES)
    )

    async def missing() -> None:
        plan = Plan(R.name, vault_id, {}, (), {})
        step = Plan.from_json({**plan.to_json(), "steps": [{"name": "lock_network", "description": ""}]})
        for call in (
            R.check(env.ctx, vault_id, R.params({})),
            R.verify(env.ctx, plan),
            R.rollback(env.ctx, dataclasses.replace(plan, noop=False)),
            R.apply_step(env.ctx, step, 0),
            R.fleet(env.ctx),
        ):
            with pytest.raises(RemediationError, match="lockdown_vault: no Azure vault lockdown provider"):
                await call

    run(missing())
    assert fake.requests() == []

    async def body(ctx: Context) -> None:
        with pytest.raises(RemediationError, match="is not the vault the lockdown acts on"):
            await plan_for(R, ctx, other)
        with pytest.raises(RemediationError, match="is not the vault the lockdown acts on"):
            await plan_for(R, ctx, f"rg-elsewhere/{NAME}")
        with pytest.raises(RemediationError, match="must be a vault name, <group>/<name> or an ARM id"):
            await plan_for(R, ctx, "a/b/c")
        with pytest.raises(RemediationError, match="the plan has no step 0"):
            await R.apply_step(ctx, Plan(R.name, vault_id, {}, (), {}), 0)

    with_ctx(env, fake, body)

    async def ghost(ctx: Context) -> None:
        with pytest.raises(RemediationError, match="lockdown_vault: no vault 'kv-ghost'"):
            await plan_for(R, ctx, "kv-ghost")

    with_ctx(env, fake, ghost, name="kv-ghost")

    async def rbac_vault(ctx: Context) -> None:
        with pytest.raises(RemediationError, match=r"uses Azure RBAC.*remove the role assignments"):
            await plan_for(R, ctx, rbac, object_id=SUSPECT)
        plan = await plan_for(R, ctx, rbac)  # the network alone is fine
        assert [s.name for s in plan.steps] == ["lock_network"]

    with_ctx(env, fake, rbac_vault, name="kv-rbac")
    assert {e.method for e in fake.requests()} == {"GET"}


def test_parameters_are_validated_and_normalised() -> None:
    p = R.params({"object_id": SUSPECT.upper(), "ip_rules": ["10.1.0.0/16", " 192.0.2.1 "]})
    assert p.model_dump() == {
        "object_id": SUSPECT,
        "bypass": "AzureServices",
        "ip_rules": ("10.1.0.0/16", "192.0.2.1/32"),
    }
    for bad in (
        {"object_id": "not-a-guid"},
        {"ip_rules": ["10.1.0.5/16"]},  # host bits set: say so rather than widen it silently
        {"ip_rules": ["2001:db8::/32"]},  # Key Vault's firewall takes IPv4 only
        {"bypass": "Everything"},
        {"principal": SUSPECT},  # a typo is an error at load time
    ):
        with pytest.raises(ValidationError):
            R.params(bad)


def test_protected_covers_vaults_by_name_and_keeps_the_other_kinds() -> None:
    p = Protected(keys=frozenset({"audit"}), storage_accounts=frozenset({"vigilckpt"}),
                  vaults=frozenset({"KV-Vigil", f"{GROUP}/kv-two"}))  # fmt: skip
    rid = f"/subscriptions/{SUB}/resourceGroups/{GROUP}/providers/Microsoft.KeyVault/vaults/kv-vigil"
    for target in ("kv-vigil", f"{GROUP}/KV-VIGIL", rid, f"{rid}/keys/k1", rid.lower(), "kv-two"):
        assert p.covers("vault", target), target
    for target in ("kv-vigil2", "", "vigilckpt", "audit"):
        assert not p.covers("vault", target), target
    assert p.covers("storage_account", "vigilckpt") and not p.covers("storage_account", "kv-vigil")
    assert p.covers("key", "audit") and not Protected().covers("vault", "kv-vigil")


def test_the_remediator_is_registered_and_keeps_the_contract() -> None:
    cls = remediators.get("lockdown_vault")
    assert cls is LockdownVault and not inspect.isabstract(cls)
    assert "lockdown_vault" in remediators.names()
    assert cls.target_kind == "vault" and cls.reversible
    assert cls.summary and cls.__doc__ and inspect.getmodule(cls).__doc__
    assert cls.permissions and all(p.startswith("azure:Microsoft.KeyVault/") for p in cls.permissions)
    assert cls.Params.model_config.get("extra") == "forbid"
    assert cls.Params.model_validate({}).model_dump() == {"object_id": None, "bypass": "AzureServices",
                                                           "ip_rules": ()}  # fmt: skip
