"""``quarantine_vm``: cut a training node off from keys and data, stop it, and keep the evidence.

Containment is one platform call, :meth:`Compute.quarantine`, because its order matters and belongs to the
platform: it suspends the node principal's key release, unwrap and storage access *first* (so the node is
cut off even if it never hears the stop), marks it ``quarantined``, then tells it to stop through its
control channel. On Azure the same call isolates the VM's network and deallocates it. This module adds what
an investigator needs afterwards, and makes the whole thing safe to retry.

Steps:

1. ``collect_evidence`` re-reads the node and returns what it finds (state, principal, measurement,
   labels, the last update) with the *snapshot reference* planned for it. The result goes to the audit
   log, which is where evidence is kept. Locally there is no disk to snapshot, so the reference
   ``local-snapshot:<node>:<updated>`` names the node record as of the plan. On Azure the OS-disk
   snapshot is taken inside ``Compute.quarantine`` (step 2), under a deterministic name a re-run finds,
   and its name is in the quarantined node's ``quarantine["snapshot"]``.
   Collecting before quarantining matters: the quarantine changes the state being recorded.
2. ``quarantine`` calls :meth:`Compute.quarantine` with the reason and the evidence references (the
   planned ``before``, the snapshot reference and the ``evidence`` parameter: finding, incident, last
   telemetry ids). It does nothing when the node is quarantined already (the platform is idempotent too).

The plan is a no-op for a node that is quarantined already; a stopped node cannot be quarantined (the
platform refuses: it runs nothing and holds no session) and ``plan`` says so. Rollback is
:meth:`Compute.release`: the suspensions are lifted and the node returns to ``pending``, *not* to its
recorded state, because a node that was quarantined must attest again before it gets keys. The recorded
``before`` is for the incident timeline.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from vigil.platform.compute import Node, NodeState
from vigil.platform.errors import NotFoundError
from vigil.remediators.base import Context, Plan, RemediationError, Remediator, Step


class QuarantineVmParams(BaseModel):
    """``reason``: recorded with the quarantine (default: names the remediation); ``evidence``: references
    kept with it, as ``name -> id`` (``finding``, ``incident``, ``telemetry`` ...)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reason: str = ""
    evidence: dict[str, str] = Field(default_factory=dict)


class QuarantineVm(Remediator):
    """Quarantine a node: revoke its key release and storage access, stop it, keep evidence."""

    name: ClassVar[str] = "quarantine_vm"
    summary: ClassVar[str] = "revoke a node's key release and storage access, stop it, keep evidence"
    Params: ClassVar[type[BaseModel]] = QuarantineVmParams
    permissions: ClassVar[tuple[str, ...]] = ("compute:read", "compute:quarantine", "compute:release")
    reversible: ClassVar[bool] = True
    target_kind: ClassVar[str] = "node"

    async def fleet(self, ctx: Context) -> list[str]:
        return sorted(node.id for node in await ctx.compute.list_nodes(ctx.principal))

    async def check(self, ctx: Context, target: str, params: BaseModel) -> dict[str, Any]:
        self.refuse_protected(ctx, target)
        return _state(await _node(ctx, target))

    def plan(self, target: str, params: BaseModel, state: dict[str, Any]) -> Plan:
        p = _params(params)
        raw = p.model_dump(mode="json")
        if state["state"] == NodeState.QUARANTINED:
            return Plan(self.name, target, raw, (), dict(state), noop=True)
        snapshot = f"local-snapshot:{target}:{state['updated']:.6f}"
        reason = p.reason or "vigil remediation quarantine_vm"
        evidence = {"snapshot": snapshot, "before": dict(state), "references": dict(p.evidence)}
        steps = (
            Step(
                "collect_evidence",
                f"record node {target!r} as found, snapshot {snapshot}",
                {"snapshot": snapshot},
            ),
            Step(
                "quarantine",
                f"suspend key release and storage access of node {target!r}, mark it quarantined, stop it",
                {"reason": reason, "evidence": evidence},
            ),
        )
        return Plan(self.name, target, raw, steps, dict(state))

    async def apply_step(self, ctx: Context, plan: Plan, index: int) -> dict[str, Any]:
        self.refuse_protected(ctx, plan.target)
        if not 0 <= index < len(plan.steps):
            raise RemediationError(f"quarantine_vm: the plan has no step {index}")
        step = plan.steps[index]
        node = await _node(ctx, plan.target)
        if step.name == "collect_evidence":
            # reads only: re-running it records the node again, which is what evidence should be
            return {"changed": False, "snapshot": step.data["snapshot"], "node": _state(node)}
        if step.name == "quarantine":
            if node.state == NodeState.QUARANTINED:
                return {"changed": False, "state": node.state.value}
            done = await ctx.compute.quarantine(
                ctx.principal, plan.target, reason=step.data["reason"], evidence=dict(step.data["evidence"])
            )
            stop = done.quarantine.get("stop_delivered")
            return {"changed": True, "state": done.state.value, "stop_delivered": stop}
        raise RemediationError(f"quarantine_vm: unknown step {step.name!r}")

    async def verify(self, ctx: Context, plan: Plan) -> str | None:
        node = await _node(ctx, plan.target)
        if node.state != NodeState.QUARANTINED:
            return f"node {plan.target!r} is {node.state.value}, not quarantined"
        return None

    async def rollback(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        node = await _node(ctx, plan.target)
        if plan.noop or node.state != NodeState.QUARANTINED:
            return {"changed": False, "state": node.state.value}
        reason = f"rollback of quarantine_vm ({plan.steps[-1].data.get('reason', '')})"
        released = await ctx.compute.release(ctx.principal, plan.target, reason=reason)
        return {"changed": True, "state": released.state.value}


async def _node(ctx: Context, node_id: str) -> Node:
    try:
        return await ctx.compute.get_node(ctx.principal, node_id)
    except NotFoundError:
        raise RemediationError(f"quarantine_vm: no node {node_id!r}") from None


def _state(node: Node) -> dict[str, Any]:
    return {
        "state": node.state.value,
        "principal": node.principal,
        "measurement": node.measurement,
        "updated": node.updated,
        "control_url": node.control_url,
        "labels": dict(node.labels),
    }


def _params(params: BaseModel) -> QuarantineVmParams:
    if isinstance(params, QuarantineVmParams):
        return params
    return QuarantineVmParams.model_validate(params.model_dump())
