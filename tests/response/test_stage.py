"""The response stage: findings committed through the real Store become actions with resolved targets.

Events and findings go in the way the pipeline puts them there (``append_events`` and
``Store.commit_detection``, which also files incidents); the engine behind the stage is the real one on the
local platform (:class:`tests.response.test_engine.Env`), so what the tests check is the actions it stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.detectors.stateful_helpers import ev
from tests.response.test_engine import Env
from vigil.audit.log import AuditUnavailableError
from vigil.detectors.finding import Finding, finding_id
from vigil.events.model import Event, FrozenMap
from vigil.platform.compute import NodeState
from vigil.response.engine import ResponseEngine
from vigil.response.model import ActionState
from vigil.response.stage import OFFSET, ResponseStage
from vigil.response.templates import TargetError, resolve_target
from vigil.rules.loader import load_rules
from vigil.rules.model import RuleSet
from vigil.store.sqlite import Store

S = ActionState

RULES = """\
id: r.quarantine
title: quarantine the node
status: stable
severity: critical
kind: generic
match: action == "node.bad"
author: alice
actions:
  - remediate: quarantine_vm
    target: "{{ node.id }}"
    approval: auto
  - remediate: quarantine_vm
    target: "{{ raw.vm.name }}"
    approval: required
---
id: r.notify
title: alert only
status: stable
severity: low
kind: generic
match: action == "node.odd"
actions:
  - alert: [console]
