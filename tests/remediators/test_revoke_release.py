"""revoke_release on the real local vault: the tightened policy decides real releases; rollback restores."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from vigil.platform.errors import ConflictError, ReleaseDeniedError
from vigil.platform.keyvault import KeyOp
from vigil.remediators.base import RemediationError
from vigil.remediators.revoke_release import RevokeRelease, RevokeReleaseParams, build_policy, policy_digest

from .conftest import ADMIN, ISSUER, M1, M2, Env, apply_twice, pem, plan_for, run

R = RevokeRelease()
#: the policy before the incident: any compliant SEV-SNP VM of this issuer
LOOSE: dict[str, Any] = {
    "version": "1.0.0",
    "anyOf": [{"authority": ISSUER, "allOf": [{"claim": "x-ms-attestation-type", "equals": "sevsnpvm"}]}],
}


async def seed(env: Env, policy: dict[str, Any] | None = LOOSE) -> None:
    await env.vault.create_key(ADMIN, "data", exportable=True, release_policy=policy)
    await env.vault.grant(ADMIN, "node-1", "data", {KeyOp.RELEASE})


async def released(env: Env, node_key: rsa.RSAPrivateKey, measurement: str, **claims: Any) -> bool:
    try:
        await env.vault.release("node-1", "data", env.token(node_key, measurement, **claims), pem(node_key))
    except ReleaseDeniedError:
        return False
    return True


def test_tightened_policy_admits_only_the_listed_measurements(env: Env, node_key: rsa.RSAPrivateKey) -> None:
    async def scenario() -> None:
        await seed(env)
        assert await released(env, node_key, M1) and await released(env, node_key, M2)
        plan = await plan_for(R, env.ctx, "data", measurements=[M2.upper(), M2])
        assert plan.before == {"policy": LOOSE} and [s.name for s in plan.steps] == ["set_release_policy"]
        want = plan.steps[0].data["policy"]
        assert want == {
            "version": "1.0.0",
            "anyOf": [
                {
                    "authority": ISSUER,
                    "allOf": [
                        {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
                        {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": False},
                        {"claim": "x-ms-sevsnpvm-launchmeasurement", "equals": M2},
                    ],
                }
            ],
        }
        assert await R.verify(env.ctx, plan) == "the release policy of 'data' is not the planned one"

        results = await apply_twice(R, env, plan)
        assert results[0]["changed"] is True and results[0]["policy_digest"] == policy_digest(want)
        assert (await env.vault.get_key(ADMIN, "data")).release_policy == want
        assert await R.verify(env.ctx, plan) is None
        assert not await released(env, node_key, M1)
        assert await released(env, node_key, M2)
        assert not await released(env, node_key, M2, **{"x-ms-sevsnpvm-is-debuggable": True})

        again = await plan_for(R, env.ctx, "data", measurements=[M2])
        assert again.noop and again.steps == ()

        undone = await R.rollback(env.ctx, plan)
        assert undone["changed"] is True
        assert (await env.vault.get_key(ADMIN, "data")).release_policy == LOOSE
        assert await released(env, node_key, M1)
        events = env.changes()
        assert (await R.rollback(env.ctx, plan))["changed"] is False
        assert env.changes() == events

    run(scenario())


def test_an_empty_list_releases_to_nobody(env: Env, node_key: rsa.RSAPrivateKey) -> None:
    async def scenario() -> None:
        await seed(env)
        plan = await plan_for(R, env.ctx, "data")
        assert plan.steps[0].data["policy"] is None
        await apply_twice(R, env, plan)
        assert await R.verify(env.ctx, plan) is None
        with pytest.raises(ConflictError, match="no release policy"):
            await env.vault.release("node-1", "data", env.token(node_key, M1), pem(node_key))
        noop = await plan_for(R, env.ctx, "data")
        assert noop.noop and await R.verify(env.ctx, noop) is None
        assert (await R.rollback(env.ctx, noop))["changed"] is False
        await R.rollback(env.ctx, plan)
        assert await released(env, node_key, M1)

    run(scenario())


def test_authorities_come_from_the_current_policy_or_the_params(env: Env) -> None:
    other = "https://sharedweu.weu.attest.azure.net"
    two = {"version": "1.0.0", "anyOf": [LOOSE["anyOf"][0], {**LOOSE["anyOf"][0], "authority": other}]}
    policy = build_policy(RevokeReleaseParams(measurements=(M1, M2)), two)
    assert policy is not None
    assert [(a["authority"], a["allOf"][-1]["equals"]) for a in policy["anyOf"]] == [
        (ISSUER, M1), (ISSUER, M2), (other, M1), (other, M2),
    ]  # fmt: skip
    debug = build_policy(
        RevokeReleaseParams(measurements=(M1,), require_not_debuggable=False, authority=other), two
    )
    assert debug is not None and debug["anyOf"] == [
        {
            "authority": other,
            "allOf": [
                {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
                {"claim": "x-ms-sevsnpvm-launchmeasurement", "equals": M1},
            ],
        }
    ]

    async def scenario() -> None:
        await seed(env, policy=None)
        with pytest.raises(RemediationError, match="set authority"):
            await plan_for(R, env.ctx, "data", measurements=[M1])
        plan = await plan_for(R, env.ctx, "data", measurements=[M1], authority=ISSUER)
        assert plan.before == {"policy": None}
        await apply_twice(R, env, plan)
        await R.rollback(env.ctx, plan)
        assert (await env.vault.get_key(ADMIN, "data")).release_policy is None

    run(scenario())


def test_refusals_unknown_protected_and_bad_params(env: Env) -> None:
    async def scenario() -> None:
        await seed(env)
        with pytest.raises(RemediationError, match="no key 'ghost'"):
            await plan_for(R, env.ctx, "ghost")
        guarded = env.protecting(keys=frozenset({"data"}))
        plan = await plan_for(R, env.ctx, "data")
        events = env.changes()
        with pytest.raises(RemediationError, match=r"^protected: "):
            await plan_for(R, guarded, "data")
        with pytest.raises(RemediationError, match=r"^protected: "):
            await R.apply_step(guarded, plan, 0)
        assert env.changes() == events
        assert await R.fleet(env.ctx) == ["data"]

    run(scenario())
    for bad in ({"measurements": ["abc"]}, {"measurements": [M1], "strict": True}, {"authority": " "}):
        with pytest.raises(ValidationError):
            R.params(bad)
