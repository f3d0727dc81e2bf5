"""The executor: runs one decided action through its remediator, step by step, audited, crash-safe.

Whether an action may run is the policy's business (:mod:`vigil.response.policy`); the executor only runs
what reached ``approved`` and makes the run safe. For one action::

    approved ─CAS─► running  [response.after_running]
      check + plan   (a digest bound by an approval must match, else failed "plan changed since approval";
                      a plan with no steps ends noop)
      plan stored    [response.after_plan]
      for each step i from progress:
          audit ACTION_INTENT  [response.after_intent]  apply_step(i)  [response.after_apply]
          progress = i + 1, audit ACTION_RESULT
      verify ─► audit ACTION_RESULT  [response.before_done]  ─► succeeded | failed

The names in brackets are crash points (:mod:`vigil.streams.crash`); tests/response/test_crash.py kills
the process at each one and proves a restart finishes the action with every mutation made once.

**Audit first, fail closed.** Every step, and every final state, is preceded by its audit record. When the
audit append raises (any exception: not recorded), nothing further happens: the step does not run, the
action *keeps its state* (``approved``, or ``running`` at its progress), a timeline entry says why, and the
error propagates to the caller. We chose this over ``failed`` because the remediation is still needed:
an audit outage must not silently cancel the response to an attack. The action is picked up again by
:meth:`Executor.resume` (at daemon start, or whenever the engine retries after the audit log recovers).
A platform that refuses a change because *it* cannot put it on record (``UnavailableError``, or the
``AuditUnavailableError`` of an ``AuditObserver``) changed nothing, and is handled the same way.

**Never a second mutation.** ``approved → running`` is a compare-and-set: of two concurrent runs one wins,
the other returns the stored action; within one process a run in progress is not started twice (two
daemons resuming one store at once are not guarded against: one daemon owns a store). A resumed action
(``running`` at ``progress = k``) is re-checked and re-planned: a fresh no-op plan that ``verify`` confirms
means the target is already in the desired state (most often our own step k took effect before the crash
recorded it), so the action ends ``succeeded`` with ``result.reconciled = true``. Otherwise the *stored*
plan continues at step k, never the fresh one: it holds the original ``before`` (what rollback restores)
and stable step indices (a fresh plan's steps shift as earlier ones take effect, and ``rotate_key`` cannot
tell from live state that it already rotated). Steps are idempotent by contract, which covers the one
ambiguous window (after ``apply_step``, before the progress is stored). ``approved → running`` clears a
plan stored at decision time, so "``running`` with a plan" means "planned by a run", and an approval's
digest is compared on that first planning only.

**Deferred steps.** A step answering ``{"deferred": true, "due": T}`` (``rotate_key``'s grace period)
changed nothing: progress stays, the action stays ``running`` with ``result.deferred_until = T``, a run
before ``T`` returns it unchanged, and a run after (:meth:`Executor.next_due` tells the engine when) runs
the step again. An action marked ``dry_run`` is only ever dry-run, whichever method is called.

**Deadlines** (reliability A9): each remediator call is cancelled after ``step_timeout`` seconds, so a
remediator stuck on a dead socket cannot hold the engine and every action behind it. A check or step that
times out ends the action ``timed_out`` (the step's effect is unknown: not retried, alerted and counted by
the breaker; a reversible remediator can roll back what its plan recorded); a timed-out verify is a
failure, a timed-out rollback ``rollback_failed``, a dry run's check a "plan failed" outcome.

``RemediationError`` and ``PlatformError`` (and an unknown remediation or bad parameters) end the action
``failed`` with the reason, audited. Other exceptions are bugs: they propagate and leave the action
``running``, for the operator and the next resume.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import ValidationError

from vigil.audit.log import AuditUnavailableError
from vigil.audit.record import Actor, AuditKind
from vigil.errors import RegistryError
from vigil.platform.errors import PlatformError, UnavailableError
from vigil.remediators.base import (
    Context,
    NotReversibleError,
    Plan,
    RemediationError,
    Remediator,
    remediators,
)
from vigil.response.model import Action, ActionState
from vigil.response.recorder import AuditAppender, Recorder
from vigil.response.store import ActionConflictError, ActionStore
from vigil.streams.crash import crash_point

log = logging.getLogger(__name__)
S = ActionState
T = TypeVar("T")
#: the default of ``response.step_timeout``: longer than any ARM long-running operation Vigil waits on
DEFAULT_STEP_TIMEOUT = 900.0


class StepTimeoutError(RemediationError):
    """A remediator call ran past the executor's ``step_timeout`` and was cancelled."""


