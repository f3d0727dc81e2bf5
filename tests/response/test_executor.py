"""The executor on the real local platform, the real audit log and the real remediators.

What is proved: an action runs end to end with an intent before and a result after every step, in order;
an audit log that cannot record stops the step (the container stays unlocked) and the action resumes
once it can; a dry run changes nothing the platform would report; an approval bound to a plan refuses a
changed plan; rollback restores the recorded state; a resumed action continues at its progress, never
redoing a step, and reconciles by live state when its effect is already there.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel

from tests.response.crash_worker import CONTAINER, NODE, Platform, new_action
from vigil.audit.log import AuditLog, AuditUnavailableError
from vigil.audit.record import ActorKind, AuditKind
from vigil.audit.verify import public_keys, verify
from vigil.platform.events import CollectingObserver
from vigil.platform.storage import Lock
from vigil.remediators.base import Context, NotReversibleError, Plan, Protected, Remediator, Step, remediators
from vigil.response.executor import Executor
from vigil.response.model import Action, ActionState
from vigil.response.store import ActionConflictError, ActionStore

T = TypeVar("T")
S = ActionState
ACTION_KINDS = (AuditKind.ACTION_INTENT, AuditKind.ACTION_RESULT, AuditKind.ROLLBACK)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@dataclass
class Env:
    platform: Platform
    observer: CollectingObserver
    store: ActionStore
    audit: AuditLog
    executor: Executor
    root: Path

    def changes(self) -> list[str]:
        """The platform's successful change events so far, by kind."""
        return [e.kind for e in self.observer.events if e.outcome == "success"]

    def records(self) -> list[tuple[AuditKind, dict[str, Any]]]:
        """The action records of the audit log, in order (kind, details)."""
        return [(r.kind, r.details) for r in self.audit.db.query(limit=10_000) if r.kind in ACTION_KINDS]

    def add(self, action: Action) -> Action:
        stored, created = self.store.create(action)
        assert created
        return stored

    async def container(self) -> tuple[Lock, bool]:
        info = await self.platform.storage.get_container("vigil", CONTAINER)
        return info.lock, info.public_read


@contextlib.asynccontextmanager
async def opened(root: Path, *, protected: Protected | None = None) -> AsyncIterator[Env]:
    observer = CollectingObserver()
    platform = Platform(root / "platform", observer, protected)
    audit = AuditLog(root / "audit.db", platform.vault, checkpoint_every=10_000)
    store = ActionStore(root / "vigil.db")
    await audit.open()
    await platform.add_container()
    await platform.add_node()
    try:
        yield Env(platform, observer, store, audit, Executor(store, platform.ctx, audit), root)
    finally:
        store.close()
        await audit.close()
        platform.close()


async def verified(env: Env) -> None:
    report = verify(env.root / "audit.db", await public_keys(env.platform.vault))
    assert report.ok, report.summary()


def test_lock_storage_end_to_end_with_intent_and_result_in_order(tmp_path: Path) -> None:
    async def main() -> None:
        async with opened(tmp_path) as env:
            before = len(env.changes())
            done = await env.executor.run(env.add(new_action("lock_storage", CONTAINER)))
            assert done.state is S.SUCCEEDED and done.progress == 2 and done.reason == ""
            assert await env.container() == (Lock.READ_ONLY, False)
            assert env.changes()[before:] == ["platform.storage.set_public_read", "platform.storage.set_lock"]
            trail = [(k.value, d.get("step"), d.get("outcome")) for k, d in env.records()]
            assert trail == [
                ("action_intent", 0, None),
                ("action_result", 0, None),
                ("action_intent", 1, None),
                ("action_result", 1, None),
                ("action_result", None, "succeeded"),
            ]
            intent = env.records()[0][1]
            assert intent["action"] == "act-1" and intent["name"] == "disable_public_read"
            assert intent["plan_digest"] == done.plan_digest and intent["rule"] == "r.exfil"
            assert [s["name"] for s in done.result["steps"]] == ["disable_public_read", "set_lock"]
            assert Plan.from_json(done.plan or {}).before["public_read"] is True
            messages = [h["message"] for h in env.store.history("act-1")]
            assert messages == [
                "created",
                "started",
                "planned",
                "1 step(s) done",
                "2 step(s) done",
                "succeeded",
            ]
            again = await env.executor.run(done)  # a finished action is not run again
            assert again == done and len(env.changes()) == before + 2
            await verified(env)

    run(main())


