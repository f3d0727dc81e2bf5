"""``revoke_release``: tighten a key's Secure Key Release policy to a list of launch measurements.

When a node image is found compromised (a measurement that should never have been trusted, a debuggable
VM, an attestation drift), the key it trained with must stop being released to anything built like it.
This remediator replaces the key's release policy with one that admits only a fresh SEV-SNP attestation of
an allowed launch measurement, in the grammar Azure Key Vault and the local vault both speak
(``../shared/reference/azure.md`` §4.5). For each authority × measurement, one alternative::

    {"authority": A, "allOf": [{"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
                               {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": false},
                               {"claim": "x-ms-sevsnpvm-launchmeasurement", "equals": M}]}

``authority`` defaults to the authorities of the current policy (tightening keeps the attestation service;
it changes what it must vouch for). Measurements are lower-cased, de-duplicated and sorted, so the same
list always gives the same policy and the same plan digest. An **empty list releases to nobody**: the
grammar has no "never" (an empty ``anyOf`` is invalid), so the remediator removes the policy, and a key
without a release policy cannot be released at all (the vault refuses it before it looks at any token).

The plan records the previous policy in ``before``; rollback puts it back. The single step and ``verify``
compare policies by :func:`policy_digest` (SHA-256 of canonical JSON: sorted keys, no spaces), so the step
does nothing when the planned policy is there already, and the plan is a no-op when it is live. A policy
is configuration, not key material; nothing secret is in the plan.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict, field_validator

from vigil.platform.errors import NotFoundError
from vigil.platform.keyvault import KeyInfo
from vigil.remediators.base import Context, Plan, RemediationError, Remediator, Step

POLICY_VERSION: Final = "1.0.0"
MEASUREMENT: Final = re.compile(r"[0-9a-f]{96}")  # SHA-384 launch measurement of SEV-SNP, hex


class RevokeReleaseParams(BaseModel):
    """``measurements``: launch measurements (96 hex) still allowed, empty = release nobody;
    ``require_not_debuggable``: refuse debuggable VMs; ``authority``: the attestation issuer to trust
    (default: the authorities of the current policy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    measurements: tuple[str, ...] = ()
    require_not_debuggable: bool = True
    authority: str | None = None

    @field_validator("measurements")
    @classmethod
    def _measurements(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        cleaned = sorted({m.strip().lower() for m in value})
        for m in cleaned:
            if not MEASUREMENT.fullmatch(m):
                raise ValueError(f"{m[:16]!r}…: a launch measurement is 96 hex digits (SHA-384)")
        return tuple(cleaned)

    @field_validator("authority")
    @classmethod
    def _authority(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("authority must be a non-empty issuer URL")
        return value


class RevokeRelease(Remediator):
    """Tighten a key's release policy to the given launch measurements (or to nobody)."""

    name: ClassVar[str] = "revoke_release"
    summary: ClassVar[str] = "tighten a key's release policy to allowed launch measurements (or to nobody)"
    Params: ClassVar[type[BaseModel]] = RevokeReleaseParams
    permissions: ClassVar[tuple[str, ...]] = ("keys:read", "keys:update")
    reversible: ClassVar[bool] = True
    target_kind: ClassVar[str] = "key"

    async def fleet(self, ctx: Context) -> list[str]:
        return sorted(key.name for key in await ctx.vault.list_keys(ctx.principal))

    async def check(self, ctx: Context, target: str, params: BaseModel) -> dict[str, Any]:
        self.refuse_protected(ctx, target)
        info = await _key(ctx, target)
        if info.deleted is not None:
            raise RemediationError(f"revoke_release: key {target!r} is deleted")
        return {"policy": info.release_policy, "exportable": info.exportable}

    def plan(self, target: str, params: BaseModel, state: dict[str, Any]) -> Plan:
        p = _params(params)
        current = state["policy"]
        desired = build_policy(p, current)
        before = {"policy": current}
        raw = p.model_dump(mode="json")
        if policy_digest(current) == policy_digest(desired):
            return Plan(self.name, target, raw, (), before, noop=True)
        what = (
            f"allow release of {target!r} only to {len(p.measurements)} launch measurement(s)"
            if desired is not None
            else f"remove the release policy of {target!r}: released to nobody"
        )
        step = Step("set_release_policy", what, {"policy": desired, "policy_digest": policy_digest(desired)})
        return Plan(self.name, target, raw, (step,), before)

    async def apply_step(self, ctx: Context, plan: Plan, index: int) -> dict[str, Any]:
        self.refuse_protected(ctx, plan.target)
        if not 0 <= index < len(plan.steps) or plan.steps[index].name != "set_release_policy":
            raise RemediationError(f"revoke_release: the plan has no step {index}")
        data = plan.steps[index].data
        return await _set(ctx, plan.target, data["policy"])

    async def verify(self, ctx: Context, plan: Plan) -> str | None:
        info = await _key(ctx, plan.target)
        want = plan.steps[0].data["policy"] if plan.steps else plan.before["policy"]
        if policy_digest(info.release_policy) != policy_digest(want):
            return f"the release policy of {plan.target!r} is not the planned one"
        return None

    async def rollback(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        if plan.noop:
            return {"changed": False}
        return await _set(ctx, plan.target, plan.before["policy"])


def build_policy(params: RevokeReleaseParams, current: dict[str, Any] | None) -> dict[str, Any] | None:
    """The tightened policy (see module docstring); None releases to nobody."""
    if not params.measurements:
        return None
    if params.authority is not None:
        authorities = [params.authority]
    else:
        found = [
            a["authority"]
            for a in (current or {}).get("anyOf", [])
            if isinstance(a, dict) and "authority" in a
        ]
        authorities = list(dict.fromkeys(found))
        if not authorities:
            raise RemediationError(
                "revoke_release: the key has no release policy to take authorities from; set authority"
            )
    alternatives = []
    for authority in authorities:
        for measurement in params.measurements:
            conditions: list[dict[str, Any]] = [{"claim": "x-ms-attestation-type", "equals": "sevsnpvm"}]
            if params.require_not_debuggable:
                conditions.append({"claim": "x-ms-sevsnpvm-is-debuggable", "equals": False})
            conditions.append({"claim": "x-ms-sevsnpvm-launchmeasurement", "equals": measurement})
            alternatives.append({"authority": authority, "allOf": conditions})
    return {"version": POLICY_VERSION, "anyOf": alternatives}


def policy_digest(policy: dict[str, Any] | None) -> str:
    """SHA-256 of the canonical JSON of a policy (``"null"`` for none): equal policies, equal digests."""
    text = json.dumps(policy, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


async def _set(ctx: Context, name: str, policy: dict[str, Any] | None) -> dict[str, Any]:
    """Set ``policy`` unless it is there already (the vault records every set, even an unchanged one)."""
    info = await _key(ctx, name)
    digest = policy_digest(policy)
    if policy_digest(info.release_policy) == digest:
        return {"changed": False, "policy_digest": digest}
    await ctx.vault.set_release_policy(ctx.principal, name, policy)
    return {"changed": True, "policy_digest": digest, "previous_digest": policy_digest(info.release_policy)}


async def _key(ctx: Context, name: str) -> KeyInfo:
    try:
        return await ctx.vault.get_key(ctx.principal, name)
    except NotFoundError:
        raise RemediationError(f"revoke_release: no key {name!r}") from None


def _params(params: BaseModel) -> RevokeReleaseParams:
    if isinstance(params, RevokeReleaseParams):
        return params
    return RevokeReleaseParams.model_validate(params.model_dump())
