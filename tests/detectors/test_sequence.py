"""Sequence rules: ordered steps joined by fields within a time limit, steps naming other rules, and
"A not followed by B" (an ``absent`` last step that fires when the watermark passes first + within)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.detectors.stateful_helpers import at, ev, feed, of, rule_doc, rules
from vigil.detectors.engine import Detector
from vigil.detectors.sequence import SequenceDetector
from vigil.events.model import Event

TWO = rule_doc(
    "t.fail-then-ok",
    """\
kind: generic
sequence:
  by: [actor.ip]
  within: 10m
  steps:
    - name: failure
      match: action == "login" and outcome == "failure"
    - name: success
      match: action == "login" and outcome == "success"
""",
)

THREE = rule_doc(
    "t.abc",
    """\
kind: generic
sequence:
  by: [actor.ip]
  within: 10m
  steps:
    - match: action == "a"
    - match: action == "b"
    - match: action == "c"
""",
)

ABSENT = rule_doc(
    "t.no-reattest",
    """\
kind: attestation
sequence:
  by: [node.id]
  within: 10m
  steps:
    - name: attestation failed
      match: action == "attest" and outcome == "failure"
    - name: re-attested
      match: action == "attest" and outcome == "success"
      absent: true
""",
)


def detector(tmp_path: Path, *docs: str, lateness_min: float = 5, **kw: Any) -> Detector:
    return Detector(rules(tmp_path, *docs), lateness=timedelta(minutes=lateness_min), **kw)


def login(eid: str, s: float, outcome: str, ip: str = "10.0.0.1") -> Event:
    return ev(eid, s, action="login", outcome=outcome, ip=ip)


def act(eid: str, s: float, action: str, ip: str = "10.0.0.1") -> Event:
    return ev(eid, s, action=action, ip=ip)


def attest(eid: str, s: float, outcome: str, node: str = "n1") -> Event:
    return ev(eid, s, kind="attestation", action="attest", outcome=outcome, node=node)


def seq_of(det: Detector, rule_id: str) -> SequenceDetector:
    return next(s for s in det.sequences if s.rule.id == rule_id)


# -- ordered steps ----------------------------------------------------------------------------------------


def test_two_steps_in_order_fire_with_both_ids(tmp_path: Path) -> None:
    det = detector(tmp_path, TWO)
    assert det.process(login("f1", 0, "failure")) == []
    found = det.process(login("s1", 60, "success"))
    assert len(found) == 1
    f = found[0]
    assert f.rule == "t.fail-then-ok" and f.form == "sequence"
    assert f.event_ids == ("f1", "s1") and f.time == at(60)
    assert dict(f.group) == {"actor.ip": "10.0.0.1"}
    # the partial is consumed: another success alone does not fire
    assert det.process(login("s2", 70, "success")) == []
    assert seq_of(det, "t.fail-then-ok").state.size == 0


def test_wrong_order_does_not_fire(tmp_path: Path) -> None:
    det = detector(tmp_path, TWO)
    assert feed(det, [login("s1", 0, "success"), login("f1", 10, "failure")]) == []
    # the failure started a partial: a later success completes it
    assert [f.event_ids for f in det.process(login("s2", 20, "success"))] == [("f1", "s2")]


def test_groups_are_joined_by_field(tmp_path: Path) -> None:
    det = detector(tmp_path, TWO)
    assert feed(det, [login("f1", 0, "failure", ip="a"), login("s1", 1, "success", ip="b")]) == []
    found = feed(det, [login("f2", 2, "failure", ip="b"), login("s2", 3, "success", ip="a")])
    assert [(f.event_ids, dict(f.group)) for f in found] == [(("f1", "s2"), {"actor.ip": "a"})]


def test_three_steps_in_order(tmp_path: Path) -> None:
    det = detector(tmp_path, THREE)
    found = feed(det, [act("a1", 0, "a"), act("x", 1, "x"), act("b1", 2, "b"), act("c1", 3, "c")])
    assert [(f.event_ids, f.time) for f in found] == [(("a1", "b1", "c1"), at(3))]


def test_three_steps_out_of_order_do_not_fire(tmp_path: Path) -> None:
    det = detector(tmp_path, THREE)
    assert feed(det, [act("c0", 0, "c"), act("b0", 1, "b"), act("a1", 2, "a"), act("c1", 3, "c")]) == []
    # a, (c skipped), b: now waiting for c
    found = feed(det, [act("b1", 4, "b"), act("c2", 5, "c")])
    assert [f.event_ids for f in found] == [("a1", "b1", "c2")]


def test_a_second_first_step_does_not_restart_a_live_partial(tmp_path: Path) -> None:
    det = detector(tmp_path, TWO)
    feed(det, [login("f1", 0, "failure"), login("f2", 300, "failure")])
    # the partial started at 0: 11 minutes later it has expired, even though f2 was 5 minutes ago
    assert det.process(login("s1", 660, "success")) == []


def test_within_is_inclusive(tmp_path: Path) -> None:
    det = detector(tmp_path, TWO)
    det.process(login("f1", 0, "failure"))
    assert [f.event_ids for f in det.process(login("s1", 600, "success"))] == [("f1", "s1")]


def test_within_exceeded_does_not_fire(tmp_path: Path) -> None:
    det = detector(tmp_path, TWO)
    det.process(login("f1", 0, "failure"))
    assert det.process(login("s1", 600.001, "success")) == []
    assert seq_of(det, "t.fail-then-ok").state.size == 0  # the expired partial was dropped


def test_new_first_step_after_expiry_restarts(tmp_path: Path) -> None:
    det = detector(tmp_path, TWO)
    det.process(login("f1", 0, "failure"))
    assert det.process(login("f2", 660, "failure")) == []
    found = det.process(login("s1", 900, "success"))
    assert [f.event_ids for f in found] == [("f2", "s1")]


def test_three_steps_expire_midway(tmp_path: Path) -> None:
    det = detector(tmp_path, THREE)
    assert feed(det, [act("a1", 0, "a"), act("b1", 300, "b"), act("c1", 601, "c")]) == []


def test_one_event_advances_at_most_one_step(tmp_path: Path) -> None:
    doc = rule_doc(
        "t.twice",
        """\