def test_concurrent_runs_of_one_action_mutate_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with opened(tmp_path) as env:
            before = len(env.changes())
            action = env.add(new_action("quarantine_vm", NODE))
            other = Executor(env.store, env.platform.ctx, env.audit)  # a second engine task or instance
            results = await asyncio.gather(
                env.executor.run(action), other.run(action), env.executor.run(action)
            )
            assert env.store.get("act-1").state is S.SUCCEEDED  # type: ignore[union-attr]
            assert results[0].state is S.SUCCEEDED
            assert env.changes()[before:].count("platform.node.quarantine") == 1
            intents = [d for k, d in env.records() if k is AuditKind.ACTION_INTENT]
            assert [d["step"] for d in intents] == [0, 1]  # one run did the steps

    run(main())


def test_audit_failure_stops_the_step_and_the_action_resumes_later(tmp_path: Path) -> None:
    async def main() -> None:
        async with opened(tmp_path) as env:
            before = len(env.changes())
            conn = env.audit.db.connection
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            conn.execute(f"PRAGMA max_page_count = {pages}")
            with contextlib.suppress(AuditUnavailableError):  # fill the last free pages
                for i in range(10_000):
                    await env.audit.append(*_filler(i))
            action = env.add(new_action("lock_storage", CONTAINER))
            with pytest.raises(AuditUnavailableError, match="audit disk full"):
                await env.executor.run(action)
            assert await env.container() == (Lock.NONE, True)  # NOT locked, still public
            assert len(env.changes()) == before
            stuck = env.store.get("act-1")
            assert stuck is not None and stuck.state is S.RUNNING and stuck.progress == 0
            assert (
                env.store.history("act-1")[-1]["message"]
                == "step 0 (disable_public_read) not run: not recorded"
            )
            assert await env.executor.resume() == [env.store.get("act-1")]  # still refused: stays running
            assert env.store.get("act-1").state is S.RUNNING  # type: ignore[union-attr]
            conn.execute(f"PRAGMA max_page_count = {pages * 100}")  # space again
            (done,) = await env.executor.resume()
            assert done.state is S.SUCCEEDED and await env.container() == (Lock.READ_ONLY, False)
            assert len(env.changes()) == before + 2
            await verified(env)

    run(main())


def _filler(i: int) -> tuple[Any, ...]:
    from vigil.audit.record import Actor

    return Actor.system(), AuditKind.FINDING, f"filler/{i}", {"n": i}


def test_dry_run_changes_nothing_on_the_platform(tmp_path: Path) -> None:
    async def main() -> None:
        async with opened(tmp_path) as env:
            events = list(env.observer.events)
            state = (await env.container(), await env.platform.compute.get_node("vigil", NODE))
            a1 = env.add(new_action("lock_storage", CONTAINER, 1, dry_run=True))
            a2 = env.add(new_action("quarantine_vm", NODE, 2, state=S.PENDING_APPROVAL))
            first = await env.executor.run(a1)  # a dry-run action is only dry-run, even through run()
            second = await env.executor.dry_run(a2)
            assert env.observer.events == events  # no platform event at all, mutating or not
            assert (await env.container(), await env.platform.compute.get_node("vigil", NODE)) == state
            for done, steps in ((first, 2), (second, 2)):
                assert done.state is S.DRY_RUN and done.result == {"noop": False, "steps": steps}
                assert done.plan_digest == Plan.from_json(done.plan or {}).digest()
            intents = [d for k, d in env.records() if k is AuditKind.ACTION_INTENT]
            assert [(d["action"], d["dry_run"]) for d in intents] == [("act-1", True), ("act-2", True)]
            assert intents[0]["plan"] == first.plan
            assert await env.executor.dry_run(first) == first  # idempotent
            missing = env.add(new_action("lock_storage", "no-such-container", 3))
            failed = await env.executor.dry_run(missing)
            assert failed.state is S.DRY_RUN and "no container" in failed.reason and failed.plan is None
            await verified(env)

    run(main())


