"""The response engine on the real local platform, a real audit log, action store and executor.

The platform's :class:`CollectingObserver` sees every change the providers make, which is how these tests
prove "runs once", "zero mutations" and "none touched"; the audit log is read back to prove that decisions
and refusals were recorded. The engine's clock is a fake one, so expiry, rate limits and the breaker's
cool-down are driven by the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.response.test_executor import Stuck
from vigil.audit.log import AuditLog, AuditUnavailableError
from vigil.audit.record import ActorKind, AuditKind
from vigil.platform.compute import NodeState
from vigil.platform.events import CollectingObserver
from vigil.platform.local.compute import LocalCompute
from vigil.platform.local.keyvault import LocalKeyVault
from vigil.platform.local.masterkey import MasterKey
from vigil.platform.local.storage import LocalStorage
from vigil.remediators.base import Context
from vigil.response.engine import ActionForbiddenError, PlanChangedError, ResponseEngine
from vigil.response.executor import Executor
from vigil.response.killswitch import KillSwitchForbiddenError
from vigil.response.model import Action, ActionState
from vigil.response.policy import Proposal
from vigil.response.store import ActionConflictError, ActionStore
from vigil.rules.model import RemediateAction
from vigil.rules.schema import REMEDIATIONS
from vigil.sections import ResponseSettings

T = TypeVar("T")
S = ActionState
M1 = "3c9e7a15f2d84b60a9c1e3f5b7d9021468ace0f2b4d6089a1c3e5f7b9d0f2a4c6e8a0c2e4f6b8d0a2c4e6f8a0b2c4d6e"
T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
QUARANTINE = RemediateAction("quarantine_vm", "{{ node.id }}", approval="auto")
BY_HAND = RemediateAction("quarantine_vm", "{{ node.id }}", approval="required")


class Clock:
    def __init__(self) -> None:
        self.now = T0 + 10.0

    def __call__(self) -> float:
        return self.now


class Env:
    """The local platform, the audit log, the action store, the executor and the engine, in one folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.observer = CollectingObserver()
        self.vault = LocalKeyVault(
            root / "vault.db", MasterKey.from_file(root / "master.key"), observer=self.observer
        )
        self.storage = LocalStorage(root / "storage", self.vault, observer=self.observer, chunk_size=1 << 16)
        self.compute = LocalCompute(root / "compute.db", self.vault, self.storage, observer=self.observer)
        self.ctx = Context(self.vault, self.storage, self.compute, "vigil")
        self.audit = AuditLog(root / "audit.db", self.vault)
        self.store = ActionStore(root / "vigil.db")
        self.clock = Clock()
        #: the engine's monotonic clock; None: the wall clock ``clock`` (most tests need one time only)
        self.monotonic: Clock | None = None
        self.alerts: list[tuple[str, str, dict[str, Any]]] = []
        self.engine: ResponseEngine | None = None
        self.baseline = 0

    async def start(self, nodes: int = 3, step_timeout: float = 900.0, **settings: Any) -> ResponseEngine:
        await self.audit.open()
        for i in range(nodes):
            await self.compute.register("vigil", f"n{i}", node_principal=f"node-n{i}", measurement=M1)
        executor = Executor(self.store, self.ctx, self.audit, step_timeout=step_timeout)
        config = ResponseSettings(**({"approvers": ["carol", "alice"]} | settings))
        self.engine = ResponseEngine(
            self.store,
            executor,
            self.ctx,
            self.audit,
            config,
            alert=self._alert,
            clock=self.clock,
            monotonic=self.monotonic or self.clock,
        )
        self.baseline = len(self.observer.events)
        return self.engine

    async def _alert(self, kind: str, message: str, details: dict[str, Any]) -> None:
        self.alerts.append((kind, message, details))

    def changes(self, kind: str = "platform.") -> list[str]:
        """The platform changes since :meth:`start` whose kind starts with ``kind``."""
        return [e.kind for e in self.observer.events[self.baseline :] if e.kind.startswith(kind)]

    def alerted(self, kind: str) -> list[str]:
        return [message for k, message, _ in self.alerts if k == kind]

    def audited(self, kind: AuditKind) -> list[dict[str, Any]]:
        return [{"actor": r.actor, "subject": r.subject, **r.details} for r in self.audit.db.query(kind=kind)]

    async def node_state(self, node: str) -> NodeState:
        return (await self.compute.get_node("vigil", node)).state

    async def close(self) -> None:
        await self.audit.close()
        self.store.close()
        self.compute.close()
        self.storage.close()
        self.vault.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    asyncio.run(e.close())