kind: generic
sequence:
  by: [actor.ip]
  within: 5m
  steps:
    - match: action == "login" and outcome == "failure"
    - match: action == "login" and outcome == "failure"
    - match: action == "login" and outcome == "failure"
""",
    )
    det = detector(tmp_path, doc)
    failures = [login(f"f{i}", i, "failure") for i in range(7)]
    found = feed(det, failures)
    assert [(f.event_ids, f.time) for f in found] == [
        (("f0", "f1", "f2"), at(2)),
        (("f3", "f4", "f5"), at(5)),
    ]


def test_per_step_by_fields_join_different_fields(tmp_path: Path) -> None:
    doc = rule_doc(
        "t.login-then-download",
        """\
sequence:
  by: [actor.ip]
  within: 10m
  steps:
    - kind: generic
      match: action == "login"
    - kind: azure.storage
      match: action == "getblob"
      by: [labels.client_ip]
""",
    )
    det = detector(tmp_path, doc)
    assert det.process(ev("l1", 0, action="login", ip="198.51.100.7")) == []
    # a download by another client, and one whose actor.ip (not the joined field) is the same
    other = ev("d0", 1, kind="azure.storage", action="getblob", labels={"client_ip": "203.0.113.1"})
    same_actor = ev("d1", 2, kind="azure.storage", action="getblob", ip="198.51.100.7")
    assert feed(det, [other, same_actor]) == []
    # the step kind matters: a generic getblob is not the step
    assert det.process(ev("g", 3, action="getblob", labels={"client_ip": "198.51.100.7"})) == []
    hit = ev(
        "d2", 4, kind="azure.storage", action="getblob", ip="192.0.2.1", labels={"client_ip": "198.51.100.7"}
    )
    found = det.process(hit)
    assert [(f.event_ids, dict(f.group)) for f in found] == [(("l1", "d2"), {"actor.ip": "198.51.100.7"})]


def test_rule_level_match_is_anded_into_steps(tmp_path: Path) -> None:
    doc = rule_doc(
        "t.scoped",
        """\
kind: generic
match: labels.env == "prod"
sequence:
  by: [actor.ip]
  within: 10m
  steps:
    - match: action == "a"
    - match: action == "b"
""",
    )
    det = detector(tmp_path, doc)
    prod = {"env": "prod"}
    assert feed(det, [ev("a1", 0, action="a", ip="x"), ev("b1", 1, action="b", ip="x", labels=prod)]) == []
    found = feed(
        det, [ev("a2", 2, action="a", ip="x", labels=prod), ev("b2", 3, action="b", ip="x", labels=prod)]
    )
    assert [f.event_ids for f in found] == [("a2", "b2")]


# -- steps naming other rules -----------------------------------------------------------------------------


BRUTE = rule_doc(
    "t.fail3",
    'kind: generic\nmatch: action == "login" and outcome == "failure"\n'
    "threshold: {count: 3, window: 5m, group_by: [actor.ip]}\n",
)
BRUTE_THEN_OK = rule_doc(
    "t.brute-then-ok",
    """\