def test_an_approval_binds_to_the_plan_digest(tmp_path: Path) -> None:
    async def main() -> None:
        async with opened(tmp_path) as env:
            remediator = remediators.get("lock_storage")()
            params = remediator.params({})
            shown = remediator.plan(
                CONTAINER, params, await remediator.check(env.platform.ctx, CONTAINER, params)
            )
            bound: dict[str, Any] = {
                "plan": shown.to_json(),
                "plan_digest": shown.digest(),
                "decided_by": "alice",
            }
            env.add(new_action("lock_storage", CONTAINER, 1, approval="required", **bound))
            await env.platform.storage.set_public_read("vigil", CONTAINER, False)  # the target changed
            before = len(env.changes())
            refused = await env.executor.run(env.store.get("act-1"))  # type: ignore[arg-type]
            assert refused.state is S.FAILED and refused.reason == "plan changed since approval"
            assert refused.result["approved_digest"] == shown.digest() != refused.result["current_digest"]
            assert len(env.changes()) == before and await env.container() == (Lock.NONE, False)
            # the same binding for the plan as it is now runs
            fresh = remediator.plan(
                CONTAINER, params, await remediator.check(env.platform.ctx, CONTAINER, params)
            )
            bound = {"plan_digest": fresh.digest(), "decided_by": "alice"}
            ok = await env.executor.run(env.add(new_action("lock_storage", CONTAINER, 2, **bound)))
            assert ok.state is S.SUCCEEDED and ok.plan_digest == fresh.digest()
            result = next(d for k, d in env.records() if k is AuditKind.ACTION_RESULT)
            assert result["outcome"] == "failed" and result["decided_by"] == "alice"

    run(main())


def test_a_target_in_the_desired_state_is_a_noop(tmp_path: Path) -> None:
    async def main() -> None:
        async with opened(tmp_path) as env:
            await env.platform.storage.set_public_read("vigil", CONTAINER, False)
            await env.platform.storage.set_lock("vigil", CONTAINER, Lock.NO_ACCESS)
            before = len(env.changes())
            done = await env.executor.run(env.add(new_action("lock_storage", CONTAINER)))
            assert done.state is S.NOOP and done.plan is not None and done.plan["noop"] is True
            assert len(env.changes()) == before
            assert [(k, d["outcome"]) for k, d in env.records()] == [(AuditKind.ACTION_RESULT, "noop")]

    run(main())


def test_failures_end_failed_with_the_reason_audited(tmp_path: Path) -> None:
    async def main() -> None:
        async with opened(tmp_path, protected=Protected(containers=frozenset({"audit-copy"}))) as env:
            await env.platform.add_container("audit-copy")
            before = len(env.changes())
            cases = {
                1: (new_action("lock_storage", "audit-copy", 1), "protected"),
                2: (new_action("lock_storage", "no-such-container", 2), "no container"),
                3: (new_action("no_such_remediation", CONTAINER, 3), "unknown name"),
                4: (new_action("lock_storage", CONTAINER, 4, params={"lokc": "x"}), "ValidationError"),
            }
            for action, why in cases.values():
                done = await env.executor.run(env.add(action))
                assert done.state is S.FAILED and why in done.reason
            assert len(env.changes()) == before
            outcomes = [(d["action"], d["outcome"]) for _, d in env.records()]
            assert outcomes == [(f"act-{n}", "failed") for n in cases]

    run(main())


def test_rollback_restores_the_recorded_state(tmp_path: Path) -> None:
    async def main() -> None:
        async with opened(tmp_path) as env:
            done = await env.executor.run(env.add(new_action("lock_storage", CONTAINER)))
            assert await env.container() == (Lock.READ_ONLY, False)
            back = await env.executor.rollback(done, "alice")
            assert back.state is S.ROLLED_BACK and await env.container() == (Lock.NONE, True)
            assert back.result["rollback"] == {
                "changed": True,
                "restored": {"lock": "none", "public_read": True},
            }
            rollbacks = [r for r in env.audit.db.query(kind="rollback", limit=10)]
            assert [r.details["stage"] for r in rollbacks] == ["intent", "result"]
            assert {(r.actor.kind, r.actor.id) for r in rollbacks} == {(ActorKind.USER, "alice")}
            with pytest.raises(ActionConflictError, match="rolled_back"):
                await env.executor.rollback(back, "alice")
            pending = env.add(new_action("lock_storage", CONTAINER, 2, state=S.PENDING_APPROVAL))
            with pytest.raises(ActionConflictError, match="pending_approval"):
                await env.executor.rollback(pending, "alice")
            await env.platform.vault.create_key("vigil", "model-key")
            rotated = await env.executor.run(env.add(new_action("rotate_key", "model-key", 3)))
            assert rotated.state is S.SUCCEEDED
            with pytest.raises(NotReversibleError):
                await env.executor.rollback(rotated, "alice")
            await verified(env)

    run(main())


