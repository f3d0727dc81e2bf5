"""``lock_storage``: turn off public access to a container and lock it; rollback restores what was recorded.

The response to data exfiltration from a container: whoever is reading it, stop them now, keep the data.
Two steps, each a single platform call that binds every principal, the container's owner included:

1. ``disable_public_read``: public (anonymous) access off, first, because it is the widest door;
2. ``set_lock``: ``read_only`` (the default: writes and deletes refused, reads still work, so training
   that depends on the data keeps running while people look) or ``no_access`` (reads refused too).

A lock only ever tightens: a container already locked at least as strictly as asked keeps its lock, so a
``read_only`` remediation never loosens a ``no_access`` lock an operator set by hand. The plan is a no-op
when the container is private and locked at least as asked. Both steps re-read the container and change
nothing when their effect is there, so the executor may re-run them.

``before`` records the lock, the public flag and the access rules (the last for the incident timeline: the
remediation does not change access rules, which the storage keeps per principal and quarantine suspends
per node). Rollback restores the recorded lock and public flag, and nothing else: it touches only what a
step may have changed. On Azure, the same steps disable blob public access and shared-key access, set the
network default to deny, and apply a management lock; the shape of ``before`` grows with them.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from vigil.platform.errors import NotFoundError
from vigil.platform.storage import ContainerInfo, Lock
from vigil.remediators.base import Context, Plan, RemediationError, Remediator, Step

#: how strict each lock is: a remediation never moves a container down this order
STRICTNESS: dict[Lock, int] = {Lock.NONE: 0, Lock.READ_ONLY: 1, Lock.NO_ACCESS: 2}


class LockStorageParams(BaseModel):
    """``lock``: ``read_only`` (writes and deletes refused) or ``no_access`` (reads refused as well)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lock: Literal["read_only", "no_access"] = "read_only"


class LockStorage(Remediator):
    """Deny public access to a container and lock it."""

    name: ClassVar[str] = "lock_storage"
    summary: ClassVar[str] = "deny public access to a storage container and lock it"
    Params: ClassVar[type[BaseModel]] = LockStorageParams
    permissions: ClassVar[tuple[str, ...]] = ("storage:read", "storage:admin")
    reversible: ClassVar[bool] = True
    target_kind: ClassVar[str] = "container"

    async def fleet(self, ctx: Context) -> list[str]:
        return sorted(c.name for c in await ctx.storage.list_containers(ctx.principal))

    async def check(self, ctx: Context, target: str, params: BaseModel) -> dict[str, Any]:
        self.refuse_protected(ctx, target)
        return _state(await _container(ctx, target))

    def plan(self, target: str, params: BaseModel, state: dict[str, Any]) -> Plan:
        p = _params(params)
        want = Lock(p.lock)
        steps = []
        if state["public_read"]:
            steps.append(Step("disable_public_read", f"turn off public read access to {target!r}"))
        if STRICTNESS[Lock(state["lock"])] < STRICTNESS[want]:
            steps.append(Step("set_lock", f"lock container {target!r} {want.value}", {"lock": want.value}))
        before = {"lock": state["lock"], "public_read": state["public_read"], "access": state["access"]}
        return Plan(self.name, target, p.model_dump(mode="json"), tuple(steps), before, noop=not steps)

    async def apply_step(self, ctx: Context, plan: Plan, index: int) -> dict[str, Any]:
        self.refuse_protected(ctx, plan.target)
        if not 0 <= index < len(plan.steps):
            raise RemediationError(f"lock_storage: the plan has no step {index}")
        step = plan.steps[index]
        info = await _container(ctx, plan.target)
        if step.name == "disable_public_read":
            if not info.public_read:
                return {"changed": False, "public_read": False}
            await ctx.storage.set_public_read(ctx.principal, plan.target, False)
            return {"changed": True, "public_read": False}
        if step.name == "set_lock":
            want = Lock(step.data["lock"])
            if STRICTNESS[info.lock] >= STRICTNESS[want]:
                return {"changed": False, "lock": info.lock.value}
            done = await ctx.storage.set_lock(ctx.principal, plan.target, want)
            return {"changed": True, "lock": done.lock.value, "previous": info.lock.value}
        raise RemediationError(f"lock_storage: unknown step {step.name!r}")

    async def verify(self, ctx: Context, plan: Plan) -> str | None:
        info = await _container(ctx, plan.target)
        want = Lock(_params(self.params(plan.params)).lock)
        if info.public_read:
            return f"container {plan.target!r} is still publicly readable"
        if STRICTNESS[info.lock] < STRICTNESS[want]:
            return f"container {plan.target!r} is locked {info.lock.value}, not {want.value}"
        return None

    async def rollback(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        if plan.noop:
            return {"changed": False}
        info = await _container(ctx, plan.target)
        restored: dict[str, Any] = {}
        lock, public = Lock(plan.before["lock"]), bool(plan.before["public_read"])
        if info.lock != lock:
            await ctx.storage.set_lock(ctx.principal, plan.target, lock)
            restored["lock"] = lock.value
        if info.public_read != public:
            await ctx.storage.set_public_read(ctx.principal, plan.target, public)
            restored["public_read"] = public
        return {"changed": bool(restored), "restored": restored}


async def _container(ctx: Context, name: str) -> ContainerInfo:
    try:
        return await ctx.storage.get_container(ctx.principal, name)
    except NotFoundError:
        raise RemediationError(f"lock_storage: no container {name!r}") from None


def _state(info: ContainerInfo) -> dict[str, Any]:
    return {
        "lock": info.lock.value,
        "public_read": info.public_read,
        "access": {who: sorted(op.value for op in ops) for who, ops in sorted(info.access.items())},
        "key_name": info.key_name,
    }


def _params(params: BaseModel) -> LockStorageParams:
    if isinstance(params, LockStorageParams):
        return params
    return LockStorageParams.model_validate(params.model_dump())
