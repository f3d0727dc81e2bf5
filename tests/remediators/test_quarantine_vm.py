"""quarantine_vm on the real local platform: access cut, evidence kept, rollback releases the node."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from vigil.platform.compute import NodeState
from vigil.platform.errors import ForbiddenError
from vigil.platform.keyvault import KeyOp
from vigil.platform.storage import StorageOp
from vigil.remediators.base import RemediationError
from vigil.remediators.quarantine_vm import QuarantineVm

from .conftest import ADMIN, M1, Env, apply_twice, plan_for, run

R = QuarantineVm()


async def seed(env: Env) -> None:
    """Node ``n1`` (principal ``node-1``) running, with unwrap on key ``data`` and read on ``train``."""
    await env.vault.create_key(ADMIN, "data")
    await env.storage.create_container(ADMIN, "train", key_name="data")
    await env.storage.put(ADMIN, "train", "shard-0", b"secret shard")
    await env.vault.grant(ADMIN, "node-1", "data", {KeyOp.UNWRAP})
    await env.storage.set_access(ADMIN, "train", "node-1", frozenset({StorageOp.READ}))
    await env.compute.register(ADMIN, "n1", node_principal="node-1", measurement=M1, labels={"job": "llm"})
    await env.compute.set_state(ADMIN, "n1", NodeState.ATTESTED)
    await env.compute.set_state("node-1", "n1", NodeState.RUNNING)


def test_quarantine_cuts_access_keeps_evidence_and_rollback_releases(env: Env) -> None:
    async def scenario() -> None:
        await seed(env)
        wrapped = await env.vault.wrap(ADMIN, "data", b"k" * 32)
        plan = await plan_for(R, env.ctx, "n1", reason="exfiltration", evidence={"finding": "f-42"})
        assert [s.name for s in plan.steps] == ["collect_evidence", "quarantine"]
        assert plan.before["state"] == "running" and plan.before["principal"] == "node-1"
        snapshot = plan.steps[0].data["snapshot"]
        assert snapshot.startswith("local-snapshot:n1:")
        assert await R.verify(env.ctx, plan) == "node 'n1' is running, not quarantined"

        results = await apply_twice(R, env, plan)
        assert results[0]["node"]["state"] == "running" and results[0]["snapshot"] == snapshot
        assert results[1]["changed"] is True and results[1]["state"] == "quarantined"
        node = await env.compute.get_node(ADMIN, "n1")
        assert node.state == NodeState.QUARANTINED and node.quarantine["reason"] == "exfiltration"
        evidence = node.quarantine["evidence"]
        assert evidence["snapshot"] == snapshot and evidence["references"] == {"finding": "f-42"}
        assert evidence["before"]["measurement"] == M1
        with pytest.raises(ForbiddenError):
            await env.vault.unwrap("node-1", wrapped)
        with pytest.raises(ForbiddenError):
            await env.storage.read("node-1", "train", "shard-0")
        assert await R.verify(env.ctx, plan) is None

        undone = await R.rollback(env.ctx, plan)
        assert undone == {"changed": True, "state": "pending"}  # it must attest again before it gets keys
        assert await env.vault.unwrap("node-1", wrapped) == b"k" * 32
        assert await env.storage.read("node-1", "train", "shard-0") == b"secret shard"
        events = env.changes()
        assert (await R.rollback(env.ctx, plan))["changed"] is False
        assert env.changes() == events

    run(scenario())


def test_a_quarantined_node_is_a_noop_and_a_stopped_one_is_quarantined_too(env: Env) -> None:
    async def scenario() -> None:
        await seed(env)
        await env.compute.quarantine(ADMIN, "n1", reason="by hand", evidence={})
        events = env.changes()
        plan = await plan_for(R, env.ctx, "n1")
        assert plan.noop and plan.steps == ()
        assert await R.verify(env.ctx, plan) is None
        assert (await R.rollback(env.ctx, plan))["changed"] is False  # not ours to release
        assert env.changes() == events
        assert (await env.compute.get_node(ADMIN, "n1")).state == NodeState.QUARANTINED

        await env.compute.register(ADMIN, "n2", node_principal="node-2", measurement=M1)
        await env.compute.set_state(ADMIN, "n2", NodeState.STOPPED)
        plan = await plan_for(R, env.ctx, "n2")  # it may attest and run again: cut it off all the same
        assert not plan.noop and plan.before["state"] == "stopped"
        for i in range(len(plan.steps)):
            await R.apply_step(env.ctx, plan, i)
        assert (await env.compute.get_node(ADMIN, "n2")).state == NodeState.QUARANTINED

    run(scenario())


def test_refusals_unknown_protected_and_bad_params(env: Env) -> None:
    async def scenario() -> None:
        await seed(env)
        with pytest.raises(RemediationError, match="no node 'ghost'"):
            await plan_for(R, env.ctx, "ghost")
        guarded = env.protecting(nodes=frozenset({"n1"}))
        plan = await plan_for(R, env.ctx, "n1")
        events = env.changes()
        with pytest.raises(RemediationError, match=r"^protected: "):
            await plan_for(R, guarded, "n1")
        for index in range(len(plan.steps)):
            with pytest.raises(RemediationError, match=r"^protected: "):
                await R.apply_step(guarded, plan, index)
        assert env.changes() == events
        assert (await env.compute.get_node(ADMIN, "n1")).state == NodeState.RUNNING
        assert await R.fleet(env.ctx) == ["n1"]

    run(scenario())
    with pytest.raises(ValidationError):
        R.params({"reason": "x", "stop": True})
    with pytest.raises(ValidationError):
        R.params({"evidence": {"finding": 3}})