async def _started(env: Env, n: int, *, applied: int, progress: int) -> Action:
    """An action as a crash would leave it: running, planned, ``applied`` steps done on the platform and
    ``progress`` of them recorded (the executor's own first half, done by hand)."""
    action = env.add(new_action("lock_storage", CONTAINER, n))
    remediator = remediators.get("lock_storage")()
    params = remediator.params({})
    plan = remediator.plan(CONTAINER, params, await remediator.check(env.platform.ctx, CONTAINER, params))
    env.store.transition(action.id, {S.APPROVED}, S.RUNNING, actor="vigil", plan=None)
    env.store.transition(
        action.id, {S.RUNNING}, S.RUNNING, actor="vigil", plan=plan.to_json(), plan_digest=plan.digest()
    )
    for i in range(applied):
        await remediator.apply_step(env.platform.ctx, plan, i)
    for i in range(progress):
        env.store.set_progress(action.id, i + 1, {"steps": [{"name": s.name} for s in plan.steps[: i + 1]]})
    return env.store.get(action.id)  # type: ignore[return-value]


@pytest.mark.parametrize(
    ("applied", "progress", "redone"),
    [(1, 1, [1]), (1, 0, [0, 1]), (0, 0, [0, 1]), (2, 1, [])],
    ids=["after-step-0", "step-0-unrecorded", "planned-only", "step-1-unrecorded-reconciled"],
)
def test_resume_continues_at_progress_and_never_mutates_twice(
    tmp_path: Path, applied: int, progress: int, redone: list[int]
) -> None:
    async def main() -> None:
        async with opened(tmp_path) as env:
            setup = len(env.changes())
            await _started(env, 1, applied=applied, progress=progress)
            assert len(env.changes()) == setup + applied
            (done,) = await env.executor.resume()
            assert done.state is S.SUCCEEDED and done.result["reconciled"] is not redone
            assert done.progress == (2 if redone else progress)
            # each mutation once, whether the crashed run or the resumed one made it
            assert env.changes()[setup:] == ["platform.storage.set_public_read", "platform.storage.set_lock"]
            intents = [d["step"] for k, d in env.records() if k is AuditKind.ACTION_INTENT]
            assert intents == redone  # steps before the recorded progress are not run again
            await verified(env)

    run(main())


def test_resume_reconciles_when_every_step_already_took_effect(tmp_path: Path) -> None:
    async def main() -> None:
        async with opened(tmp_path) as env:
            await _started(env, 1, applied=2, progress=0)  # both applied, neither recorded (a crash)
            before = len(env.changes())
            (done,) = await env.executor.resume()
            assert done.state is S.SUCCEEDED and done.result["reconciled"] is True
            assert len(env.changes()) == before and env.records()[-1][1]["outcome"] == "succeeded"
            assert not [k for k, _ in env.records() if k is AuditKind.ACTION_INTENT]
            assert any("already in the desired state" in h["message"] for h in env.store.history("act-1"))

    run(main())


def test_a_rollback_that_fails_is_rollback_failed_and_audited(tmp_path: Path) -> None:
    async def main() -> None:
        async with opened(tmp_path) as env:
            done = await env.executor.run(env.add(new_action("lock_storage", CONTAINER)))
            p = env.platform
            powerless = Context(p.vault, p.storage, p.compute, "intern")  # not a storage admin any more
            failed = await Executor(env.store, powerless, env.audit).rollback(done, "alice")
            assert failed.state is S.ROLLBACK_FAILED and "ForbiddenError" in failed.reason
            assert await env.container() == (Lock.READ_ONLY, False)  # still locked
            stages = [
                (r.details["stage"], r.details.get("outcome")) for r in env.audit.db.query(kind="rollback")
            ]
            assert stages == [("intent", None), ("result", "rollback_failed")]
            # the cause fixed (the executor acts as an admin again), the rollback is tried again and ends
            again = await env.executor.rollback(failed, "alice")
            assert again.state is S.ROLLED_BACK and await env.container() == (Lock.NONE, True)  # as before
            stages = [
                (r.details["stage"], r.details.get("outcome")) for r in env.audit.db.query(kind="rollback")
            ]
            assert stages[2:] == [("intent", None), ("result", "rolled_back")]
            with pytest.raises(ActionConflictError):  # (and a rolled-back action is done)
                await env.executor.rollback(again, "alice")

    run(main())


