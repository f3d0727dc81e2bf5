"""``rotate_key``: a new key version, every dependent data key re-wrapped under it, the old versions disabled.

Why these three steps, in this order: a rotation alone protects nothing that is already stored, because the
old version still unwraps every data key it wrapped. So the remediation (1) rotates, (2) asks the storage to
re-wrap the data key of every object in every container protected by this key (:meth:`Storage.rewrap`: the
data stays untouched and readable throughout), and only then (3) disables the versions that were enabled
before the rotation, so a copy of the old material no longer opens anything. Disabling before the re-wrap
would make the not-yet-rewrapped objects unreadable; the order is the safety.

Idempotency, because the executor re-runs a step after a crash:

* ``rotate`` carries the version it rotates *away from* (``from_version``). When that version is no longer
  current, the rotation already happened and the step does nothing, so a resumed action never rotates
  twice. A fresh :meth:`plan` has no such memory (every plan rotates; the live state cannot say "rotated
  by this action"), so the core resumes from the stored plan and never re-plans a started action.
  ``fresh_seconds`` gives plans a notion of "already done": a key whose current version is younger than
  that is fresh, and the plan is a no-op.
* ``rewrap`` works on every container protected by the key when it runs (the plan's list is for the
  approver; a container created after the plan is re-wrapped too) and skips one whose objects are all
  wrapped by the current version already (read from the object listing; a container locked ``no_access``
  cannot be listed and is re-wrapped regardless, which the storage permits under any lock).
* ``disable_previous`` disables only what is still enabled, never the live current version.

Grace period: with ``grace_seconds > 0`` the old versions stay enabled until ``grace_seconds`` after the
new version was created (the vault's own timestamp, so the grace does not depend on when the action was
approved or resumed). Before that, the step changes nothing and returns ``{"deferred": true, "due": T}``:
the executor keeps the action open and runs the step again after ``T``. ``verify`` reports the still-enabled
versions until then. With no grace (the default) the old versions are disabled at once.

Step data and results hold key names, version ids, container names and counts: never key material.
A rotated key cannot be un-rotated, so the remediator is not reversible.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from vigil.platform.errors import LockedError, NotFoundError
from vigil.remediators.base import Context, Plan, RemediationError, Remediator, Step


class RotateKeyParams(BaseModel):
    """``grace_seconds``: how long the old versions keep unwrapping after the rotation; ``rewrap_containers``:
    re-wrap the data keys of every container protected by the key (turn off only when nothing is stored
    under it: disabling the old versions then makes the un-rewrapped objects unreadable);
    ``fresh_seconds``: a key rotated less than this long ago is left alone (no-op)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grace_seconds: float = Field(default=0.0, ge=0)
    rewrap_containers: bool = True
    fresh_seconds: float = Field(default=0.0, ge=0)


