"""rotate_key on the real local platform: rotate, re-wrap dependent data keys, disable old versions."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from pydantic import ValidationError

from vigil.platform.errors import DisabledError
from vigil.platform.storage import Lock
from vigil.remediators.base import NotReversibleError, Plan, RemediationError
from vigil.remediators.rotate_key import RotateKey

from .conftest import ADMIN, Env, apply_twice, plan_for, run

R = RotateKey()


async def seed(env: Env) -> dict[str, bytes]:
    """Key ``data`` protecting containers ``train`` (two objects) and ``empty``; key ``other`` and its
    container ``other-c``, which the rotation must not touch."""
    await env.vault.create_key(ADMIN, "data")
    await env.vault.create_key(ADMIN, "other")
    await env.storage.create_container(ADMIN, "train", key_name="data")
    await env.storage.create_container(ADMIN, "empty", key_name="data")
    await env.storage.create_container(ADMIN, "other-c", key_name="other")
    blobs = {"shard-0": os.urandom(70_000), "shard-1": b"small"}
    for name, data in blobs.items():
        await env.storage.put(ADMIN, "train", name, data)
    await env.storage.put(ADMIN, "other-c", "x", b"untouched")
    return blobs


def test_rotation_rewraps_dependent_data_keys_and_disables_the_old_version(env: Env) -> None:
    async def scenario() -> None:
        blobs = await seed(env)
        old = (await env.vault.get_key(ADMIN, "data")).current
        other_version = (await env.storage.head(ADMIN, "other-c", "x")).key_version
        wrapped_before = await env.vault.wrap(ADMIN, "data", os.urandom(32))
        plan = await plan_for(R, env.ctx, "data")
        assert [s.name for s in plan.steps] == ["rotate", "rewrap", "disable_previous"]
        assert plan.before == {"current": old, "enabled": [old]} and not plan.noop
        assert plan.steps[0].data == {"from_version": old}
        assert plan.steps[1].data == {"containers": ["empty", "train"]}
        assert await R.verify(env.ctx, plan) is not None  # nothing done yet

        rotated = await R.apply_step(env.ctx, plan, 0)
        new = (await env.vault.get_key(ADMIN, "data")).current
        assert rotated["changed"] and rotated["version"] == new != old
        for name, data in blobs.items():  # written before the rotation, still readable under the old version
            assert (await env.storage.head(ADMIN, "train", name)).key_version == old
            assert await env.storage.read(ADMIN, "train", name) == data

        results = await apply_twice(R, env, plan)
        assert results[0]["changed"] is False and results[0]["version"] == new  # rotated once, not twice
        assert results[1] == {"changed": True, "version": new, "rewrapped": {"train": 2}}
        assert results[2] == {"changed": True, "disabled": [old]}
        for name, data in blobs.items():
            assert (await env.storage.head(ADMIN, "train", name)).key_version == new
            assert await env.storage.read(ADMIN, "train", name) == data
        info = await env.vault.get_key(ADMIN, "data")
        assert [(v.version, v.enabled) for v in info.versions] == [(old, False), (new, True)]
        with pytest.raises(DisabledError):
            await env.vault.unwrap(ADMIN, wrapped_before)  # a copy of the old material opens nothing now
        assert (await env.storage.head(ADMIN, "other-c", "x")).key_version == other_version
        assert await R.verify(env.ctx, plan) is None
        with pytest.raises(NotReversibleError):
            await R.rollback(env.ctx, plan)

    run(scenario())


def test_a_resumed_plan_changes_nothing_and_a_fresh_key_is_a_noop(env: Env) -> None:
    async def scenario() -> None:
        await seed(env)
        plan = await plan_for(R, env.ctx, "data")
        for index in range(len(plan.steps)):
            await R.apply_step(env.ctx, plan, index)
        events = env.changes()
        resumed = Plan.from_json(plan.to_json())  # the executor restarts from the stored plan
        for index in range(len(resumed.steps)):
            assert (await R.apply_step(env.ctx, resumed, index))["changed"] is False
        assert env.changes() == events
        assert len((await env.vault.get_key(ADMIN, "data")).versions) == 2

        fresh = await plan_for(R, env.ctx, "data", fresh_seconds=3600)
        assert fresh.noop and fresh.steps == ()
        assert await R.verify(env.ctx, fresh) is None

    run(scenario())


def test_the_grace_period_defers_the_disable_step(env: Env) -> None:
    async def scenario() -> None:
        await seed(env)
        old = (await env.vault.get_key(ADMIN, "data")).current
        plan = await plan_for(R, env.ctx, "data", grace_seconds=0.5)
        await R.apply_step(env.ctx, plan, 0)
        await R.apply_step(env.ctx, plan, 1)
        events = env.changes()
        deferred = await R.apply_step(env.ctx, plan, 2)
        assert deferred["changed"] is False and deferred["deferred"] is True
        assert env.changes() == events
        assert await R.verify(env.ctx, plan) == f"previous version(s) still enabled: {old}"
        info = await env.vault.get_key(ADMIN, "data")
        assert all(v.enabled for v in info.versions)
        await asyncio.sleep(max(0.0, deferred["due"] - time.time()) + 0.05)
        assert await R.apply_step(env.ctx, plan, 2) == {"changed": True, "disabled": [old]}
        assert await R.verify(env.ctx, plan) is None

    run(scenario())


def test_a_container_locked_no_access_is_rewrapped_too(env: Env) -> None:
    async def scenario() -> None:
        await seed(env)
        await env.storage.set_lock(ADMIN, "train", Lock.NO_ACCESS)
        plan = await plan_for(R, env.ctx, "data")
        for index in range(len(plan.steps)):
            await R.apply_step(env.ctx, plan, index)
        await env.storage.set_lock(ADMIN, "train", Lock.NONE)
        new = (await env.vault.get_key(ADMIN, "data")).current
        assert {o.key_version for o in await env.storage.list_objects(ADMIN, "train")} == {new}
        assert await env.storage.read(ADMIN, "train", "shard-1") == b"small"

    run(scenario())


def test_without_rewrap_the_plan_only_rotates_and_disables(env: Env) -> None:
    async def scenario() -> None:
        await seed(env)
        plan = await plan_for(R, env.ctx, "data", rewrap_containers=False)
        assert [s.name for s in plan.steps] == ["rotate", "disable_previous"]
        await env.vault.create_key(ADMIN, "lonely")
        alone = await plan_for(R, env.ctx, "lonely")
        assert [s.name for s in alone.steps] == ["rotate", "disable_previous"]

    run(scenario())


def test_refusals_unknown_protected_and_bad_params(env: Env) -> None:
    async def scenario() -> None:
        await seed(env)
        with pytest.raises(RemediationError, match="no key 'missing'"):
            await plan_for(R, env.ctx, "missing")
        guarded = env.protecting(keys=frozenset({"data"}))
        events = env.changes()
        with pytest.raises(RemediationError, match=r"^protected: "):
            await plan_for(R, guarded, "data")
        plan = await plan_for(R, env.ctx, "data")
        with pytest.raises(RemediationError, match=r"^protected: "):
            await R.apply_step(guarded, plan, 0)  # protection is checked again when a stored plan runs
        assert env.changes() == events
        await env.vault.delete_key(ADMIN, "other")
        with pytest.raises(RemediationError, match="deleted"):
            await plan_for(R, env.ctx, "other")
        assert await R.fleet(env.ctx) == ["data"]

    run(scenario())
    with pytest.raises(ValidationError):
        R.params({"grace": "24h"})
    with pytest.raises(ValidationError):
        R.params({"grace_seconds": -1})
