"""The decision policy: each rule on its own, their precedence, blast radius, rate limiter and breaker."""

from __future__ import annotations

import pytest

from vigil.remediators.base import Protected
from vigil.response.policy import (
    BreakerState,
    CircuitBreaker,
    Decision,
    Proposal,
    RateLimiter,
    blast_radius,
    decide_batch,
)
from vigil.rules.model import RemediateAction
from vigil.sections import ResponseSettings

AUTO = RemediateAction("quarantine_vm", "{{ node.id }}", approval="auto")
LIVE = ResponseSettings()
DRY = ResponseSettings(dry_run=True)
NONE = Protected()


def prop(
    target: str, action: RemediateAction = AUTO, *, status: str = "stable", problem: str = ""
) -> Proposal:
    return Proposal("r.quarantine", status, "alice", action, f"f-{target}", "inc-1", target, 1.0e9, problem)


def decide(
    proposals: list[Proposal],
    *,
    fleet: int = 100,
    recent: set[str] | None = None,
    settings: ResponseSettings = LIVE,
    protected: Protected = NONE,
) -> list[Decision]:
    return decide_batch(
        proposals,
        fleet_size=fleet,
        recent_targets=recent or set(),
        settings=settings,
        protected=protected,
        target_kind="node",
    )


def outcomes(decisions: list[Decision]) -> list[str]:
    return [d.outcome for d in decisions]


def test_stable_rule_with_auto_approval_runs() -> None:
    (d,) = decide([prop("n1")])
    assert d.outcome == "run" and d.reason == ""


@pytest.mark.parametrize("status", ["experimental", "test"])
def test_only_stable_rules_act_unattended(status: str) -> None:
    (d,) = decide([prop("n1", status=status)])
    assert d.outcome == "approval"
    assert f"rule status is {status}" in d.reason


def test_approval_required_waits_even_for_a_stable_rule() -> None:
    action = RemediateAction("quarantine_vm", "{{ node.id }}", approval="required")
    (d,) = decide([prop("n1", action)])
    assert (d.outcome, d.reason) == ("approval", "approval required by the rule")


def test_protected_target_is_refused_and_others_are_not() -> None:
    guard = Protected(nodes=frozenset({"vigil-host"}), keys=frozenset({"n2"}))
    first, second = decide([prop("vigil-host"), prop("n2")], protected=guard)
    assert first.outcome == "refused" and first.reason.startswith("protected: node vigil-host")
    assert second.outcome == "run"  # a *key* named n2 is protected, not a node


def test_protection_wins_over_dry_run_and_over_blast_radius() -> None:
    guard = Protected(nodes=frozenset({"vigil-host"}))
    capped = RemediateAction("quarantine_vm", "{{ node.id }}", approval="auto", max_targets=1)
    (d,) = decide([prop("vigil-host")], settings=DRY, protected=guard)
    assert d.outcome == "refused" and d.reason.startswith("protected:")
    ds = decide([prop("vigil-host", capped), prop("n1", capped)], protected=guard)
    assert [d.reason.split(":")[0] for d in ds] == ["protected", "blast radius"]  # it still counts


def test_pre_refused_proposal_keeps_its_reason_and_does_not_count() -> None:
    capped = RemediateAction("quarantine_vm", "{{ node.id }}", approval="auto", max_targets=1)
    bad = prop("{{ node.id }}", capped, problem="target template {{ node.id }} did not resolve")
    first, second = decide([bad, prop("n1", capped)], settings=LIVE)
    assert (first.outcome, first.reason) == ("refused", "target template {{ node.id }} did not resolve")
    assert second.outcome == "run"


@pytest.mark.parametrize("settings, per_action", [(DRY, False), (LIVE, True)])
def test_dry_run_global_or_per_action(settings: ResponseSettings, per_action: bool) -> None:
    action = RemediateAction("quarantine_vm", "{{ node.id }}", approval="auto", dry_run=per_action)
    (d,) = decide([prop("n1", action)], settings=settings)
    assert d.outcome == "dry_run"
    assert d.reason == ("dry-run (rule)" if per_action else "dry-run (global)")


def test_dry_run_comes_before_caps_and_maturity_but_says_what_would_stop_a_real_run() -> None:
    capped = RemediateAction("quarantine_vm", "{{ node.id }}", approval="auto", max_targets=1)
    ds = decide([prop("n1", capped), prop("n2", capped)], settings=DRY)
    assert outcomes(ds) == ["dry_run", "dry_run"]
    assert "a real run would be refused: blast radius: 2 targets > max_targets 1" in ds[0].reason
    (d,) = decide([prop("n1", status="test")], settings=DRY)
    assert (
        d.outcome == "dry_run" and "a real run would wait: approval required: rule status is test" in d.reason
    )


def test_blast_radius_forty_targets_over_max_targets_five_refuses_all_with_one_reason() -> None:
    capped = RemediateAction("quarantine_vm", "{{ node.id }}", approval="auto", max_targets=5)
    ds = decide([prop(f"n{i}", capped) for i in range(40)])
    assert outcomes(ds) == ["refused"] * 40
    assert {d.reason for d in ds} == {"blast radius: 40 targets > max_targets 5"}


def test_blast_radius_at_the_cap_runs() -> None:
    capped = RemediateAction("quarantine_vm", "{{ node.id }}", approval="auto", max_targets=5)
    assert outcomes(decide([prop(f"n{i}", capped) for i in range(5)])) == ["run"] * 5


