"""Human decisions on actions: approve, reject, roll back — who may, and what an approval binds to.

The engine (:mod:`.engine`) decides what rules propose; this module handles what people decide later. The
two are separate because they answer to different rules: proposals to the policy, people to the approver
role, and the rule author may not approve or reject the rule's own actions. The engine's
``approve``/``reject``/``rollback`` stay the public entry points and only delegate here.

Approvals bind to a plan: :meth:`Approvals.approve` checks and plans the action *now*, audits the
approval with the plan's digest, and stores the digest; the executor re-plans at run time and fails the
action "plan changed since approval" if the digest differs, so a changed plan needs a new approval. A
caller that shows the plan to the approver can pass the digest it showed and get :class:`PlanChangedError`
when that plan is no longer the one that would run. The approver must be listed in ``response.approvers``
and must not be the rule's author (a rollback the author may do); refusals are audited too, and a refusal
whose audit record cannot be written is refused all the same.

An approval past its ``expires`` is never honoured: :meth:`Approvals.approve` expires it instead, and the
engine's tick expires the rest through :meth:`Approvals.expire`. Either way the expiry is audited first and
the transition is conditional, so a decision that won the race stands.

The engine hands in the machinery it owns — the per-target locks, the start path (kill switch, circuit
breaker, rate limit) and the failure alert — as plain callables. So this class knows no engine type (no
import cycle, no mixin), and approving runs the action through the very same path as a rule's decision,
under the same target lock: no run of another action on that target can slip between plan and start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from vigil.audit.log import AuditUnavailableError
from vigil.audit.record import Actor, AuditKind, check_no_secrets
from vigil.errors import VigilError
from vigil.platform.errors import UnavailableError
from vigil.remediators.base import Context, Plan, RemediationError, remediators
from vigil.response.executor import Executor
from vigil.response.model import Action, ActionState
from vigil.response.recorder import AuditAppender
from vigil.response.store import ActionConflictError, ActionNotFoundError, ActionStore
from vigil.sections import ResponseSettings
from vigil.store.sqlite import StoreError

log = logging.getLogger(__name__)
S = ActionState

#: errors meaning "not recorded, nothing changed": the action keeps its state for a later try
NOT_RECORDED = (AuditUnavailableError, UnavailableError)

#: the engine's start of an approved action (kill switch, breaker, rate limit), called holding the lock
Start = Callable[[Action], Awaitable[Action]]
#: the engine's failure alert for an action that ended badly
Failed = Callable[[Action], Awaitable[None]]


class ActionForbiddenError(VigilError):
    """The user may not decide this action: not in ``response.approvers``, or the author of its rule."""


class PlanChangedError(VigilError):
    """The approval named a plan digest that is not the plan that would run now: review and approve again."""


class Approvals:
    """Approve, reject, roll back and expire actions on behalf of :class:`.engine.ResponseEngine`."""

    def __init__(
        self,
        store: ActionStore,
        executor: Executor,
        ctx: Context,
        audit: AuditAppender,
        settings: ResponseSettings,
        *,
        clock: Callable[[], float],
        lock: Callable[[str], asyncio.Lock],
        start: Start,
        failed: Failed,
    ) -> None:
        self.store = store
        self.executor = executor
        self.ctx = ctx
        self.audit = audit
        self.settings = settings
        self._clock = clock
        self._lock = lock
        self._start = start
        self._failed = failed

    def __repr__(self) -> str:
        return f"Approvals({self.store!r}, approvers={len(self.settings.approvers)})"

    async def approve(self, action_id: str, user: str, *, plan_digest: str | None = None) -> Action:
        """Approve a pending action as ``user`` and start it; the approval binds to the plan made now,
        under the target's lock, so a run of another action on the same target cannot slip in between."""
        action = self._get(action_id)
        await self._authorize(action, user, "approve")
        async with self._lock(action.target):
            action = self._get(action_id)
            if action.state is not S.PENDING_APPROVAL:
                raise ActionConflictError(action.id, action.state, "approve")
            if action.expires is not None and action.expires <= self._clock():
                expired = await self.expire(action)
                raise ActionConflictError(action.id, expired.state, "approve")
            plan = await self._plan(action)
            digest = plan.digest()
            if plan_digest is not None and plan_digest != digest:
                reason = f"the plan is now {digest}, not {plan_digest}"
                refusal = {"stage": "refused", "what": "approve", "action": action.id, "reason": reason}
                await self.audit.append(Actor.user(user), AuditKind.APPROVAL, action.target, refusal)
                raise PlanChangedError(f"action {action.id}: {reason}: review the plan and approve again")
            steps = [s.name for s in plan.steps]
            details = {"stage": "decision", "outcome": "approved", "action": action.id, "rule": action.rule}
            await self.audit.append(
                Actor.user(user),
                AuditKind.APPROVAL,
                action.target,
                details | {"plan_digest": digest, "steps": steps},
            )
            approved = self.store.transition(
                action.id, {S.PENDING_APPROVAL}, S.APPROVED, actor=f"user:{user}", message="approved",
                decided_by=user, plan=plan.to_json(), plan_digest=digest,
            )  # fmt: skip
            return await self._start(approved)

    async def preview(self, action_id: str) -> dict[str, Any]:
        """What approving would run now: ``{"plan": ..., "plan_digest": ...}``, or ``{"error": ...}`` when
        the target cannot be planned. An approver reads it, then approves with that digest, so what runs
        is what was read (:meth:`approve` refuses another plan). Read-only: the check has no side effects,
        and nothing is recorded or locked."""
        action = self._get(action_id)
        try:
            plan = await self._plan(action)
        except VigilError as exc:  # (remediation, platform and registry errors alike)
            return {"error": str(exc)}
        return {"plan": plan.to_json(), "plan_digest": plan.digest()}

    async def reject(self, action_id: str, user: str, reason: str = "") -> Action:
        """Reject a pending action as ``user`` (same role rules as approving)."""
        action = self._get(action_id)
        await self._authorize(action, user, "reject")
        if action.state is not S.PENDING_APPROVAL:
            raise ActionConflictError(action.id, action.state, "reject")
        try:
            check_no_secrets({"reason": reason}, action.target)
        except ValueError:  # a pasted token has no place in the log or the timeline
            reason = "(reason withheld: it looked like a secret)"
        details = {"stage": "decision", "outcome": "rejected", "action": action.id, "reason": reason}
        await self.audit.append(Actor.user(user), AuditKind.APPROVAL, action.target, details)
        return self.store.transition(
            action.id, {S.PENDING_APPROVAL}, S.REJECTED, actor=f"user:{user}", message="rejected",
            decided_by=user, reason=reason or "rejected",
        )  # fmt: skip

    async def rollback(self, action_id: str, user: str) -> Action:
        """Roll back a succeeded (or noop) action as ``user``, who must hold the approver role."""
        action = self._get(action_id)
        await self._authorize(action, user, "roll back", author_may=True)
        async with self._lock(action.target):
            done = await self.executor.rollback(action, user)
        if done.state is S.ROLLBACK_FAILED:
            await self._failed(done)
        return done

    async def expire(self, action: Action) -> Action:
        """Expire a pending approval (audited first); the action as stored, if it was decided meanwhile."""
        details = {"stage": "decision", "outcome": "expired", "action": action.id, "expires": action.expires}
        await self.audit.append(Actor.system(), AuditKind.APPROVAL, action.target, details)
        try:
            return self.store.transition(
                action.id, {S.PENDING_APPROVAL}, S.EXPIRED, actor="vigil", reason="approval expired"
            )
        except ActionConflictError:  # decided meanwhile
            return self._get(action.id)

    async def _authorize(self, action: Action, user: str, what: str, *, author_may: bool = False) -> None:
        """ActionForbiddenError (audited, and on the timeline) unless ``user`` may ``what`` this action."""
        problem = None
        if user not in self.settings.approvers:
            problem = f"{user!r} does not hold the approver role (response.approvers)"
        elif not author_may and user == action.rule_author:
            problem = f"{user!r} is the author of rule {action.rule} and cannot {what} its actions"
        if problem is None:
            return
        details = {"stage": "refused", "what": what, "action": action.id, "reason": problem}
        try:
            await self.audit.append(Actor.user(user), AuditKind.APPROVAL, action.target, details)
        except NOT_RECORDED as exc:  # refused all the same
            log.error("refusal of %s by %s not audited: %s", what, user, exc)
        with contextlib.suppress(StoreError):
            self.store.log(action.id, f"user:{user}", f"{what} refused", {"reason": problem})
        raise ActionForbiddenError(f"action {action.id}: {problem}")

    async def _plan(self, action: Action) -> Plan:
        """Check the live target and plan (no side effects); RemediationError when it cannot be planned."""
        try:
            remediator = remediators.get(action.remediation)()
            params = remediator.params(action.params)
        except ValidationError as exc:
            raise RemediationError(
                f"{action.remediation}: {exc.error_count()} invalid parameter(s)"
            ) from None
        state = await remediator.check(self.ctx, action.target, params)
        return remediator.plan(action.target, params, state)

    def _get(self, action_id: str) -> Action:
        action = self.store.get(action_id)
        if action is None:
            raise ActionNotFoundError(f"no action {action_id}")
        return action
