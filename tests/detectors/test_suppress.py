"""Suppression: one finding per (rule, group) per period; the next one carries how many were held back."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.detectors.stateful_helpers import at, ev, feed, of, rule_doc, rules
from vigil.detectors.engine import Detector
from vigil.detectors.suppress import Suppressor
from vigil.events.model import Event

KV = "/subscriptions/s/resourcegroups/g/providers/microsoft.keyvault/vaults/"

SINGLE = rule_doc(
    "t.read",
    'kind: azure.keyvault\nmatch: action == "secretget" and outcome == "failure"\nsuppress: 10m\n',
)


def detector(tmp_path: Path, *docs: str, lateness_min: float = 5, **kw: Any) -> Detector:
    return Detector(rules(tmp_path, *docs), lateness=timedelta(minutes=lateness_min), **kw)


def read(eid: str, s: float, vault: str = "kv1", node: str | None = None) -> Event:
    return ev(
        eid,
        s,
        kind="azure.keyvault",
        action="secretget",
        outcome="failure",
        resource=KV + vault if vault else None,
        node=node,
    )


def sup(det: Detector, rule_id: str) -> Suppressor:
    return det.suppressors[rule_id]


def test_one_finding_per_group_per_period(tmp_path: Path) -> None:
    det = detector(tmp_path, SINGLE)
    out = feed(det, [read("r0", 0), read("r1", 60), read("r2", 120), read("r3", 599.999)])
    assert [(f.event_ids, f.suppressed) for f in out] == [(("r0",), 0)]
    # the period (event time) is over: the next finding passes and carries the count held back
    nxt = det.process(read("r4", 600))
    assert [(f.event_ids, f.suppressed, f.time) for f in nxt] == [(("r4",), 3, at(600))]
    # a new period opened at 600: held again, then passed with a count of 1
    assert det.process(read("r5", 700)) == []
    assert [(f.event_ids, f.suppressed) for f in det.process(read("r6", 1300))] == [(("r6",), 1)]
    # nothing held in between: suppressed is 0 (and omitted from the JSON form)
    assert [f.suppressed for f in det.process(read("r7", 5000))] == [0]
    assert sup(det, "t.read").held == 4
    assert det.stats()["rules"]["t.read"]["suppressed"] == 4  # type: ignore[index]


def test_groups_are_independent(tmp_path: Path) -> None:
    det = detector(tmp_path, SINGLE)
    out = feed(det, [read("a0", 0, "kv1"), read("b0", 1, "kv2"), read("a1", 2, "kv1"), read("b1", 3, "kv2")])
    assert [(f.event_ids, dict(f.group)) for f in out] == [
        (("a0",), {"resource.id": KV + "kv1"}),
        (("b0",), {"resource.id": KV + "kv2"}),
    ]
    # the node group (no resource) is a group of its own too
    out = feed(det, [read("n0", 4, vault="", node="node-1"), read("n1", 5, vault="", node="node-1")])
    assert [(f.event_ids, dict(f.group)) for f in out] == [(("n0",), {"node.id": "node-1"})]
    out = feed(det, [read("a2", 700, "kv1"), read("b2", 701, "kv2")])
    assert [(f.event_ids, f.suppressed) for f in out] == [(("a2",), 1), (("b2",), 1)]


def test_other_rules_are_not_suppressed(tmp_path: Path) -> None:
    plain = rule_doc("t.plain", 'kind: azure.keyvault\nmatch: action == "secretget"\n')
    det = detector(tmp_path, SINGLE, plain)
    out = feed(det, [read("r0", 0), read("r1", 1), read("r2", 2)])
    assert [f.event_ids for f in of(out, "t.plain")] == [("r0",), ("r1",), ("r2",)]
    assert [f.event_ids for f in of(out, "t.read")] == [("r0",)]


def test_threshold_findings_are_suppressed_per_group(tmp_path: Path) -> None:
    doc = rule_doc(
        "t.burst",
        'kind: generic\nmatch: action == "login"\n'
        "threshold: {count: 2, window: 1m, group_by: [actor.ip]}\nsuppress: 10m\n",
    )
    det = detector(tmp_path, doc, lateness_min=1)
    pairs = [(0, "a"), (180, "a"), (240, "b"), (360, "a"), (660, "a")]  # each pair crosses the bound afresh
    out = []
    for s, ip in pairs:
        out += feed(det, [ev(f"{ip}{s}", s, ip=ip), ev(f"{ip}{s}+", s + 1, ip=ip)])
    assert [(f.event_ids, dict(f.group), f.suppressed, f.value) for f in out] == [
        (("a0+",), {"actor.ip": "a"}, 0, 2.0),
        (("b240+",), {"actor.ip": "b"}, 0, 2.0),
        (("a660+",), {"actor.ip": "a"}, 2, 2.0),
    ]
    assert det.stats()["rules"]["t.burst"]["suppressed"] == 2  # type: ignore[index]


def test_flatline_findings_are_suppressed_by_their_own_time(tmp_path: Path) -> None:
    doc = rule_doc(
        "t.silent",
        'kind: node.telemetry\nmatch: action == "node.train.step"\n'
        "flatline: {period: 5m, group_by: [node.id]}\nsuppress: 1h\n",
    )
    det = detector(tmp_path, doc, lateness_min=0)
    hb = lambda eid, s: ev(eid, s, kind="node.telemetry", action="node.train.step", node="n1")  # noqa: E731
    out = []
    for i, s in enumerate([0, 600, 1200, 1800, 4000]):  # silent 10 minutes each time: fires every time
        det.process(hb(f"h{i}", s))
        out += det.advance(timedelta(minutes=6))
    assert [(f.time, f.suppressed) for f in out] == [(at(300), 0), (at(4300), 3)]


def test_sequence_findings_are_suppressed(tmp_path: Path) -> None:
    doc = rule_doc(
        "t.seq",
        """\