"""


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    asyncio.run(e.close())


@pytest.fixture
def ruleset(tmp_path: Path) -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(RULES)
    rules = load_rules([path])
    assert rules.ok, [d.format() for d in rules.diagnostics]
    return rules


def finding(rule: str, event: Event, node: str) -> Finding:
    return Finding(
        rule=rule,
        title=rule,
        severity="critical",
        score=90,
        event_ids=(event.id,),
        time=event.time,
        group=FrozenMap({"node.id": node}),
    )


def detect(store: Store, *found: tuple[str, Event, str]) -> list[Finding]:
    """Log the events and commit their findings as the detect stage does."""
    events = [e for _, e, _ in found]
    store.append_events(events, "test")
    findings = [finding(rule, e, node) for rule, e, node in found]
    store.commit_detection([(i + 1, f) for i, f in enumerate(findings)], store.last_seq(), None)
    return findings


def stage_for(
    engine: ResponseEngine, store: Store, rules: RuleSet, *, window: float = 0.0, clock: Clock | None = None
) -> ResponseStage:
    return ResponseStage(
        engine, store, lambda: rules, batch_window=window, clock=clock or Clock(), from_start=True
    )


def test_resolve_target_templates() -> None:
    event = ev("e1", 0, node="n1", resource="vault-1", raw={"vm": {"name": "gpu-7", "n": 3, "flag": True}})
    assert resolve_target("{{ node.id }}", event) == "n1"
    assert resolve_target("kv-{{resource.id}}/{{ raw.vm.n }}", event) == "kv-vault-1/3"
    assert resolve_target("fixed-target", event) == "fixed-target"
    for bad in (
        "{{ actor.id }}",
        "{{ raw.vm.missing }}",
        "{{ raw.vm }}",
        "{{ raw.vm.flag }}",
        "{{ nope.x }}",
    ):
        with pytest.raises(TargetError, match="did not resolve"):
            resolve_target(bad, event)
    with pytest.raises(TargetError, match="event 'gone' not found"):
        resolve_target("{{ node.id }}", None, "gone")


def test_findings_become_actions_with_resolved_targets_and_incidents(env: Env, ruleset: RuleSet) -> None:
    async def main() -> int:
        engine = await env.start(nodes=3)
        store = Store(env.root / "vigil.db")
        found = detect(
            store,
            ("r.quarantine", ev("e1", 1, action="node.bad", node="n1", raw={"vm": {"name": "n2"}}), "n1"),
            ("r.notify", ev("e2", 2, action="node.odd", node="n0"), "n0"),
        )
        stage = stage_for(engine, store, ruleset)
        submitted = await stage.step()
        assert stage.cursor == 2 and store.offset(OFFSET) == "2"
        assert await env.node_state("n1") is NodeState.QUARANTINED
        actions = sorted(env.store.list(), key=lambda a: a.target)
        assert [(a.target, a.state) for a in actions] == [("n1", S.SUCCEEDED), ("n2", S.PENDING_APPROVAL)]
        assert {a.finding_id for a in actions} == {finding_id(found[0])}
        r_incident = next(i["id"] for i in store.incidents() if i["rule"] == "r.quarantine")
        assert {a.incident_id for a in actions} == {r_incident}
        stage.close()
        store.close()
        return submitted

    assert run(main()) == 2


def test_unresolvable_target_is_a_refused_action(env: Env, ruleset: RuleSet) -> None:
    async def main() -> None:
        engine = await env.start(nodes=1)
        store = Store(env.root / "vigil.db")
        detect(store, ("r.quarantine", ev("e1", 1, action="node.bad"), ""))  # no node, no raw.vm.name
        stage = stage_for(engine, store, ruleset)
        await stage.step()
        actions = env.store.list()
        assert {a.state for a in actions} == {S.REFUSED}
        assert sorted(a.reason for a in actions) == [
            "target template '{{ node.id }}' did not resolve: node.id is missing from event 'e1'",
            "target template '{{ raw.vm.name }}' did not resolve: raw.vm.name is missing from event 'e1'",
        ]
        stage.close()
        store.close()

    run(main())
    assert env.changes() == []


def test_reprocessing_after_a_crash_creates_nothing_twice(env: Env, ruleset: RuleSet) -> None:
    async def main() -> None:
        engine = await env.start(nodes=3)
        store = Store(env.root / "vigil.db")
        detect(store, ("r.quarantine", ev("e1", 1, action="node.bad", node="n1"), "n1"))
        first = stage_for(engine, store, ruleset)
        await first.step()
        first.close()
        store.set_offset(OFFSET, "0")  # the crash came before the cursor was saved
        again = stage_for(engine, store, ruleset)
        assert again.cursor == 0
        await again.step()
        assert again.cursor == 1
        again.close()
        store.close()

    run(main())
    assert len(env.store.list()) == 2  # one per remediate action, once
    assert env.changes("platform.node.") == ["platform.node.quarantine"]


def test_batch_window_gathers_and_the_cursor_waits_for_the_submit(env: Env, ruleset: RuleSet) -> None:
    clock = Clock()

    async def main() -> None:
        engine = await env.start(nodes=3)
        store = Store(env.root / "vigil.db")
        stage = stage_for(engine, store, ruleset, window=2.0, clock=clock)
        detect(store, ("r.quarantine", ev("e1", 1, action="node.bad", node="n1"), "n1"))
        assert await stage.step() == 0
        clock.now += 1.0
        detect(store, ("r.quarantine", ev("e2", 2, action="node.bad", node="n2"), "n2"))
        assert await stage.step() == 0
        assert env.store.list() == [] and stage.cursor == 0  # nothing submitted, nothing saved
        clock.now += 1.0
        assert await stage.step() == 4  # both findings, two actions each, in one batch
        assert stage.cursor == 2
        stage.close()
        store.close()

    run(main())
    # n1 and n2 quarantined; the unresolvable raw.vm.name template is one refusal per window, not one per
    # finding (the same problem, the same idempotency key)
    assert sorted((a.target, a.state.value) for a in env.store.list()) == [
        ("n1", "succeeded"),
        ("n2", "succeeded"),
        ("{{ raw.vm.name }}", "refused"),
    ]


def test_first_start_begins_at_the_end(env: Env, ruleset: RuleSet) -> None:
    second: list[Finding] = []

    async def main() -> None:
        engine = await env.start(nodes=3)
        store = Store(env.root / "vigil.db")
        detect(store, ("r.quarantine", ev("e1", 1, action="node.bad", node="n1"), "n1"))
        stage = ResponseStage(engine, store, lambda: ruleset, batch_window=0.0)
        assert stage.cursor == 1 and await stage.step() == 0
        second[:] = detect(store, ("r.quarantine", ev("e2", 2, action="node.bad", node="n2"), "n2"))
        assert await stage.step() == 2
        stage.close()
        store.close()

    run(main())
    assert {a.finding_id for a in env.store.list()} == {finding_id(second[0])}


def test_audit_outage_keeps_the_cursor_and_the_batch(env: Env, ruleset: RuleSet) -> None:
    async def main() -> None:
        engine = await env.start(nodes=3)
        store = Store(env.root / "vigil.db")
        detect(store, ("r.quarantine", ev("e1", 1, action="node.bad", node="n1"), "n1"))
        stage = stage_for(engine, store, ruleset)
        await env.audit.close()
        with pytest.raises(AuditUnavailableError):
            await stage.step()
        assert stage.cursor == 0 and env.store.list() == []
        await env.audit.open()
        assert await stage.step() == 2 and stage.cursor == 1
        stage.close()
        store.close()

    run(main())
    assert len(env.store.list()) == 2


def test_run_loop_wakes_on_new_findings_and_stops(env: Env, ruleset: RuleSet) -> None:
    async def main() -> None:
        engine = await env.start(nodes=3)
        store = Store(env.root / "vigil.db")
        stage = ResponseStage(engine, store, lambda: ruleset, batch_window=0.0, from_start=True)
        stop, wake = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(stage.run(stop, wake))
        detect(store, ("r.quarantine", ev("e1", 1, action="node.bad", node="n1"), "n1"))
        wake.set()
        for _ in range(200):
            if len(env.store.list()) == 2:
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 2.0)
        stage.close()
        store.close()

    run(main())
    assert len(env.store.list()) == 2


TEMPLATED = """\
id: r.reasoned
title: quarantine with the reason from the event
status: stable
severity: critical
kind: generic
match: action == "node.bad"
actions:
  - remediate: quarantine_vm
    target: "{{ node.id }}"
    approval: auto
    params:
      reason: "measurement {{ raw.m }} not allowed"
      evidence: {source: telemetry}
  - remediate: lock_storage
    target: "{{ node.id }}-data"
    approval: required
    params:
      lock: "{{ raw.lock }}"