#: errors that end an action ``failed`` (the remediation cannot proceed as planned)
_FAILURES = (RemediationError, PlatformError, RegistryError, ValidationError)
#: errors that mean "nothing changed, nothing recorded": the action keeps its state and is retried later
_NOT_RECORDED = (AuditUnavailableError, UnavailableError)


class Executor:
    """Runs, dry-runs, rolls back and resumes actions (see the module docstring)."""

    def __init__(
        self,
        store: ActionStore,
        ctx: Context,
        audit: AuditAppender,
        *,
        clock: Callable[[], float] = time.time,
        step_timeout: float = DEFAULT_STEP_TIMEOUT,
    ) -> None:
        self.store = store
        self.ctx = ctx
        self.audit = audit
        self._rec = Recorder(store, audit)
        self._clock = clock
        self.step_timeout = step_timeout
        self._busy: set[str] = set()  # actions being run or rolled back by this process

    def __repr__(self) -> str:
        return f"Executor({self.store!r}, principal={self.ctx.principal!r})"

    async def _bounded(self, call: Awaitable[T], what: str) -> T:
        """``call``, cancelled after :attr:`step_timeout` seconds (StepTimeoutError then)."""
        try:
            return await asyncio.wait_for(call, self.step_timeout)
        except TimeoutError:
            raise StepTimeoutError(f"{what} did not finish within {self.step_timeout:g} s") from None

    # -- running -----------------------------------------------------------------------------------------

    async def run(self, action: Action) -> Action:
        """Run an ``approved`` action (or resume a ``running`` one) to its end; the action as stored after.
        A dry-run action is dry-run; an action in any other state is returned unchanged."""
        if action.dry_run:
            return await self.dry_run(action)
        if action.id in self._busy:
            return self._rec.stored(action.id)
        self._busy.add(action.id)
        try:
            return await self._run(action.state, self._rec.stored(action.id), self._clock())
        finally:
            self._busy.discard(action.id)

    async def _run(self, asked: ActionState, action: Action, started: float) -> Action:
        """``asked``: the state the caller saw. Only a caller that saw ``running`` (a resume) continues a
        running action; one that saw ``approved`` competes for the compare-and-set and, having lost it,
        returns the stored action, even if it is running now (someone else's run, not a crash)."""
        if S.APPROVED in (asked, action.state):
            try:
                action = self.store.transition(
                    action.id,
                    {S.APPROVED},
                    S.RUNNING,
                    actor="vigil",
                    message="started",
                    plan=None,
                    progress=0,
                    result={},
                )
            except ActionConflictError:
                return self._rec.stored(action.id)  # another run won the race
            crash_point("response.after_running")
        elif action.state is not S.RUNNING or action.result.get("deferred_until", 0) > self._clock():
            return action  # nothing to run, or a deferred step that is not due yet
        try:
            remediator = remediators.get(action.remediation)()
            params = remediator.params(action.params)
            live = await self._bounded(remediator.check(self.ctx, action.target, params), "check")
            fresh = remediator.plan(action.target, params, live)
        except _NOT_RECORDED as exc:
            self._rec.blocked(action, "check", exc)
            raise
        except _FAILURES as exc:
            to = S.TIMED_OUT if isinstance(exc, StepTimeoutError) else S.FAILED
            return await self._finish(action, to, f"{type(exc).__name__}: {exc}", started)
        reconciled = False
        if action.plan is None:  # the first planning of this run
            digest = fresh.digest()
            if action.plan_digest is not None and digest != action.plan_digest:
                change = {"approved_digest": action.plan_digest, "current_digest": digest}
                return await self._finish(
                    action, S.FAILED, "plan changed since approval", started, plan=fresh.to_json(), **change
                )
            if fresh.noop:
                return await self._finish(
                    action, S.NOOP, "", started, plan=fresh.to_json(), plan_digest=digest, before=fresh.before
                )
            action = self.store.transition(
                action.id,
                {S.RUNNING},
                S.RUNNING,
                actor="vigil",
                message="planned",
                plan=fresh.to_json(),
                plan_digest=digest,
            )
            crash_point("response.after_plan")
            plan = fresh
        else:  # resumed: continue the stored plan, unless live state is verified done
            plan = Plan.from_json(action.plan)
            reconciled = fresh.noop and await self._verify(action, remediator, plan) is None
            if reconciled:
                message = f"resumed at step {action.progress}: target already in the desired state"
                self.store.log(action.id, "vigil", message, {"progress": action.progress})
        for index in range(len(plan.steps) if reconciled else action.progress, len(plan.steps)):
            step = plan.steps[index]
            what = f"step {index} ({step.name})"
            intent = {"step": index, "name": step.name, "description": step.description, "data": step.data}
            await self._rec.record(action, AuditKind.ACTION_INTENT, what, intent)
            crash_point("response.after_intent")
            try:
                out = await self._bounded(remediator.apply_step(self.ctx, plan, index), what)
            except _NOT_RECORDED as exc:
                self._rec.blocked(action, what, exc)
                raise
            except (RemediationError, PlatformError) as exc:
                to = S.TIMED_OUT if isinstance(exc, StepTimeoutError) else S.FAILED
                return await self._finish(action, to, f"{what}: {type(exc).__name__}: {exc}", started)
            crash_point("response.after_apply")
            result = {k: v for k, v in action.result.items() if k != "deferred_until"}
            if out.get("deferred"):  # not due yet (a grace period): the same step runs again later
                due = float(out.get("due", 0.0))
                action = self.store.transition(
                    action.id,
                    {S.RUNNING},
                    S.RUNNING,
                    actor="vigil",
                    message=f"{what} deferred",
                    details={"due": due},
                    result={**result, "deferred_until": due},
                )
                await self._rec.record(action, AuditKind.ACTION_RESULT, what, {"step": index, "result": out})
                return action
            done = [*result.get("steps", [])[:index], {"name": step.name, **out}]
            action = self.store.set_progress(action.id, index + 1, {**result, "steps": done})
            await self._rec.record(
                action, AuditKind.ACTION_RESULT, what, {"step": index, "name": step.name, "result": out}
            )
        problem = await self._verify(action, remediator, plan)
        state = S.SUCCEEDED if problem is None else S.FAILED
        return await self._finish(action, state, problem or "", started, reconciled=reconciled)

    async def _finish(
        self,
        action: Action,
        to: ActionState,
        reason: str,
        started: float,
        *,
        plan: dict[str, Any] | None = None,
        plan_digest: str | None = None,
        **result: Any,
    ) -> Action:
        """Audit the outcome, then make it the action's final state (the record comes first)."""
        outcome = {**action.result, **result, "seconds": round(self._clock() - started, 6)}
        details = {"outcome": to.value, "reason": reason, **result}
        await self._rec.record(action, AuditKind.ACTION_RESULT, f"outcome {to.value}", details)
        crash_point("response.before_done")
        fields: dict[str, Any] = {"reason": reason, "result": outcome}
        if plan is not None:
            fields["plan"] = plan
        if plan_digest is not None:
            fields["plan_digest"] = plan_digest
        done = self.store.transition(action.id, {S.RUNNING}, to, actor="vigil", message=to.value, **fields)
        log.info(
            "action %s (%s on %s): %s %s", action.id, action.remediation, action.target, to.value, reason
        )
        return done

    async def _verify(self, action: Action, remediator: Remediator, plan: Plan) -> str | None:
        """What is wrong with the live state (None: the desired state holds)."""
        try:
            return await self._bounded(remediator.verify(self.ctx, plan), "verify")
        except _NOT_RECORDED as exc:
            self._rec.blocked(action, "verify", exc)
            raise
        except (RemediationError, PlatformError) as exc:
            return f"verify: {type(exc).__name__}: {exc}"

    # -- dry run -----------------------------------------------------------------------------------------

    async def dry_run(self, action: Action) -> Action:
        """Check and plan, store the plan, audit it as a dry-run intent, end ``dry_run``: no mutation.
        A plan that cannot be made is a dry-run outcome too (``reason`` says why)."""
        action = self._rec.stored(action.id)
        if action.state not in (S.APPROVED, S.PENDING_APPROVAL):
            return action
        fields: dict[str, Any]
        try:
            remediator = remediators.get(action.remediation)()
            params = remediator.params(action.params)
            live = await self._bounded(remediator.check(self.ctx, action.target, params), "check")
            fresh = remediator.plan(action.target, params, live)
        except _FAILURES as exc:
            reason = f"plan failed: {type(exc).__name__}: {exc}"
            details: dict[str, Any] = {"dry_run": True, "outcome": "plan failed", "reason": reason}
            fields = {"reason": reason}
        else:
            plan, digest = fresh.to_json(), fresh.digest()
            details = {"dry_run": True, "plan": plan, "plan_digest": digest, "noop": fresh.noop}
            fields = {
                "plan": plan,
                "plan_digest": digest,
                "result": {"noop": fresh.noop, "steps": len(fresh.steps)},
            }
        await self._rec.record(action, AuditKind.ACTION_INTENT, "dry run", details)
        try:
            return self.store.transition(
                action.id, {action.state}, S.DRY_RUN, actor="vigil", message="dry run", **fields
            )
        except ActionConflictError:
            return self._rec.stored(action.id)

    # -- rollback ----------------------------------------------------------------------------------------

    async def rollback(self, action: Action, user: str) -> Action:
        """Restore what the action's plan recorded as ``before`` (succeeded, noop or timed-out actions of
        reversible remediators, and rollbacks that failed: a retry starts from the live state, so it
        finishes one that stopped half-way); ActionConflictError in another state, NotReversibleError for
        the others."""
        action = self._rec.stored(action.id)
        if (
            action.state not in (S.SUCCEEDED, S.NOOP, S.TIMED_OUT, S.ROLLBACK_FAILED)
            or action.plan is None
            or action.id in self._busy
        ):
            raise ActionConflictError(action.id, action.state, "roll back")
        remediator = remediators.get(action.remediation)()
        if not remediator.reversible:
            raise NotReversibleError(f"{action.remediation} cannot be rolled back")
        plan = Plan.from_json(action.plan)
        actor = Actor.user(user)
        self._busy.add(action.id)
        try:
            intent = {"stage": "intent", "before": plan.before}
            await self._rec.record(action, AuditKind.ROLLBACK, "rollback", intent, actor=actor)
            try:
                out = await self._bounded(remediator.rollback(self.ctx, plan), "rollback")
            except _NOT_RECORDED as exc:
                self._rec.blocked(action, "rollback", exc)
                raise
            except (RemediationError, PlatformError) as exc:
                reason = f"rollback: {type(exc).__name__}: {exc}"
                failed = {"stage": "result", "outcome": S.ROLLBACK_FAILED.value, "reason": reason}
                await self._rec.record(action, AuditKind.ROLLBACK, "rollback", failed, actor=actor)
                return self.store.transition(
                    action.id, {action.state}, S.ROLLBACK_FAILED, actor=f"user:{user}", reason=reason
                )
            details = {"stage": "result", "outcome": S.ROLLED_BACK.value, "result": out}
            await self._rec.record(action, AuditKind.ROLLBACK, "rollback", details, actor=actor)
            result = {**action.result, "rollback": out}
            to = S.ROLLED_BACK
            return self.store.transition(action.id, {action.state}, to, actor=f"user:{user}", result=result)
        finally:
            self._busy.discard(action.id)

    # -- resume ------------------------------------------------------------------------------------------

    async def resume(self) -> list[Action]:
        """Run again every ``running`` and ``approved`` action, oldest first (daemon start; safe to call at
        any time). Stops at the first audit outage (the rest would be refused alike and stay for the next
        call); an unexpected error of one action is logged and the next one runs."""
        out: list[Action] = []
        for action in self.store.by_states([S.RUNNING, S.APPROVED]):
            try:
                out.append(await self.run(action))
            except AuditUnavailableError as exc:
                log.error("resume stopped: audit log unavailable (%s); actions keep their state", exc)
                out.append(self._rec.stored(action.id))
                break
            except Exception:
                log.exception("action %s: resume failed; it stays %s", action.id, action.state.value)
                out.append(self._rec.stored(action.id))
        return out

    def next_due(self) -> float | None:
        """When the earliest deferred step is due (a grace period), for the engine's timer; None if none."""
        running = self.store.by_states([S.RUNNING])
        return min(
            (a.result["deferred_until"] for a in running if "deferred_until" in a.result), default=None
        )