sequence:
  by: [actor.ip]
  within: 10m
  steps:
    - rule: t.fail3
    - kind: generic
      match: action == "login" and outcome == "success"
""",
)


def test_step_naming_a_threshold_rule_advances_when_it_fires(tmp_path: Path) -> None:
    det = detector(tmp_path, BRUTE, BRUTE_THEN_OK)
    assert det.process(login("s0", 0, "success")) == []
    assert feed(det, [login("f1", 1, "failure"), login("f2", 2, "failure")]) == []
    assert det.process(login("s1", 3, "success")) == []  # the threshold has not fired yet
    crossing = det.process(login("f3", 4, "failure"))
    assert [f.rule for f in crossing] == ["t.fail3"]
    found = det.process(login("s2", 5, "success"))
    assert [(f.rule, f.event_ids, dict(f.group)) for f in found] == [
        ("t.brute-then-ok", ("f3", "s2"), {"actor.ip": "10.0.0.1"})
    ]


def test_step_naming_a_single_event_rule(tmp_path: Path) -> None:
    alert = rule_doc("t.alert", 'kind: sentinel.alert\nmatch: action == "alert.raised"\n')
    doc = rule_doc(
        "t.alert-then-delete",
        """\
sequence:
  by: [resource.id]
  within: 30m
  steps:
    - rule: t.alert
    - kind: azure.activity
      match: action == "microsoft.keyvault/vaults/delete"
""",
    )
    det = detector(tmp_path, alert, doc)
    r = "/subscriptions/s/resourcegroups/g/providers/microsoft.keyvault/vaults/kv1"
    first = det.process(ev("al", 0, kind="sentinel.alert", action="alert.raised", resource=r))
    assert [f.rule for f in first] == ["t.alert"]
    found = det.process(
        ev("del", 60, kind="azure.activity", action="microsoft.keyvault/vaults/delete", resource=r)
    )
    assert [(f.rule, f.event_ids, dict(f.group)) for f in found] == [
        ("t.alert-then-delete", ("al", "del"), {"resource.id": r})
    ]


def test_step_naming_a_rule_in_the_last_position(tmp_path: Path) -> None:
    doc = rule_doc(
        "t.ok-then-brute",
        """\
sequence:
  by: [actor.ip]
  within: 10m
  steps:
    - kind: generic
      match: action == "login" and outcome == "success"
    - rule: t.fail3
""",
    )
    det = detector(tmp_path, BRUTE, doc)
    events = [login("s1", 0, "success")] + [login(f"f{i}", i, "failure") for i in (1, 2, 3)]
    found = of(feed(det, events), "t.ok-then-brute")
    assert [f.event_ids for f in found] == [("s1", "f3")]


# -- absent last step -------------------------------------------------------------------------------------


def test_absent_step_fires_only_after_watermark_passes_deadline(tmp_path: Path) -> None:
    det = detector(tmp_path, ABSENT, lateness_min=1)
    assert det.process(attest("fail", 0, "failure")) == []
    # other nodes keep time moving: watermark = newest - 1m
    assert det.process(attest("o1", 600, "success", node="n2")) == []  # watermark 9m
    assert det.process(attest("o2", 659.999, "success", node="n2")) == []  # watermark 9m59.999s
    assert det.process(attest("o3", 660, "success", node="n2")) == []  # watermark 10m: not yet past it
    found = det.process(attest("o4", 660.001, "success", node="n2"))  # watermark just past 10m: due
    assert [(f.rule, f.event_ids, f.time, dict(f.group)) for f in found] == [
        ("t.no-reattest", ("fail",), at(600), {"node.id": "n1"})
    ]
    assert f"{found[0].form}" == "sequence"
    assert det.process(attest("o4", 2000, "success", node="n2")) == []


def test_absent_step_fires_on_advance(tmp_path: Path) -> None:
    det = detector(tmp_path, ABSENT)
    det.process(attest("fail", 0, "failure"))
    det2 = detector(tmp_path, ABSENT)
    det2.process(attest("fail", 0, "failure"))
    assert det.advance(timedelta(minutes=9, seconds=59)) == []
    found = det2.advance(timedelta(minutes=10))
    assert [(f.event_ids, f.time) for f in found] == [(("fail",), at(600))]
    assert det2.advance(timedelta(hours=1)) == []
    assert det.advance(timedelta(seconds=1)) != []  # 9m59s + 1s (advance moves from the newest time)


def test_absent_step_event_in_time_cancels(tmp_path: Path) -> None:
    det = detector(tmp_path, ABSENT)
    assert feed(det, [attest("fail", 0, "failure"), attest("ok", 599, "success")]) == []
    assert det.advance(timedelta(hours=1)) == []
    assert seq_of(det, "t.no-reattest").state.size == 0


def test_absent_step_event_of_another_group_does_not_cancel(tmp_path: Path) -> None:
    det = detector(tmp_path, ABSENT)
    feed(det, [attest("fail", 0, "failure"), attest("ok", 30, "success", node="n2")])
    assert [f.event_ids for f in det.advance(timedelta(minutes=10))] == [("fail",)]


def test_absent_step_event_too_late_does_not_cancel(tmp_path: Path) -> None:
    det = detector(tmp_path, ABSENT, lateness_min=5)
    # the success comes 10m30s after the failure: within the lateness, so not yet fired, but too late
    assert feed(det, [attest("fail", 0, "failure"), attest("ok", 630, "success")]) == []
    found = det.advance(timedelta(minutes=1))
    assert [(f.event_ids, f.time) for f in found] == [(("fail",), at(600))]


def test_absent_step_after_two_positive_steps(tmp_path: Path) -> None:
    doc = rule_doc(
        "t.ab-no-c",
        """\
