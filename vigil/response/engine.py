"""The response engine: proposals in, decided actions out, each run at most once, every decision audited.

It is the plumbing around the pure policy (:mod:`.policy`), the durable action store (:mod:`.store`) and
the executor (:mod:`.executor`), and the only place those meet. The flow of :meth:`ResponseEngine.submit`:

1. Group the proposals by rule and remediate action; per group, look the remediator up (an unknown one, or
   parameters it rejects, refuse the group), count the fleet when a percentage cap needs it, read the
   targets this rule already acted on in the idempotency window, and let :func:`.policy.decide_batch`
   decide every proposal.
2. Per decision, the action's id *is* its idempotency key ``(rule, target, remediation, window)``, so a
   duplicate (a re-delivered event, a re-processed finding) finds the stored action and does nothing more.
   A new decision is **audited first** (``ACTION_INTENT``, or ``APPROVAL`` for a pending approval, actor
   the rule) and created after: if the append raises, nothing is created and the error propagates.
3. Then: a dry-run is planned by the executor (zero mutations) and alerted; a pending approval is alerted;
   a blast-radius refusal alerts once for the batch; an approved action starts, subject to the circuit
   breaker (open: refused, audited) and the rate limit (exhausted: it stays ``approved`` and a later
   :meth:`ResponseEngine.tick` starts it). The global dry run (``response.dry_run``, or the run-time kill
   switch, ``killswitch.py``) is checked again at run time, so it turns even approved actions into dry-runs.

People decide later (:meth:`ResponseEngine.approve`, ``reject``, ``rollback``); the engine delegates those to
:mod:`.approvals`, handing it the target locks and its own start path, so an approved action starts
exactly as a rule's decision would.

One :class:`asyncio.Lock` per target serialises everything that may mutate it (a run, a rollback), so two
proposals for one target — two rules, or a submit racing an approval — never run at once; the second one
re-checks live state after the first and ends ``noop``.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from vigil.audit.log import HMAC_KEY, SIGNING_KEY
from vigil.audit.record import Actor, AuditKind
from vigil.platform.errors import PlatformError
from vigil.remediators.base import Context, RemediationError, Remediator
from vigil.response.approvals import NOT_RECORDED, ActionForbiddenError, Approvals, PlanChangedError
from vigil.response.executor import Executor
from vigil.response.killswitch import KillSwitch
from vigil.response.model import Action, ActionState
from vigil.response.policy import (
    BreakerState,
    CircuitBreaker,
    Decision,
    Proposal,
    RateLimiter,
    decide_batch,
    decision_record,
    new_action,
    params_problem,
    protection,
    remediator_for,
    same_action,
)
from vigil.response.recorder import AuditAppender
from vigil.response.store import ActionStore
from vigil.rules.schema_forms import parse_duration
from vigil.sections import ResponseSettings

#: the public API; the errors of :mod:`.approvals` are re-exported for callers of approve() and reject()
__all__ = ["ActionForbiddenError", "Alert", "PlanChangedError", "ResponseEngine", "log_alert"]

log = logging.getLogger(__name__)
S = ActionState

#: alert(kind, message, details); kinds: blast_radius, protected, dry_run, approval, failure
Alert = Callable[[str, str, dict[str, Any]], Awaitable[None]]
#: after an audit outage stopped a run, runs wait this long before trying again
AUDIT_RETRY_SECONDS: Final = 5.0


async def log_alert(kind: str, message: str, details: dict[str, Any]) -> None:
    """The default alert until alert sinks exist (issue 9): one WARNING line."""
    log.warning("response alert [%s]: %s", kind, message)


class ResponseEngine:
    """Decides, records and starts remediation actions (see the module docstring)."""

    def __init__(
        self,
        store: ActionStore,
        executor: Executor,
        ctx: Context,
        audit: AuditAppender,
        settings: ResponseSettings,
        *,
        alert: Alert | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        """``clock`` (wall) stamps what is stored; ``monotonic`` (default :func:`time.monotonic`) times the
        rate limit, the breaker's cool-down and the audit retry, that a wall-clock step must not move."""
        self.store = store
        self.executor = executor
        self.ctx = ctx
        self.audit = audit
        self.settings = settings
        self._alert = alert or log_alert
        self._clock = clock
        #: Vigil's own resources: the context's, the settings' and always the audit log's keys
        self.protected = protection(settings, ctx.protected, always_keys=frozenset({SIGNING_KEY, HMAC_KEY}))
        self._window = parse_duration(settings.idempotency_window).total_seconds()
        self._ttl = parse_duration(settings.approval_ttl).total_seconds()
        #: the global dry run: ``response.dry_run``, or the run-time switch of an approver (killswitch.py)
        self.kill = KillSwitch(store, audit, settings, clock=clock)
        self._monotonic = monotonic or time.monotonic
        self.limiter = RateLimiter(settings.rate_limit, clock=self._monotonic)
        cooldown = parse_duration(settings.breaker_cooldown).total_seconds()
        self.breaker = CircuitBreaker(settings.breaker_failures, cooldown, clock=self._monotonic)
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._submitting = asyncio.Lock()
        self._held: set[str] = set()  # approved actions the rate limit holds (noted on the timeline once)
        self._retry_at = 0.0
        self._approvals = Approvals(
            store, executor, ctx, audit, settings,
            clock=clock, lock=self._lock, start=self._start_locked, failed=self._failed,
        )  # fmt: skip

    def __repr__(self) -> str:
        return f"ResponseEngine({self.store!r}, dry_run={self.kill.on})"

    # -- proposals ---------------------------------------------------------------------------------------

    async def submit(self, proposals: Sequence[Proposal]) -> list[Action]:
        """Decide, record and start ``proposals``; the action of each, in order, as stored afterwards."""
        out: list[Action | None] = [None] * len(proposals)
        starts: list[tuple[int, Action]] = []
        async with self._submitting:
            groups: list[list[int]] = []
            for i, p in enumerate(proposals):
                group = next((g for g in groups if same_action(proposals[g[0]], p)), None)
                if group is None:
                    groups.append([i])
                else:
                    group.append(i)
            for group in groups:
                starts += await self._decide_group([(i, proposals[i]) for i in group], out)
            for i, action in starts:
                out[i] = await self._start_logged(action)
        return [a for a in out if a is not None]

    async def _decide_group(
        self, items: list[tuple[int, Proposal]], out: list[Action | None]
    ) -> list[tuple[int, Action]]:
        first = items[0][1]
        remediator, kind, problem = remediator_for(first)
        batch: list[Proposal] = []
        for _, p in items:
            reason = problem if remediator is None else params_problem(remediator, p)
            batch.append(p if p.problem or not reason else dataclasses.replace(p, problem=reason))
        fleet = 0
        if remediator is not None and first.action.max_percent is not None:
            fleet = await self._fleet(remediator)
        since = self._clock() - self._window
        decisions = decide_batch(
            batch,
            fleet_size=fleet,
            recent_targets=self.store.targets_recent(first.rule, first.action.remediation, since),
            settings=self.settings.model_copy(update={"dry_run": True}) if self.kill.on else self.settings,
            protected=self.protected,
            target_kind=kind,
        )
        new: list[tuple[int, Decision, Action]] = []
        for (i, _), decision in zip(items, decisions, strict=True):
            action, created = await self._record(decision)
            out[i] = action
            if created:
                new.append((i, decision, action))
        stopped = [d for _, d, _ in new if d.outcome == "refused" and d.reason.startswith("blast radius")]
        if stopped:
            targets = sorted({d.proposal.target for d in stopped})
            message = f"rule {first.rule}: {first.action.remediation} stopped, no target touched: "
            await self._notify(
                "blast_radius",
                message + stopped[0].reason,
                {"rule": first.rule, "remediation": first.action.remediation, "targets": targets},
            )
        starts: list[tuple[int, Action]] = []
        for i, decision, action in new:
            if decision.outcome == "refused" and decision.reason.startswith("protected"):  # self-harm (C13)
                await self._notify(
                    "protected",
                    f"action {action.id}: {action.remediation} on {action.target} refused: {decision.reason}",
                    {"action": action.id, "rule": action.rule, "target": action.target},
                )
            if decision.outcome == "approval":
                await self._notify(
                    "approval",
                    f"action {action.id}: {action.remediation} on {action.target} awaits approval "
                    f"({decision.reason}) until {_when(action.expires)}",
                    {"action": action.id, "rule": action.rule, "target": action.target},
                )
            elif decision.outcome in ("run", "dry_run"):
                starts.append((i, action))
        return starts

    async def _record(self, decision: Decision) -> tuple[Action, bool]:
        """The stored action of ``decision``: the existing one for a duplicate, else audited, then created."""
        action = new_action(decision, now=self._clock(), window=self._window, ttl=self._ttl)
        existing = self.store.get(action.id)
        if existing is not None:
            return existing, False
        kind = AuditKind.APPROVAL if action.state is S.PENDING_APPROVAL else AuditKind.ACTION_INTENT
        await self.audit.append(
            Actor.rule(action.rule), kind, action.target, decision_record(decision, action)
        )
        return self.store.create(action)

    async def _fleet(self, remediator: Remediator) -> int:
        try:
            return len(await remediator.fleet(self.ctx))
        except (PlatformError, RemediationError) as exc:  # unknown fleet: a percentage cap refuses
            log.warning("fleet of %s unknown: %s", remediator.name, exc)
            return 0

    # -- starting an approved action ---------------------------------------------------------------------

    def _lock(self, target: str) -> asyncio.Lock:
        lock = self._locks.get(target)
        if lock is None:
            lock = self._locks[target] = asyncio.Lock()
        return lock

    async def _start(self, action: Action) -> Action:
        """Run an approved action now if the kill switch, the breaker and the rate limit allow; dry-run
        it under the kill switch; refuse it when the breaker is open; leave it approved when held."""
        async with self._lock(action.target):
            return await self._start_locked(action)

    async def _start_locked(self, action: Action) -> Action:
        current = self.store.get(action.id)
        if current is None or current.state is not S.APPROVED:
            return current or action
        if self.kill.on or current.dry_run:
            return await self._dry_run(current)
        name = current.remediation
        if self.breaker.state(name) is BreakerState.OPEN:
            return await self._refuse(current, "circuit breaker open")
        if self._monotonic() < self._retry_at:  # the audit log failed a moment ago
            return current
        if not self.limiter.acquire(name):
            if current.id not in self._held:
                self._held.add(current.id)
                wait = self.limiter.wait(name)
                self.store.log(current.id, "vigil", f"held: rate limit of {name}", {"wait": wait})
            return current
        if not self.breaker.allow(name):  # half-open, its one trial is out: wait for it
            return current
        self._held.discard(current.id)
        try:
            done = await self.executor.run(current)
        except NOT_RECORDED:
            self.breaker.cancel(name)
            self._retry_at = self._monotonic() + AUDIT_RETRY_SECONDS
            raise
        if done.state in (S.FAILED, S.TIMED_OUT):
            self.breaker.failure(name)
            await self._failed(done)
        else:
            self.breaker.success(name)
        return done

    async def _start_logged(self, action: Action) -> Action:
        """:meth:`_start`, for the background paths: an outage or a bug leaves the action as stored."""
        try:
            return await self._start(action)
        except NOT_RECORDED as exc:
            log.error("action %s not started, it cannot be recorded now: %s", action.id, exc)
        except Exception:
            log.exception("action %s: start failed", action.id)
        return self.store.get(action.id) or action

    async def _dry_run(self, action: Action) -> Action:
        done = await self.executor.dry_run(action)
        steps = [s.get("name", "") for s in (done.plan or {}).get("steps", [])]
        what = f"{len(steps)} step(s): {', '.join(steps)}" if steps else (done.reason or "nothing to do")
        await self._notify(
            "dry_run",
            f"dry run of {done.remediation} on {done.target} (rule {done.rule}): {what}",
            {"action": done.id, "plan_digest": done.plan_digest, "steps": steps},
        )
        return done

    async def _refuse(self, action: Action, reason: str) -> Action:
        details = {"stage": "decision", "outcome": "refused", "reason": reason, "action": action.id}
        await self.audit.append(Actor.rule(action.rule), AuditKind.ACTION_INTENT, action.target, details)
        refused = self.store.transition(action.id, {S.APPROVED}, S.REFUSED, actor="vigil", reason=reason)
        await self._failed(refused)
        return refused

    async def _failed(self, action: Action) -> None:
        what = f"{action.remediation} on {action.target}: {action.state.value} {action.reason}"
        details = {"action": action.id, "rule": action.rule, "state": action.state.value}
        await self._notify("failure", f"action {action.id}: {what}", details)

    async def _notify(self, kind: str, message: str, details: dict[str, Any]) -> None:
        """Alerting never stops a response: a failing alert is logged and the engine goes on."""
        try:
            await self._alert(kind, message, details)
        except Exception:
            log.exception("alert %s failed: %s", kind, message)

    # -- people: approve, reject, roll back --------------------------------------------------------------

    async def approve(self, action_id: str, user: str, *, plan_digest: str | None = None) -> Action:
        """Approve a pending action as ``user`` and start it (see :meth:`.Approvals.approve`)."""
        return await self._approvals.approve(action_id, user, plan_digest=plan_digest)

    async def preview(self, action_id: str) -> dict[str, Any]:
        """The plan approving would run now, and its digest (see :meth:`.Approvals.preview`)."""
        return await self._approvals.preview(action_id)

    async def reject(self, action_id: str, user: str, reason: str = "") -> Action:
        """Reject a pending action as ``user`` (same role rules as approving)."""
        return await self._approvals.reject(action_id, user, reason)

    async def rollback(self, action_id: str, user: str) -> Action:
        """Roll back a succeeded (or noop) action as ``user``, who must hold the approver role."""
        return await self._approvals.rollback(action_id, user)

    # -- time and restarts -------------------------------------------------------------------------------

    async def tick(self) -> None:
        """Expire overdue approvals, start approved actions the rate limit held back, and continue deferred
        steps that are due. Called every second by the response stage."""
        now = self._clock()
        for action in self.store.by_states([S.PENDING_APPROVAL]):
            if action.expires is not None and action.expires <= now:
                try:
                    await self._approvals.expire(action)
                except NOT_RECORDED as exc:
                    log.error("approval of %s not expired, it cannot be recorded now: %s", action.id, exc)
                    return
        for action in self.store.by_states([S.APPROVED]):
            await self._start_logged(action)
        if self.kill.on:
            return  # the kill switch: nothing already running moves on
        for action in self.store.by_states([S.RUNNING]):
            due = action.result.get("deferred_until")
            if due is not None and due <= now:
                await self._continue(action)

    async def resume(self) -> list[Action]:
        """At start: continue every ``running`` action (unless the kill switch is on) and start the
        approved ones through the breaker and the rate limit; the actions as stored afterwards."""
        out: list[Action] = []
        running = self.store.by_states([S.RUNNING])
        if self.kill.on and running:
            log.warning("the kill switch is on: %d running action(s) stay as they are", len(running))
        elif running:
            out += [await self._continue(a) for a in running]
        out += [await self._start_logged(a) for a in self.store.by_states([S.APPROVED])]
        return out

    async def _continue(self, action: Action) -> Action:
        try:
            async with self._lock(action.target):
                done = await self.executor.run(action)
        except NOT_RECORDED as exc:
            log.error("action %s not resumed, it cannot be recorded now: %s", action.id, exc)
            return self.store.get(action.id) or action
        except Exception:
            log.exception("action %s: resume failed", action.id)
            return self.store.get(action.id) or action
        if done.state in (S.FAILED, S.TIMED_OUT):
            self.breaker.failure(done.remediation)
            await self._failed(done)
        return done

    # -- reads -------------------------------------------------------------------------------------------

    def get(self, action_id: str) -> Action | None:
        return self.store.get(action_id)

    def list(
        self,
        *,
        state: ActionState | None = None,
        rule: str | None = None,
        incident_id: str | None = None,
        limit: int = 100,
    ) -> builtins.list[Action]:
        return self.store.list(state=state, rule=rule, incident_id=incident_id, limit=limit)

    def history(self, action_id: str) -> builtins.list[dict[str, Any]]:
        return self.store.history(action_id)


def _when(epoch: float | None) -> str:
    return "-" if epoch is None else datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