def run(fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(fn())


def prop(
    target: str,
    action: RemediateAction = QUARANTINE,
    *,
    rule: str = "r.quarantine",
    status: str = "stable",
    finding: str = "f1",
    at: float = T0 + 5.0,
) -> Proposal:
    return Proposal(rule, status, "alice", action, finding, "inc-1", target, at)


def test_auto_action_of_a_stable_rule_runs_once_when_submitted_three_times(env: Env) -> None:
    async def main() -> list[Action]:
        engine = await env.start()
        first = await engine.submit([prop("n1")])
        again = await engine.submit([prop("n1", finding="f2", at=T0 + 30.0)])  # same window, same target
        batch = await engine.submit([prop("n1"), prop("n1", finding="f3")])
        return first + again + batch

    actions = run(main)
    assert len({a.id for a in actions}) == 1
    assert {a.state for a in actions} == {S.SUCCEEDED}
    assert env.changes("platform.node.") == ["platform.node.quarantine"]
    assert len(env.store.list()) == 1
    decisions = [r for r in env.audited(AuditKind.ACTION_INTENT) if r.get("stage") == "decision"]
    assert len(decisions) == 1 and decisions[0]["outcome"] == "run"
    assert decisions[0]["actor"].kind is ActorKind.RULE and decisions[0]["actor"].id == "r.quarantine"


def test_next_idempotency_window_is_a_new_action(env: Env) -> None:
    async def main() -> tuple[Action, Action]:
        engine = await env.start()
        (one,) = await engine.submit([prop("n1")])
        await env.compute.release("vigil", "n1", reason="test")
        (two,) = await engine.submit([prop("n1", finding="f9", at=T0 + 3600.0)])
        return one, two

    one, two = run(main)
    assert one.id != two.id and one.state is two.state is S.SUCCEEDED
    assert env.changes("platform.node.quarantine") == ["platform.node.quarantine"] * 2


def test_approval_flow_author_and_non_approver_refused_approver_runs_once(env: Env) -> None:
    async def main() -> None:
        engine = await env.start()
        (pending,) = await engine.submit([prop("n1", status="test")])  # auto, but not stable
        assert pending.state is S.PENDING_APPROVAL and pending.expires == env.clock.now + 3600
        assert "rule status is test" in pending.reason
        assert env.changes() == [] and len(env.alerted("approval")) == 1
        assert "until 2026-01-01T01:00:10+00:00" in env.alerted("approval")[0]
        with pytest.raises(ActionForbiddenError, match=r"author of rule r\.quarantine"):
            await engine.approve(pending.id, "alice")
        with pytest.raises(ActionForbiddenError, match="does not hold the approver role"):
            await engine.approve(pending.id, "mallory")
        assert env.store.get(pending.id).state is S.PENDING_APPROVAL  # type: ignore[union-attr]
        done = await engine.approve(pending.id, "carol")
        assert done.state is S.SUCCEEDED and done.decided_by == "carol"
        with pytest.raises(ActionConflictError):
            await engine.approve(pending.id, "carol")
        assert await env.node_state("n1") is NodeState.QUARANTINED

    run(main)
    assert env.changes("platform.node.") == ["platform.node.quarantine"]
    approvals = env.audited(AuditKind.APPROVAL)
    assert [(r["stage"], r["actor"].id) for r in approvals] == [
        ("decision", "r.quarantine"),
        ("refused", "alice"),
        ("refused", "mallory"),
        ("decision", "carol"),
    ]
    assert approvals[-1]["outcome"] == "approved" and len(approvals[-1]["plan_digest"]) == 64


def test_plan_changed_after_approval_is_refused(env: Env) -> None:
    async def main() -> Action:
        engine = await env.start(rate_limit=1)
        (pending,) = await engine.submit([prop("n1", BY_HAND)])
        assert engine.limiter.acquire("quarantine_vm")  # the minute's only run goes elsewhere
        held = await engine.approve(pending.id, "carol")
        assert held.state is S.APPROVED and held.plan_digest is not None
        await env.compute.set_state("vigil", "n1", NodeState.ATTESTED)  # live state moves on
        env.clock.now += 60
        await engine.tick()
        return env.store.get(pending.id)  # type: ignore[return-value]

    action = run(main)
    assert action.state is S.FAILED and action.reason == "plan changed since approval"
    assert env.changes("platform.node.quarantine") == []
    assert len(env.alerted("failure")) == 1


def test_approval_naming_another_plan_digest_is_refused(env: Env) -> None:
    async def main() -> None:
        engine = await env.start()
        (pending,) = await engine.submit([prop("n1", BY_HAND)])
        with pytest.raises(PlanChangedError, match="approve again"):
            await engine.approve(pending.id, "carol", plan_digest="0" * 64)
        assert env.store.get(pending.id).state is S.PENDING_APPROVAL  # type: ignore[union-attr]

    run(main)
    assert env.changes() == []


def test_preview_is_the_plan_approval_binds_to_and_follows_the_live_target(env: Env) -> None:
    async def main() -> None:
        engine = await env.start()
        (pending,) = await engine.submit([prop("n1", BY_HAND)])
        first = await engine.preview(pending.id)
        assert first["plan"]["steps"] and len(first["plan_digest"]) == 64
        assert await engine.preview(pending.id) == first  # read-only: asking again changes nothing
        await env.compute.set_state("vigil", "n1", NodeState.ATTESTED)  # the live target moves on
        second = await engine.preview(pending.id)
        assert second["plan_digest"] != first["plan_digest"]
        with pytest.raises(PlanChangedError):
            await engine.approve(pending.id, "carol", plan_digest=first["plan_digest"])
        done = await engine.approve(pending.id, "carol", plan_digest=second["plan_digest"])
        assert done.plan_digest == second["plan_digest"]
        (gone,) = await engine.submit([prop("ghost", BY_HAND, finding="f2")])
        assert "error" in await engine.preview(gone.id)  # a target that cannot be planned: why, not a 500

    run(main)
    assert env.changes("platform.node.quarantine") == ["platform.node.quarantine"]


@pytest.mark.parametrize("globally", [True, False])
def test_dry_run_plans_alerts_and_changes_nothing(env: Env, globally: bool) -> None:
    action = RemediateAction("quarantine_vm", "{{ node.id }}", approval="auto", dry_run=not globally)

    async def main() -> list[Action]:
        engine = await env.start(dry_run=globally)
        return await engine.submit([prop("n0", action), prop("n1", action)])

    actions = run(main)
    assert [a.state for a in actions] == [S.DRY_RUN, S.DRY_RUN]
    assert all(a.plan is not None and len(a.plan["steps"]) == 2 for a in actions)
    assert env.changes() == []
    assert len(env.alerted("dry_run")) == 2
    dry = [r for r in env.audited(AuditKind.ACTION_INTENT) if r.get("dry_run")]
    assert len(dry) == 2


def test_protected_target_is_refused(env: Env) -> None:
    async def main() -> list[Action]:
        engine = await env.start(protected_nodes=["n1"])
        return await engine.submit([prop("n1"), prop("n2")])

    refused, ran = run(main)
    assert refused.state is S.REFUSED and refused.reason.startswith("protected: node n1")
    assert ran.state is S.SUCCEEDED
    assert env.changes("platform.node.") == ["platform.node.quarantine"]
    # reliability C13: the refusal is audited and alerted (an attempt on Vigil's own resources)
    [page] = env.alerted("protected")
    assert refused.id in page and "protected: node n1" in page
    decisions = [
        r.details for r in env.audit.db.query(kind="action_intent") if r.details["action"] == refused.id
    ]
    assert [(d["outcome"], d["reason"][:18]) for d in decisions] == [("refused", "protected: node n1")]


def test_audit_log_keys_are_always_protected(env: Env) -> None:
    action = RemediateAction("rotate_key", "{{ resource.id }}", approval="auto")

    async def main() -> Action:
        engine = await env.start(nodes=0)
        (a,) = await engine.submit([prop("vigil-audit-signing", action)])
        return a

    action_ = run(main)
    assert action_.state is S.REFUSED and "protected" in action_.reason
    assert env.changes() == []


def test_audit_failure_creates_nothing(env: Env) -> None:
    async def main() -> None:
        engine = await env.start()
        await env.audit.close()  # every append now fails
        with pytest.raises(AuditUnavailableError):
            await engine.submit([prop("n1")])
        await env.audit.open()

    run(main)
    assert env.store.list() == []
    assert env.changes() == []


def test_blast_radius_touches_none_and_alerts_once(env: Env) -> None:
    capped = RemediateAction("quarantine_vm", "{{ node.id }}", approval="auto", max_targets=5)

    async def main() -> list[Action]:
        engine = await env.start(nodes=40)
        batch = [prop(f"n{i}", capped, finding=f"f{i}") for i in range(40)]
        first = await engine.submit(batch)
        await engine.submit(batch)  # re-delivered: duplicates, no second alert
        return first

    actions = run(main)
    assert len(actions) == 40 and {a.state for a in actions} == {S.REFUSED}
    assert {a.reason for a in actions} == {"blast radius: 40 targets > max_targets 5"}
    assert env.changes() == []
    assert len(env.alerted("blast_radius")) == 1


@pytest.mark.parametrize("name", sorted(REMEDIATIONS))
@pytest.mark.parametrize("cap", ["rule", "default"])
def test_every_remediator_passes_through_the_blast_radius_guard(env: Env, name: str, cap: str) -> None:
    """Reliability C8, the meta-test: the cap is the engine's, enforced before any remediator runs, so no
    remediation the rule language accepts can bypass it (Custodian's Azure and cache bypasses were
    remediators with their own paths). Each one, over 40 targets: with the rule's ``max_targets`` 5, and
    with no cap of its own under ``response.max_targets`` 5 (B5). All refused, nothing changed, one page."""
    if cap == "rule":
        action = RemediateAction(name, "{{ resource.id }}", approval="auto", max_targets=5)
        reason = "blast radius: 40 targets > max_targets 5"
    else:
        action = RemediateAction(name, "{{ resource.id }}", approval="auto")
        reason = "blast radius: 40 targets > response.max_targets 5 (the rule sets no cap of its own)"

    async def main() -> list[Action]:
        engine = await env.start(nodes=3, max_targets=5)
        return await engine.submit([prop(f"target-{i}", action, finding=f"f{i}") for i in range(40)])

    actions = run(main)
    assert len(actions) == 40 and {a.state for a in actions} == {S.REFUSED}
    assert {a.reason for a in actions} == {reason}
    assert env.changes() == [] and len(env.alerted("blast_radius")) == 1


def test_blast_radius_percent_of_the_fleet(env: Env) -> None:
    capped = RemediateAction("quarantine_vm", "{{ node.id }}", approval="auto", max_percent=50)

    async def main() -> tuple[list[Action], list[Action]]:
        engine = await env.start(nodes=4)
        ok = await engine.submit([prop("n0", capped), prop("n1", capped)])  # 2 of 4: 50 %
        over = await engine.submit([prop("n2", capped, finding="f2")])  # with the recent two: 75 %
        return ok, over

    ok, over = run(main)
    assert [a.state for a in ok] == [S.SUCCEEDED, S.SUCCEEDED]
    assert over[0].state is S.REFUSED and "3 of 4 nodes (75.0%) > max_percent 50" in over[0].reason


def test_rate_limit_holds_then_tick_runs(env: Env) -> None:
    async def main() -> tuple[list[Action], Action]:
        engine = await env.start(rate_limit=1)
        first = await engine.submit([prop("n0"), prop("n1")])
        await engine.tick()  # still within the minute: held
        assert env.store.get(first[1].id).state is S.APPROVED  # type: ignore[union-attr]
        env.clock.now += 60
        await engine.tick()
        return first, env.store.get(first[1].id)  # type: ignore[return-value]

    first, later = run(main)
    assert [a.state for a in first] == [S.SUCCEEDED, S.APPROVED]
    assert later.state is S.SUCCEEDED
    assert any(h["message"].startswith("held: rate limit") for h in env.store.history(later.id))


def test_breaker_opens_after_failures_and_refuses(env: Env) -> None:
    async def main() -> list[Action]:
        engine = await env.start(breaker_failures=1, breaker_cooldown="5m")
        failed = await engine.submit([prop("ghost")])  # no such node: the remediation fails
        refused = await engine.submit([prop("n1")])
        env.clock.now += 300
        trial = await engine.submit([prop("n2")])  # half-open: one trial, it succeeds and closes
        return failed + refused + trial

    failed, refused, trial = run(main)
    assert failed.state is S.FAILED and "no node" in failed.reason
    assert refused.state is S.REFUSED and refused.reason == "circuit breaker open"
    assert trial.state is S.SUCCEEDED
    assert len(env.alerted("failure")) == 2


def test_breaker_cooldown_runs_on_the_monotonic_clock_whatever_the_wall_clock_does(env: Env) -> None:
    """Reliability I2: the wall clock stepping back five minutes during the cool-down (NTP, ``date -s``)
    neither stretches the cool-down nor, stepping forward, cuts it short; the wall clock still stamps
    what is stored."""
    env.monotonic = Clock()

    async def main() -> list[Action]:
        engine = await env.start(breaker_failures=1, breaker_cooldown="5m")
        failed = await engine.submit([prop("ghost")])
        env.clock.now += 3600  # the wall clock jumps an hour ahead: the breaker stays open
        early = await engine.submit([prop("n0")])
        env.clock.now -= 3600 + 300  # ... then five minutes behind where it was
        assert env.monotonic is not None
        env.monotonic.now += 300  # five real minutes pass
        trial = await engine.submit([prop("n1")])
        return failed + early + trial

    failed, early, trial = run(main)
    assert failed.state is S.FAILED
    assert early.state is S.REFUSED and early.reason == "circuit breaker open"
    assert trial.state is S.SUCCEEDED
    assert trial.created == env.clock.now  # stored times are wall times


def test_a_timed_out_action_is_alerted_and_counted_by_the_breaker(env: Env) -> None:
    """Reliability A9 at the engine: a remediator stuck past the deadline ends its action timed_out, pages
    like a failure, and opens the breaker like one, so the next action of that remediator is refused."""
    stuck = RemediateAction(Stuck.name, "{{ node.id }}", "auto")

    async def main() -> list[Action]:
        await env.start(step_timeout=0.1, breaker_failures=1)
        assert env.engine is not None
        first = await env.engine.submit([prop("step", stuck)])
        second = await env.engine.submit([prop("n1", stuck, finding="f2")])
        return first + second

    timed_out, refused = run(main)
    assert timed_out.state is S.TIMED_OUT
    assert refused.state is S.REFUSED and refused.reason == "circuit breaker open"
    page, breaker = env.alerted("failure")
    assert "timed_out" in page and "did not finish within 0.1 s" in page
    assert "circuit breaker open" in breaker


def test_the_kill_switch_is_audited_kept_across_restarts_and_cannot_undo_the_configured_one(env: Env) -> None:
    async def main() -> tuple[list[Action], bool, bool]:
        engine = await env.start()
        with pytest.raises(KillSwitchForbiddenError):
            await engine.kill.set(True, "mallory", "no")
        await engine.kill.set(True, "carol", "IR-7")
        stopped = await engine.submit([prop("n1")])
        restarted = ResponseEngine(env.store, engine.executor, env.ctx, env.audit, engine.settings)
        kept = restarted.kill.on
        configured = ResponseEngine(
            env.store,
            engine.executor,
            env.ctx,
            env.audit,
            engine.settings.model_copy(update={"dry_run": True}),
        )
        await configured.kill.set(False, "carol", "done")
        return stopped, kept, configured.kill.on

    [stopped], kept, still_on = run(main)
    assert stopped.state is S.DRY_RUN and env.changes("platform.node.") == []
    assert kept is True and still_on is True
    changes = [r.details for r in env.audit.db.query(kind="config_change")]
    assert [(d["on"], d["reason"]) for d in changes] == [(True, "IR-7"), (False, "done")]
    assert "remediation stays stopped" in changes[1]["note"]


def test_expired_approval_cannot_be_approved(env: Env) -> None:
    async def main() -> Action:
        engine = await env.start(approval_ttl="10m")
        (pending,) = await engine.submit([prop("n1", BY_HAND)])
        env.clock.now += 600
        await engine.tick()
        with pytest.raises(ActionConflictError, match="expired"):
            await engine.approve(pending.id, "carol")
        return env.store.get(pending.id)  # type: ignore[return-value]

    assert run(main).state is S.EXPIRED
    assert env.changes() == []


def test_reject_and_rollback_by_approvers_only(env: Env) -> None:
    async def main() -> tuple[Action, Action]:
        engine = await env.start()
        pending, done = await engine.submit([prop("n0", BY_HAND), prop("n1")])
        with pytest.raises(ActionForbiddenError):
            await engine.reject(pending.id, "mallory", "no")
        rejected = await engine.reject(pending.id, "carol", "false positive")
        with pytest.raises(ActionConflictError):
            await engine.reject(pending.id, "carol", "twice")
        with pytest.raises(ActionForbiddenError):
            await engine.rollback(done.id, "mallory")
        rolled = await engine.rollback(done.id, "alice")  # the author may undo
        assert await env.node_state("n1") is NodeState.PENDING
        return rejected, rolled

    rejected, rolled = run(main)
    assert rejected.state is S.REJECTED and rejected.reason == "false positive"
    assert rolled.state is S.ROLLED_BACK
    refusals = [r for r in env.audited(AuditKind.APPROVAL) if r["stage"] == "refused"]
    assert [(r["what"], r["actor"].id) for r in refusals] == [("reject", "mallory"), ("roll back", "mallory")]
    assert env.changes("platform.node.") == ["platform.node.quarantine", "platform.node.release"]


def test_two_rules_on_one_target_never_run_at_once(env: Env) -> None:
    async def main() -> list[Action]:
        engine = await env.start()
        a, b = await engine.submit([prop("n1", BY_HAND), prop("n1", BY_HAND, rule="r.other")])
        return list(await asyncio.gather(engine.approve(a.id, "carol"), engine.approve(b.id, "carol")))

    states = sorted(a.state.value for a in run(main))
    assert states == ["noop", "succeeded"]  # the second checked after the first had quarantined
    assert env.changes("platform.node.") == ["platform.node.quarantine"]


def test_unknown_remediation_and_bad_params_are_refused(env: Env) -> None:
    unknown = RemediateAction("reboot_everything", "{{ node.id }}", approval="auto")
    bad = RemediateAction("quarantine_vm", "{{ node.id }}", approval="auto", params={"reasn": "typo"})

    async def main() -> list[Action]:
        engine = await env.start()
        return await engine.submit([prop("n1", unknown), prop("n1", bad)])

    first, second = run(main)
    assert first.state is S.REFUSED and "unknown remediation 'reboot_everything'" in first.reason
    assert second.state is S.REFUSED and second.reason == "invalid params for quarantine_vm: reasn"
    assert env.changes() == []


def test_resume_starts_approved_actions(env: Env) -> None:
    async def main() -> list[Action]:
        engine = await env.start(rate_limit=1)
        await engine.submit([prop("n0"), prop("n1")])
        env.clock.now += 60
        return await engine.resume()

    (resumed,) = run(main)
    assert resumed.target == "n1" and resumed.state is S.SUCCEEDED
