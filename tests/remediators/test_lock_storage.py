"""lock_storage on the real local platform: public access off, lock on, rollback to the recorded state."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from vigil.platform.errors import LockedError
from vigil.platform.storage import Lock, StorageOp
from vigil.remediators.base import RemediationError
from vigil.remediators.lock_storage import LockStorage

from .conftest import ADMIN, Env, apply_twice, plan_for, run

R = LockStorage()


async def seed(env: Env, *, public: bool = True, lock: Lock = Lock.NONE) -> None:
    await env.vault.create_key(ADMIN, "data")
    await env.storage.create_container(ADMIN, "train", key_name="data")
    await env.storage.put(ADMIN, "train", "shard-0", b"rows")
    await env.storage.set_access(ADMIN, "train", "node-1", frozenset({StorageOp.READ}))
    if public:
        await env.storage.set_public_read(ADMIN, "train", True)
    if lock != Lock.NONE:
        await env.storage.set_lock(ADMIN, "train", lock)


def test_lock_down_and_rollback_restore_exactly_the_recorded_state(env: Env) -> None:
    async def scenario() -> None:
        await seed(env)
        plan = await plan_for(R, env.ctx, "train")
        assert [s.name for s in plan.steps] == ["disable_public_read", "set_lock"]
        assert plan.before == {"lock": "none", "public_read": True, "access": {"node-1": ["read"]}}
        assert await R.verify(env.ctx, plan) == "container 'train' is still publicly readable"

        results = await apply_twice(R, env, plan)
        assert results == [
            {"changed": True, "public_read": False},
            {"changed": True, "lock": "read_only", "previous": "none"},
        ]
        info = await env.storage.get_container(ADMIN, "train")
        assert (info.lock, info.public_read) == (Lock.READ_ONLY, False)
        with pytest.raises(LockedError):
            await env.storage.put(ADMIN, "train", "more", b"x")
        assert await env.storage.read("node-1", "train", "shard-0") == b"rows"  # read_only still reads
        assert await R.verify(env.ctx, plan) is None

        # an operator changes the access rules meanwhile: rollback restores lock and flag, nothing else
        await env.storage.set_access(ADMIN, "train", "auditor", frozenset({StorageOp.READ}))
        assert await R.rollback(env.ctx, plan) == {
            "changed": True,
            "restored": {"lock": "none", "public_read": True},
        }
        info = await env.storage.get_container(ADMIN, "train")
        assert (info.lock, info.public_read) == (Lock.NONE, True)
        assert set(info.access) == {"node-1", "auditor"}
        events = env.changes()
        assert (await R.rollback(env.ctx, plan))["changed"] is False
        assert env.changes() == events

    run(scenario())


def test_no_access_refuses_reads(env: Env) -> None:
    async def scenario() -> None:
        await seed(env, public=False)
        plan = await plan_for(R, env.ctx, "train", lock="no_access")
        assert [s.name for s in plan.steps] == ["set_lock"]
        await apply_twice(R, env, plan)
        with pytest.raises(LockedError):
            await env.storage.read("node-1", "train", "shard-0")
        assert await R.verify(env.ctx, plan) is None
        await R.rollback(env.ctx, plan)
        assert await env.storage.read("node-1", "train", "shard-0") == b"rows"

    run(scenario())


def test_a_container_already_locked_down_is_a_noop_and_a_lock_never_loosens(env: Env) -> None:
    async def scenario() -> None:
        await seed(env, public=False, lock=Lock.NO_ACCESS)
        events = env.changes()
        for lock in ("read_only", "no_access"):
            plan = await plan_for(R, env.ctx, "train", lock=lock)
            assert plan.noop and plan.steps == ()
            assert await R.verify(env.ctx, plan) is None
            assert (await R.rollback(env.ctx, plan))["changed"] is False
        assert env.changes() == events
        assert (await env.storage.get_container(ADMIN, "train")).lock == Lock.NO_ACCESS

        # a stored read_only plan resumed after an operator set no_access by hand keeps no_access
        await env.storage.set_lock(ADMIN, "train", Lock.NONE)
        plan = await plan_for(R, env.ctx, "train")
        await env.storage.set_lock(ADMIN, "train", Lock.NO_ACCESS)
        assert (await R.apply_step(env.ctx, plan, 0)) == {"changed": False, "lock": "no_access"}

    run(scenario())


def test_refusals_unknown_protected_and_bad_params(env: Env) -> None:
    async def scenario() -> None:
        await seed(env)
        with pytest.raises(RemediationError, match="no container 'ghost'"):
            await plan_for(R, env.ctx, "ghost")
        guarded = env.protecting(containers=frozenset({"train"}))
        plan = await plan_for(R, env.ctx, "train")
        events = env.changes()
        with pytest.raises(RemediationError, match=r"^protected: "):
            await plan_for(R, guarded, "train")
        with pytest.raises(RemediationError, match=r"^protected: "):
            await R.apply_step(guarded, plan, 0)
        assert env.changes() == events
        assert await R.fleet(env.ctx) == ["train"]

    run(scenario())
    with pytest.raises(ValidationError):
        R.params({"lock": "none"})
    with pytest.raises(ValidationError):
        R.params({"lock": "read_only", "public": False})