def test_blast_radius_counts_distinct_targets_and_recent_ones() -> None:
    capped = RemediateAction("quarantine_vm", "{{ node.id }}", approval="auto", max_targets=3)
    same = [prop("n1", capped), prop("n1", capped), prop("n2", capped)]
    assert outcomes(decide(same)) == ["run"] * 3  # two distinct targets
    ds = decide(same, recent={"n7", "n8"})  # one batch at a time cannot sneak past the cap
    assert {d.reason for d in ds} == {"blast radius: 4 targets > max_targets 3"}
    assert outcomes(decide(same, recent={"n1", "n2"})) == ["run"] * 3  # the same targets again


def test_blast_radius_percent_of_the_fleet() -> None:
    capped = RemediateAction("quarantine_vm", "{{ node.id }}", approval="auto", max_percent=10)
    assert outcomes(decide([prop(f"n{i}", capped) for i in range(2)], fleet=20)) == ["run"] * 2  # 10 %
    ds = decide([prop(f"n{i}", capped) for i in range(3)], fleet=20)
    assert {d.reason for d in ds} == {"blast radius: 3 of 20 nodes (15.0%) > max_percent 10"}
    (d,) = decide([prop("n1", capped)], fleet=0)
    assert d.outcome == "refused" and "max_percent cannot hold" in d.reason


def test_blast_radius_comes_before_maturity() -> None:
    capped = RemediateAction("quarantine_vm", "{{ node.id }}", approval="required", max_targets=1)
    ds = decide([prop("n1", capped), prop("n2", capped)])
    assert outcomes(ds) == ["refused", "refused"]  # no approval request for a batch that is too wide


def test_blast_radius_helper_without_caps() -> None:
    assert blast_radius({f"n{i}" for i in range(1000)}, AUTO, 1000, "node") is None


def test_a_rule_that_sets_no_cap_gets_the_default_one() -> None:
    """Reliability B5: a match-everything rule whose author left the caps out does not reach the fleet:
    response.max_targets (10) applies; the rule's own cap, count or percent, replaces it."""
    ds = decide([prop(f"n{i}") for i in range(40)])
    assert outcomes(ds) == ["refused"] * 40
    assert {d.reason for d in ds} == {
        "blast radius: 40 targets > response.max_targets 10 (the rule sets no cap of its own)"
    }
    assert outcomes(decide([prop(f"n{i}") for i in range(10)])) == ["run"] * 10
    assert outcomes(decide([prop(f"n{i}") for i in range(8)], recent={"x1", "x2", "x3"})) == ["refused"] * 8
    wide = RemediateAction("quarantine_vm", "{{ node.id }}", approval="auto", max_targets=50)
    assert outcomes(decide([prop(f"n{i}", wide) for i in range(40)])) == ["run"] * 40
    share = RemediateAction("quarantine_vm", "{{ node.id }}", approval="auto", max_percent=50)
    assert outcomes(decide([prop(f"n{i}", share) for i in range(40)], fleet=100)) == ["run"] * 40
    unlimited = ResponseSettings(max_targets=None)
    assert outcomes(decide([prop(f"n{i}") for i in range(40)], settings=unlimited)) == ["run"] * 40


def test_a_batch_is_one_rule_and_one_action() -> None:
    other = Proposal("r.other", "stable", "bob", AUTO, "f", None, "n1", 0.0)
    with pytest.raises(ValueError, match="one rule and one remediate action"):
        decide([prop("n1"), other])
    assert decide([]) == []


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limiter_token_bucket() -> None:
    clock = FakeClock()
    limiter = RateLimiter(3, clock=clock)
    assert [limiter.acquire("rotate_key") for _ in range(4)] == [True, True, True, False]
    assert limiter.acquire("lock_storage")  # per remediator
    assert limiter.wait("rotate_key") == pytest.approx(20.0)  # 3 a minute: one every 20 s
    clock.now += 19.9
    assert not limiter.acquire("rotate_key")
    clock.now += 0.1
    assert limiter.acquire("rotate_key") and not limiter.acquire("rotate_key")
    clock.now += 3600  # refills to the burst size, no more
    assert [limiter.acquire("rotate_key") for _ in range(4)] == [True, True, True, False]
    with pytest.raises(ValueError):
        RateLimiter(0, clock=clock)


def test_circuit_breaker_opens_waits_and_half_opens_with_one_trial() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(3, 300.0, clock=clock)
    breaker.failure("q")
    breaker.failure("q")
    breaker.success("q")  # consecutive failures only
    for _ in range(2):
        breaker.failure("q")
    assert breaker.state("q") is BreakerState.CLOSED and breaker.allow("q")
    breaker.failure("q")
    assert breaker.state("q") is BreakerState.OPEN and not breaker.allow("q")
    assert breaker.allow("other")  # per remediator
    clock.now += 299
    assert not breaker.allow("q")
    clock.now += 1
    assert breaker.state("q") is BreakerState.HALF_OPEN
    assert breaker.allow("q") and not breaker.allow("q")  # exactly one trial
    breaker.failure("q")  # the trial failed: open again for a full cool-down
    assert breaker.state("q") is BreakerState.OPEN
    clock.now += 300
    assert breaker.allow("q")
    breaker.success("q")
    assert breaker.state("q") is BreakerState.CLOSED and breaker.allow("q") and breaker.allow("q")