"""


def test_templated_params_are_resolved_per_finding_and_part_of_the_identity(env: Env, tmp_path: Path) -> None:
    """A parameter resolved from the event: different values on one target are different actions (two
    principals to remove from one vault are two removals, not a repeat), the same value is a repeat, a
    value that does not resolve refuses that proposal only, and a resolved value the remediator rejects is
    refused with the remediator's reason, the rest of the batch going on."""
    (tmp_path / "templated.yaml").write_text(TEMPLATED)
    rules = load_rules([tmp_path / "templated.yaml"])
    assert rules.ok, [d.format() for d in rules.diagnostics]

    async def main() -> None:
        engine = await env.start(nodes=2)
        store = Store(env.root / "vigil.db")
        detect(
            store,
            (
                "r.reasoned",
                ev("e1", 1, action="node.bad", node="n1", raw={"m": "aa", "lock": "no_access"}),
                "n1",
            ),
            ("r.reasoned", ev("e2", 2, action="node.bad", node="n1", raw={"m": "bb", "lock": "bogus"}), "n1"),
            (
                "r.reasoned",
                ev("e3", 3, action="node.bad", node="n1", raw={"m": "aa", "lock": "no_access"}),
                "n1",
            ),
            ("r.reasoned", ev("e4", 4, action="node.bad", node="n1"), "n1"),
        )
        stage = stage_for(engine, store, rules)
        await stage.step()
        stage.close()
        store.close()

    run(main())
    actions = env.store.list()
    quarantines = sorted(
        (a.params.get("reason", ""), a.state.value, a.reason)
        for a in actions
        if a.remediation == "quarantine_vm"
    )
    assert quarantines == [
        ("measurement aa not allowed", "succeeded", ""),  # e1 (e3 is the same action)
        ("measurement bb not allowed", "noop", ""),  # e2: the node is quarantined already
        (
            "measurement {{ raw.m }} not allowed",
            "refused",
            "params.reason template 'measurement {{ raw.m }} not allowed' did not resolve: raw.m is missing "
            "from event 'e4'",
        ),
    ]
    assert all(
        a.params.get("evidence") == {"source": "telemetry"}
        for a in actions
        if a.remediation == "quarantine_vm"
    )
    locks = sorted(
        (a.params["lock"], a.state.value, a.reason) for a in actions if a.remediation == "lock_storage"
    )
    assert [(lock, state) for lock, state, _ in locks] == [
        ("bogus", "refused"),
        ("no_access", "pending_approval"),
        ("{{ raw.lock }}", "refused"),
    ]
    assert locks[0][2] == "invalid params for lock_storage: lock"
    assert env.changes("platform.node.") == ["platform.node.quarantine"]