class RotateKey(Remediator):
    """Rotate a key, re-wrap its containers' data keys, disable the old versions (after a grace period)."""

    name: ClassVar[str] = "rotate_key"
    summary: ClassVar[str] = "new key version, data keys re-wrapped under it, old versions disabled"
    Params: ClassVar[type[BaseModel]] = RotateKeyParams
    permissions: ClassVar[tuple[str, ...]] = ("keys:read", "keys:rotate", "keys:update", "storage:admin")
    reversible: ClassVar[bool] = False
    target_kind: ClassVar[str] = "key"

    async def fleet(self, ctx: Context) -> list[str]:
        return sorted(key.name for key in await ctx.vault.list_keys(ctx.principal))

    async def check(self, ctx: Context, target: str, params: BaseModel) -> dict[str, Any]:
        self.refuse_protected(ctx, target)
        try:
            info = await ctx.vault.get_key(ctx.principal, target)
        except NotFoundError:
            raise RemediationError(f"rotate_key: no key {target!r}") from None
        if info.deleted is not None:
            raise RemediationError(f"rotate_key: key {target!r} is deleted")
        current = next((v for v in info.versions if v.version == info.current), None)
        containers = [
            c.name for c in await ctx.storage.list_containers(ctx.principal) if c.key_name == target
        ]
        return {
            "current": info.current,
            "current_age": None if current is None else max(0.0, time.time() - current.created),
            "enabled": [v.version for v in info.versions if v.enabled],
            "containers": sorted(containers),
        }

    def plan(self, target: str, params: BaseModel, state: dict[str, Any]) -> Plan:
        p = _params(params)
        before = {"current": state["current"], "enabled": list(state["enabled"])}
        age = state.get("current_age")
        if p.fresh_seconds > 0 and age is not None and age < p.fresh_seconds:
            return Plan(self.name, target, p.model_dump(mode="json"), (), before, noop=True)
        steps = [
            Step("rotate", f"create a new version of key {target!r}", {"from_version": state["current"]})
        ]
        if p.rewrap_containers and state["containers"]:
            names = list(state["containers"])
            steps.append(
                Step("rewrap", f"re-wrap the data keys of {len(names)} container(s)", {"containers": names})
            )
        if state["enabled"]:
            steps.append(
                Step(
                    "disable_previous",
                    f"disable {len(state['enabled'])} previous version(s)"
                    + (f" {p.grace_seconds:g}s after the rotation" if p.grace_seconds else ""),
                    {"versions": list(state["enabled"]), "grace_seconds": p.grace_seconds},
                )
            )
        return Plan(self.name, target, p.model_dump(mode="json"), tuple(steps), before)

    async def apply_step(self, ctx: Context, plan: Plan, index: int) -> dict[str, Any]:
        self.refuse_protected(ctx, plan.target)
        if not 0 <= index < len(plan.steps):
            raise RemediationError(f"rotate_key: the plan has no step {index}")
        step = plan.steps[index]
        if step.name == "rotate":
            return await self._rotate(ctx, plan.target, step.data["from_version"])
        if step.name == "rewrap":
            return await self._rewrap(ctx, plan.target)
        if step.name == "disable_previous":
            return await self._disable(
                ctx, plan.target, list(step.data["versions"]), step.data["grace_seconds"]
            )
        raise RemediationError(f"rotate_key: unknown step {step.name!r}")

    async def verify(self, ctx: Context, plan: Plan) -> str | None:
        if plan.noop:
            return None
        info = await ctx.vault.get_key(ctx.principal, plan.target)
        if info.current is None or info.current == plan.before["current"]:
            return f"key {plan.target!r} was not rotated (current version {info.current})"
        if any(s.name == "rewrap" for s in plan.steps):
            for container in await ctx.storage.list_containers(ctx.principal):
                if container.key_name == plan.target and await _stale(ctx, container.name, info.current):
                    return f"container {container.name!r} has data keys not wrapped by version {info.current}"
        steps = [s for s in plan.steps if s.name == "disable_previous"]
        planned: list[str] = steps[0].data["versions"] if steps else []
        left = [v.version for v in info.versions if v.enabled and v.version in planned]
        if left:
            return f"previous version(s) still enabled: {', '.join(left)}"
        return None

    # -- steps ---------------------------------------------------------------------------------------------

    async def _rotate(self, ctx: Context, name: str, from_version: str | None) -> dict[str, Any]:
        info = await ctx.vault.get_key(ctx.principal, name)
        if info.current != from_version:
            return {"changed": False, "version": info.current}  # rotated already (a resumed action)
        new = await ctx.vault.rotate_key(ctx.principal, name)
        return {"changed": True, "version": new.version, "previous": from_version}

    async def _rewrap(self, ctx: Context, name: str) -> dict[str, Any]:
        current = (await ctx.vault.get_key(ctx.principal, name)).current
        if current is None:
            raise RemediationError(f"rotate_key: key {name!r} has no enabled version to re-wrap under")
        done: dict[str, int] = {}
        for container in await ctx.storage.list_containers(ctx.principal):
            if container.key_name == name and await _stale(ctx, container.name, current):
                done[container.name] = await ctx.storage.rewrap(ctx.principal, container.name)
        return {"changed": bool(done), "version": current, "rewrapped": done}

    async def _disable(self, ctx: Context, name: str, versions: list[str], grace: float) -> dict[str, Any]:
        info = await ctx.vault.get_key(ctx.principal, name)
        if info.current is None:
            raise RemediationError(f"rotate_key: key {name!r} has no enabled version; not disabling more")
        if info.current in versions:
            raise RemediationError(f"rotate_key: refusing to disable {info.current}, the current version")
        if grace > 0:
            current = next(v for v in info.versions if v.version == info.current)
            due = current.created + grace
            if time.time() < due:
                return {"changed": False, "deferred": True, "due": due}
        enabled = {v.version for v in info.versions if v.enabled}
        disabled = []
        for version in versions:
            if version in enabled:
                await ctx.vault.set_version_enabled(ctx.principal, name, version, False)
                disabled.append(version)
        return {"changed": bool(disabled), "disabled": disabled}


async def _stale(ctx: Context, container: str, version: str) -> bool:
    """Whether some object in ``container`` has its data key wrapped by another version than ``version``."""
    try:
        objects = await ctx.storage.list_objects(ctx.principal, container)
    except LockedError:
        return True  # a no_access lock hides the listing; rewrap itself works under any lock
    return any(o.key_version != version for o in objects)


def _params(params: BaseModel) -> RotateKeyParams:
    if isinstance(params, RotateKeyParams):
        return params
    return RotateKeyParams.model_validate(params.model_dump())