def test_a_deferred_step_keeps_the_action_running_until_it_is_due(tmp_path: Path) -> None:
    """rotate_key with a grace period: the old version is disabled only once the grace has passed."""

    async def main() -> None:
        async with opened(tmp_path) as env:
            await env.platform.vault.create_key("vigil", "model-key")
            action = env.add(new_action("rotate_key", "model-key", params={"grace_seconds": 0.5}))
            waiting = await env.executor.run(action)
            steps = [step["name"] for step in (waiting.plan or {})["steps"]]
            assert steps[-1] == "disable_previous" and steps[0] == "rotate"
            assert waiting.state is S.RUNNING and waiting.progress == len(steps) - 1  # all but the disable
            due = waiting.result["deferred_until"]
            assert env.executor.next_due() == due and due > time.time()
            assert await env.executor.run(waiting) == waiting  # not due: unchanged, nothing run
            rotations = env.changes().count("platform.key.rotate")
            await asyncio.sleep(max(0.0, due - time.time()) + 0.05)
            (done,) = await env.executor.resume()
            assert done.state is S.SUCCEEDED and done.progress == len(steps)
            assert "deferred_until" not in done.result
            assert env.changes().count("platform.key.rotate") == rotations == 1
            assert env.executor.next_due() is None
            info = await env.platform.vault.get_key("vigil", "model-key")
            assert [v.enabled for v in info.versions] == [False, True]
            await verified(env)

    run(main())


# -- deadlines (reliability A9) ---------------------------------------------------------------------------


@remediators.register("test_stuck")
class Stuck(Remediator):
    """A remediator plug-in that hangs where its target says (``check`` or ``step``), as one blocked on a
    dead socket would; otherwise a one-step, reversible no-op."""

    name = "test_stuck"
    summary = "hangs for the deadline tests"
    target_kind = "node"
    reversible = True

    async def fleet(self, ctx: Context) -> list[str]:
        return ["step", "check"]

    async def check(self, ctx: Context, target: str, params: BaseModel) -> dict[str, Any]:
        if target == "check":
            await asyncio.Event().wait()
        return {"state": "open"}

    def plan(self, target: str, params: BaseModel, state: dict[str, Any]) -> Plan:
        return Plan(self.name, target, {}, (Step("close", "close it"),), before=state)

    async def apply_step(self, ctx: Context, plan: Plan, index: int) -> dict[str, Any]:
        if plan.target == "step":
            await asyncio.Event().wait()
        return {}

    async def verify(self, ctx: Context, plan: Plan) -> str | None:
        return None

    async def rollback(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        return {"restored": plan.before}


def test_a_stuck_step_or_check_is_cancelled_and_the_action_ends_timed_out(tmp_path: Path) -> None:
    """A remediator that never answers holds nothing: the step is cancelled at the deadline, the action
    ends ``timed_out`` (audited, never retried, since the step's effect is unknown), the next action runs,
    and a timed-out action can still be rolled back."""

    async def main() -> None:
        async with opened(tmp_path) as env:
            executor = Executor(env.store, env.platform.ctx, env.audit, step_timeout=0.2)
            started = time.monotonic()
            stuck = await executor.run(env.add(new_action("test_stuck", "step", 1)))
            assert time.monotonic() - started < 5
            assert stuck.state is S.TIMED_OUT and stuck.progress == 0
            assert (
                stuck.reason == "step 0 (close): StepTimeoutError: step 0 (close) did not finish within 0.2 s"
            )
            checking = await executor.run(env.add(new_action("test_stuck", "check", 2)))
            assert checking.state is S.TIMED_OUT and checking.reason.endswith(
                "check did not finish within 0.2 s"
            )
            fine = await executor.run(env.add(new_action("lock_storage", CONTAINER, 3)))
            assert fine.state is S.SUCCEEDED
            assert (await executor.run(stuck)).state is S.TIMED_OUT  # final: not run again
            outcomes = [d.get("outcome") for k, d in env.records() if k is AuditKind.ACTION_RESULT]
            assert outcomes.count("timed_out") == 2
            rolled = await executor.rollback(stuck, "alice")
            assert rolled.state is S.ROLLED_BACK and rolled.result["rollback"] == {
                "restored": {"state": "open"}
            }
            await verified(env)

    run(main())