kind: generic
sequence:
  by: [actor.ip]
  within: 10m
  steps:
    - match: action == "a"
    - match: action == "b"
    - match: action == "c"
      absent: true
""",
    )
    det = detector(tmp_path, doc)
    # c before b does not cancel (it is not what the partial waits for); b completes the positive steps
    assert feed(det, [act("a1", 0, "a"), act("c0", 60, "c"), act("b1", 120, "b")]) == []
    found = det.advance(timedelta(minutes=10))
    assert [(f.event_ids, f.time) for f in found] == [(("a1", "b1"), at(600))]
    # a, b, then c in time: cancelled
    det2 = detector(tmp_path, doc)
    feed(det2, [act("a1", 0, "a"), act("b1", 120, "b"), act("c1", 500, "c")])
    assert det2.advance(timedelta(hours=1)) == []
    # a alone (b never came): nothing, the partial just expires
    det3 = detector(tmp_path, doc)
    det3.process(act("a1", 0, "a"))
    assert det3.advance(timedelta(hours=1)) == []


def test_absent_waiting_partial_is_not_restarted_by_a_new_first_step(tmp_path: Path) -> None:
    det = detector(tmp_path, ABSENT)
    feed(det, [attest("fail1", 0, "failure"), attest("fail2", 300, "failure")])
    found = det.advance(timedelta(minutes=10))
    assert [(f.event_ids, f.time) for f in found] == [(("fail1",), at(600))]


def test_expired_partials_are_swept_but_absent_waits_are_kept(tmp_path: Path) -> None:
    det = detector(tmp_path, TWO, ABSENT, lateness_min=1)
    feed(det, [login("f1", 0, "failure"), attest("a1", 0, "failure")])
    det.clock.advance_to(det.clock.max_seen + 3_600_000)
    wm = det.clock.watermark
    two, absent = seq_of(det, "t.fail-then-ok"), seq_of(det, "t.no-reattest")
    assert two.state.sweep_all(two.dead(wm)) == 1
    assert absent.state.sweep_all(absent.dead(wm)) == 0  # its timer decides, not the sweep
    assert [f.event_ids for f in det.tick()] == [("a1",)]


def _absent_findings(tmp_path: Path, order: list[str]) -> tuple[int, int]:
    det = detector(tmp_path, ABSENT, lateness_min=5)
    events = {
        "fail": attest("fail", 0, "failure"),
        "ok": attest("ok", 600, "success"),  # exactly first + within: in time (within is inclusive)
        "other": attest("other", 900, "success", node="n2"),  # moves the watermark to exactly 10m
    }
    found = feed(det, [events[k] for k in order]) + det.advance(timedelta(hours=1))
    return len(of(found, "t.no-reattest")), det.clock.late


def test_absent_step_at_the_deadline_cancels_when_it_arrives_first(tmp_path: Path) -> None:
    assert _absent_findings(tmp_path, ["fail", "ok", "other"]) == (0, 0)


def test_absent_step_at_the_deadline_does_not_depend_on_arrival_order(tmp_path: Path) -> None:
    assert _absent_findings(tmp_path, ["fail", "other", "ok"]) == (0, 0)