kind: generic
suppress: 30m
sequence:
  by: [actor.ip]
  within: 5m
  steps:
    - match: action == "a"
    - match: action == "b"
""",
    )
    det = detector(tmp_path, doc)
    out = feed(
        det, [ev(f"{x}{i}", i * 60 + (x == "b"), action=x, ip="h") for i in range(0, 40, 5) for x in "ab"]
    )
    assert [(f.event_ids, f.suppressed) for f in out] == [(("a0", "b0"), 0), (("a30", "b30"), 5)]


def test_sequence_step_sees_findings_before_suppression(tmp_path: Path) -> None:
    alert = rule_doc("t.alert", 'kind: sentinel.alert\nmatch: action == "alert.raised"\nsuppress: 1h\n')
    doc = rule_doc(
        "t.alert-then-delete",
        """\
sequence:
  by: [resource.id]
  within: 30m
  steps:
    - rule: t.alert
    - kind: azure.activity
      match: action == "delete"
""",
    )
    det = detector(tmp_path, alert, doc)
    r = KV + "kv1"
    assert [
        f.rule for f in det.process(ev("al0", 0, kind="sentinel.alert", action="alert.raised", resource=r))
    ] == ["t.alert"]
    assert (
        det.process(ev("d0", 2400, kind="azure.activity", action="delete", resource=r)) == []
    )  # 40m: expired
    # this alert is suppressed, but the sequence still sees it
    assert det.process(ev("al1", 2700, kind="sentinel.alert", action="alert.raised", resource=r)) == []
    out = det.process(ev("d1", 3000, kind="azure.activity", action="delete", resource=r))
    assert [(f.rule, f.event_ids) for f in out] == [("t.alert-then-delete", ("al1", "d1"))]


def test_past_the_key_limit_findings_pass_unsuppressed(tmp_path: Path) -> None:
    det = detector(tmp_path, SINGLE, max_keys=1)
    out = feed(det, [read("a0", 0, "kv1"), read("b0", 1, "kv2"), read("b1", 2, "kv2"), read("a1", 3, "kv1")])
    # kv1 holds the only key; kv2 cannot be tracked, so none of its findings is held back
    assert [f.event_ids for f in out] == [("a0",), ("b0",), ("b1",)]
    s = sup(det, "t.read")
    assert s.state.size == 1 and s.state.limited == 2


def test_ended_periods_with_nothing_held_are_swept(tmp_path: Path) -> None:
    det = detector(tmp_path, SINGLE, lateness_min=0)
    feed(det, [read("a0", 0, "kv1"), read("b0", 0, "kv2"), read("b1", 60, "kv2")])
    det.clock.advance_to(det.clock.max_seen + 3_600_000)
    s = sup(det, "t.read")
    # kv1's period ended with nothing held: forgotten; kv2 still carries a count of 1
    assert s.state.sweep_all(s.dead(det.clock.watermark)) == 1
    assert s.state.size == 1
    assert [f.suppressed for f in det.process(read("b2", 4000, "kv2"))] == [1]
