"""The Detector as a whole: single-event rules beside stateful ones, stats, embedded rule tests with
``advance:``, and ``vigil replay`` with ordering, ``--advance`` and ``--state``."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

from tests.conftest import run_vigil
from tests.detectors.stateful_helpers import at, ev, feed, load, poison, rule_doc, rules
from vigil.detectors.engine import Detector
from vigil.detectors.match import Matcher
from vigil.events.model import Event
from vigil.rules.testing import run_tests

SINGLE = [
    rule_doc("t.exact", 'kind: azure.keyvault\nmatch: action == "secretget" and outcome == "failure"\n'),
    rule_doc(
        "t.in-list",
        'kind: [azure.keyvault, azure.activity]\nmatch: action in ["keydelete", "secretdelete"]\n',
    ),
    rule_doc("t.prefix", 'kind: azure.activity\nmatch: startswith(action, "microsoft.keyvault/")\n'),
    rule_doc("t.unindexed", 'kind: azure.keyvault\nmatch: actor.ip == "203.0.113.9"\n'),
    rule_doc("t.kindless", 'match: action == "secretget" and endswith(actor.ip, ".9")\n'),
    rule_doc("t.faulty", 'kind: generic\nmatch: action == "count" and raw.n > 5\n'),
]
STATEFUL = [
    rule_doc(
        "t.burst",
        'kind: azure.keyvault\nmatch: action == "secretget"\nthreshold: {count: 3, window: 5m, group_by: [actor.ip]}\n',
    ),
    rule_doc(
        "t.silent",
        'kind: azure.keyvault\nmatch: action == "secretget"\nflatline: {period: 10m, group_by: [resource.id]}\n',
    ),
    rule_doc(
        "t.read-then-delete",
        """\
kind: azure.keyvault
sequence:
  by: [actor.ip]
  within: 10m
  steps:
    - match: action == "secretget"
    - match: action == "keydelete"
""",
    ),
    rule_doc("t.exact-suppressed", 'kind: azure.keyvault\nmatch: action == "secretget"\nsuppress: 1h\n'),
]


def mixed_events() -> list[Event]:
    out: list[Event] = []
    kinds = [
        ("azure.keyvault", "secretget"),
        ("azure.keyvault", "keydelete"),
        ("azure.activity", "keydelete"),
    ]
    kinds += [
        ("azure.activity", "microsoft.keyvault/vaults/write"),
        ("generic", "count"),
        ("generic", "secretget"),
    ]
    for i in range(60):
        kind, action = kinds[i % len(kinds)]
        out.append(
            ev(
                f"e{i}",
                i * 5,
                kind=kind,
                action=action,
                outcome=("failure", "success")[i % 2],
                ip=("203.0.113.9", "198.51.100.4")[i % 4 == 0],
                resource=f"/subscriptions/s/resourcegroups/g/providers/microsoft.keyvault/vaults/kv{i % 3}",
                raw={"n": (7, "x", 2)[i % 3]},
            )
        )
    return out


def test_single_event_findings_equal_the_matcher(tmp_path: Path) -> None:
    rs = load(tmp_path, *SINGLE, *STATEFUL)
    single = [r for r in rs.rules if r.form == "event" and r.suppress is None]
    assert len(single) == len(SINGLE)
    det = Detector(rs.rules)
    matcher = Matcher(single)
    forms: set[str] = set()
    for event in mixed_events():
        found = det.process(event)
        forms |= {f.form for f in found}
        mine = [f for f in found if f.form == "event" and f.rule != "t.exact-suppressed"]
        assert mine == matcher.match(event), event.id
    forms |= {f.form for f in det.advance(timedelta(hours=1))}
    assert forms == {"event", "threshold", "sequence", "flatline"}
    # rule faults are counted the same way
    assert det.matcher.errors["t.faulty"] == matcher.errors["t.faulty"] > 0


def test_only_single_event_rules_skip_the_clock(tmp_path: Path) -> None:
    det = Detector(load(tmp_path, *SINGLE).rules)
    assert det.stateful == [] and det.suppressors == {}
    found = det.process(ev("old", at(-(10**9)), kind="azure.keyvault", action="secretget", outcome="failure"))
    assert [f.rule for f in found] == ["t.exact"]
    assert det.stats()["ancient_clamped"] == 0 and det.stats()["open_keys"] == 0


def test_stats_counters(tmp_path: Path) -> None:
    docs = [
        rule_doc(
            "t.bytes",
            'kind: generic\nmatch: action == "read"\n'
            "threshold: {sum: raw.n, at_least: 100, window: 5m, group_by: [actor.ip]}\nsuppress: 1h\n",
        ),
        rule_doc(
            "t.seen", 'kind: generic\nmatch: action == "read"\nflatline: {period: 5m, group_by: [actor.ip]}\n'
        ),
    ]
    det = Detector(load(tmp_path, *docs).rules, lateness=timedelta(minutes=1), max_keys=2)
    r = lambda eid, s, ip, n: ev(eid, s, action="read", ip=ip, raw={"n": n})  # noqa: E731
    found = feed(
        det,
        [
            r("1", 600, "a", 60),
            r("2", 601, "a", 60),  # crosses: a finding
            r("3", 602, "b", "x"),  # bad value; b still seen by the flatline
            r("4", 603, "c", 1),  # second key of the sum, third of the flatline: over its limit
            r("4b", 604, "d", 1),  # third key of the sum: over its limit; fourth of the flatline
            r("5", 10, "a", 1),  # late
            r("6", 0, "a", 1),  # late too
        ],
    )
    assert [f.rule for f in found] == ["t.bytes"]
    det.process(r("7", 1400, "a", 200))
    det.process(r("8", 1401, "a", 200))  # a new crossing, inside the suppression period
    stats = det.stats()
    assert stats["late"] == 2 and stats["future_clamped"] == 0 and stats["ancient_clamped"] == 0
    assert stats["watermark_ms"] == det.clock.watermark == ev("x", 1401 - 60).time.timestamp() * 1000
    assert stats["rules"] == {
        "t.bytes": {"keys": 2, "key_limit_hits": 1, "stale_events": 0, "bad_values": 1, "suppressed": 1},
        "t.seen": {"keys": 2, "key_limit_hits": 2},
    }
    assert stats["open_keys"] == det.open_keys() == 2 + 2 + 1  # sum windows, flatline groups, suppression


def test_reset_forgets_everything(tmp_path: Path) -> None:
    det = Detector(load(tmp_path, *STATEFUL).rules)
    feed(det, mixed_events())
    assert det.open_keys() > 0
    det.reset()
    assert det.open_keys() == 0 and det.clock.max_seen < 0
    assert det.advance(timedelta(days=1)) == []


# -- embedded rule tests ----------------------------------------------------------------------------------

RULE_TESTS = """\
id: t.node-silent
title: node silent
status: test
severity: high
kind: node.telemetry
match: action == "node.train.step"
flatline: {period: 10m, group_by: [node.id]}
tests:
  - name: silence after the last step fires once advanced
    events: [{action: node.train.step, node: {id: n1}}, {action: node.train.step, node: {id: n2}}]
    advance: 15m
    expect: {findings: 2}
  - name: without advance nothing is due yet
    events: [{action: node.train.step, node: {id: n1}}]
    expect: {findings: 0}
  - name: advance shorter than the period
    events: [{action: node.train.step, node: {id: n1}}]
    advance: 9m
    expect: {findings: 0}
---
id: t.brute
title: brute force
status: test
severity: high
kind: generic
match: action == "login" and outcome == "failure"
threshold: {count: 3, window: 5m, group_by: [actor.ip]}
tests:
  - name: three failures
    events:
      - {action: login, outcome: failure, actor: {ip: 192.0.2.1}}
      - {action: login, outcome: failure, actor: {ip: 192.0.2.1}}
      - {action: login, outcome: failure, actor: {ip: 192.0.2.1}}
    expect: {findings: 1}
  - name: two failures (state from the case before does not leak)
    events:
      - {action: login, outcome: failure, actor: {ip: 192.0.2.1}}
      - {action: login, outcome: failure, actor: {ip: 192.0.2.1}}
    expect: {findings: 0}
  - name: spread over more than a window
    events:
      - {action: login, outcome: failure, actor: {ip: 192.0.2.1}, time: "2024-01-01T00:00:00Z"}
      - {action: login, outcome: failure, actor: {ip: 192.0.2.1}, time: "2024-01-01T00:10:00Z"}
      - {action: login, outcome: failure, actor: {ip: 192.0.2.1}, time: "2024-01-01T00:20:00Z"}
    expect: {findings: 0}
---
id: t.no-reattest
title: no re-attestation
status: test
severity: critical
kind: attestation
sequence:
  by: [node.id]
  within: 10m
  steps:
    - match: outcome == "failure"
    - match: outcome == "success"
      absent: true
tests:
  - name: failure not followed by success
    events: [{action: attest, outcome: failure, node: {id: n1}}]
    advance: 10m
    expect: {findings: 1}
  - name: re-attested in time
    events: [{action: attest, outcome: failure, node: {id: n1}}, {action: attest, outcome: success, node: {id: n1}}]
    advance: 1h
    expect: {findings: 0}
"""


def test_rule_tests_with_advance_pass(tmp_path: Path) -> None:
    rs = load(tmp_path, RULE_TESTS)
    results = run_tests(rs)
    assert [(r.rule_id, r.expected, r.actual, r.errors) for r in results] == [
        ("t.node-silent", 2, 2, 0),
        ("t.node-silent", 0, 0, 0),
        ("t.node-silent", 0, 0, 0),
        ("t.brute", 1, 1, 0),
        ("t.brute", 0, 0, 0),
        ("t.brute", 0, 0, 0),
        ("t.no-reattest", 1, 1, 0),
        ("t.no-reattest", 0, 0, 0),
    ]
    assert all(r.passed for r in results)


def test_rule_test_with_wrong_expectation_fails(tmp_path: Path) -> None:
    rs = load(
        tmp_path, RULE_TESTS.replace("advance: 15m\n    expect: {findings: 2}", "expect: {findings: 2}")
    )
    results = run_tests(rs, {"t.node-silent"})
    assert [(r.expected, r.actual, r.passed) for r in results] == [(2, 0, False), (0, 0, True), (0, 0, True)]
    assert "expected 2 findings, got 0" in results[0].describe()


def test_rule_test_counts_sequence_step_errors(tmp_path: Path) -> None:
    doc = rule_doc(
        "t.faulty-seq",
        """\
kind: generic
sequence:
  by: [actor.ip]
  within: 10m
  steps:
    - match: action == "a" and raw.n > 5
    - match: action == "b"
tests:
  - name: string compared to a number
    events: [{action: a, raw: {n: "x"}}, {action: b}]
    expect: {findings: 0}
""",
    )
    results = run_tests(load(tmp_path, doc))
    assert [(r.actual, r.errors, r.passed) for r in results] == [(0, 1, False)]


def test_vigil_rules_test_cli(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(RULE_TESTS)
    res = run_vigil("rules", "test", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.decode().strip().splitlines()[-1] == "8 passed, 0 failed"


# -- vigil replay -----------------------------------------------------------------------------------------


def jsonl(path: Path, events: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    return path


def canonical(eid: str, minute: float, **kw: Any) -> dict[str, Any]:
    return {"id": eid, "time": at(minute * 60).isoformat().replace("+00:00", "Z"), "kind": "generic", **kw}


def replay(rules: Path, *args: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    res = run_vigil("replay", "--rules", str(rules), "--stats", *args)
    assert res.returncode == 0, res.stderr.decode()
    return [orjson.loads(line) for line in res.stdout.splitlines()], orjson.loads(res.stderr.splitlines()[-1])


BRUTE = rule_doc(
    "t.brute",
    'kind: generic\nmatch: action == "login" and outcome == "failure"\n'
    "threshold: {count: 3, window: 10m, group_by: [actor.ip]}\n",
)


def test_replay_threshold_sorts_out_of_order_input(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(BRUTE)
    fail = {"action": "login", "outcome": "failure", "actor": {"ip": "192.0.2.1"}}
    # file order: the newest first; in time order f1, f2, f3 (f3 crosses), then f9 much later
    data = jsonl(
        tmp_path / "events.jsonl",
        [
            canonical("f9", 60, **fail),
            canonical("f3", 3, **fail),
            canonical("f1", 1, **fail),
            canonical("other", 2, action="login", outcome="failure", actor={"ip": "192.0.2.2"}),
            canonical("f2", 2, **fail),
        ],
    )
    findings, stats = replay(rules, str(data))
    assert [(f["rule"], f["event_ids"], f["time"], f["group"], f["value"]) for f in findings] == [
        ("t.brute", ["f3"], "2026-01-01T00:03:00Z", {"actor.ip": "192.0.2.1"}, 3)
    ]
    assert findings[0]["form"] == "threshold"
    assert stats["events"] == 5 and stats["findings"] == 1
    assert stats["detector"]["late"] == 0  # sorted: nothing was late
    assert stats["detector"]["rules"]["t.brute"]["keys"] >= 1


def test_replay_advance_fires_a_flatline_at_the_end(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        rule_doc(
            "t.silent",
            'kind: node.telemetry\nmatch: action == "hb"\nflatline: {period: 10m, group_by: [node.id]}\n',
        )
    )
    hb = lambda eid, m, node: canonical(eid, m, kind="node.telemetry", action="hb", node={"id": node})  # noqa: E731
    data = jsonl(tmp_path / "hb.jsonl", [hb("a1", 0, "a"), hb("b1", 1, "b"), hb("a2", 5, "a")])
    assert replay(rules, str(data))[0] == []  # nothing due yet without --advance
    findings, stats = replay(rules, "--advance", "15m", str(data))
    findings.sort(key=lambda f: f["time"])  # timers due at once come out in state order
    assert [(f["rule"], f["group"], f["time"], f["form"]) for f in findings] == [
        ("t.silent", {"node.id": "b"}, "2026-01-01T00:11:00Z", "flatline"),
        ("t.silent", {"node.id": "a"}, "2026-01-01T00:15:00Z", "flatline"),
    ]
    assert stats["findings"] == 2


def test_replay_state_carries_a_sequence_across_runs(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        rule_doc(
            "t.seq",
            "kind: generic\nsequence:\n  by: [actor.ip]\n  within: 30m\n  steps:\n"
            '    - match: action == "a"\n    - match: action == "b"\n',
        )
    )
    state = tmp_path / "state" / "detector.json"
    first = jsonl(tmp_path / "1.jsonl", [canonical("a1", 0, action="a", actor={"ip": "x"})])
    second = jsonl(tmp_path / "2.jsonl", [canonical("b1", 10, action="b", actor={"ip": "x"})])
    assert replay(rules, "--state", str(state), str(first))[0] == []
    assert state.exists()
    kept = tmp_path / "after-first.json"
    kept.write_bytes(state.read_bytes())
    findings, _ = replay(rules, "--state", str(state), str(second))
    assert [(f["rule"], f["event_ids"]) for f in findings] == [("t.seq", ["a1", "b1"])]
    # a changed rule starts from empty state (so the second file alone finds nothing), and --stats says so
    rules.write_text(rules.read_text().replace("within: 30m", "within: 40m"))
    res = run_vigil("replay", "--rules", str(rules), "--stats", "--state", str(kept), str(second))
    assert res.returncode == 0 and res.stdout == b""
    assert b"dropped (rule changed): t.seq" in res.stderr


def test_replay_state_completes_a_threshold_begun_in_the_first_run(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(BRUTE)
    fail = {"action": "login", "outcome": "failure", "actor": {"ip": "192.0.2.1"}}
    state = tmp_path / "detector.json"
    first = jsonl(tmp_path / "1.jsonl", [canonical("f1", 1, **fail), canonical("f2", 2, **fail)])
    second = jsonl(tmp_path / "2.jsonl", [canonical("f3", 3, **fail)])
    assert replay(rules, "--state", str(state), str(first))[0] == []
    findings, _ = replay(rules, "--state", str(state), str(second))
    assert [(f["rule"], f["event_ids"], f["value"]) for f in findings] == [("t.brute", ["f3"], 3)]


# -- faults (reliability A11): a rule that raises is counted, and every other rule still sees the event ------


def test_a_rule_whose_state_update_raises_is_counted_and_the_others_still_run(
    tmp_path: Path, caplog: Any
) -> None:
    ruleset = rules(tmp_path, *SINGLE, *STATEFUL)
    events = mixed_events()
    reads = [e for e in events if e.kind == "azure.keyvault" and e.action == "secretget"]
    poison = {reads[3].id, reads[7].id}
    reference = Detector(ruleset)
    expected = [(f.rule, f.event_ids) for e in events for f in reference.process(e)]
    det = Detector(ruleset)
    burst = next(r for r in det.thresholds.values() if r.rule.id == "t.burst")
    real = det._updates[id(burst.rule)]

    def buggy(e: Event, t: int, out: list[Any]) -> None:  # a bug that shows on two events
        if e.id in poison:
            raise KeyError("bug")
        real(e, t, out)

    det._updates[id(burst.rule)] = buggy
    got = [(f.rule, f.event_ids) for e in events for f in det.process(e)]
    # what t.burst would have counted on the poison events is lost; nothing else changes
    assert [x for x in got if x[0] != "t.burst"] == [x for x in expected if x[0] != "t.burst"]
    assert det.matcher.errors["t.burst"] == 2
    assert det.stats()["rules"]["t.burst"]["errors"] == 2  # type: ignore[index]
    logged = [r for r in caplog.records if "t.burst" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None  # the first fault, with its traceback


def test_a_timer_that_raises_is_counted_and_not_retried_before_its_next_due_time(tmp_path: Path) -> None:
    det = Detector(rules(tmp_path, *STATEFUL))
    silent = next(iter(det.flatlines.values()))
    calls = [0]

    def broken(watermark: int, out: list[Any]) -> None:
        calls[0] += 1
        raise RuntimeError("timer bug")

    silent.due = broken  # type: ignore[method-assign]
    det.process(ev("a", 0, kind="azure.keyvault", action="secretget", resource="/r/1"))
    found = [det.process(ev(f"b{i}", 2000 + i, kind="azure.keyvault", action="keydelete")) for i in range(50)]
    assert calls[0] == 1 and det.matcher.errors["t.silent"] == 1  # due once, then pushed past the watermark
    assert all(isinstance(f, list) for f in found)


def test_replay_dead_letters_an_event_detection_fails_on_and_goes_on(tmp_path: Path) -> None:
    from vigil.events.deadletter import DeadLetter
    from vigil.streams.replay import replay as replay_files

    fail = {"action": "login", "outcome": "failure", "actor": {"ip": "192.0.2.1"}}
    data = jsonl(tmp_path / "events.jsonl", [canonical(f"f{i}", i, **fail) for i in range(1, 6)])
    det = poison(Detector(rules(tmp_path, BRUTE)), "f2")
    letters: list[DeadLetter] = []
    found: list[Any] = []
    stats = replay_files([str(data)], det, on_findings=found.extend, on_dead=letters.extend)
    assert stats.events == 5 and stats.dead_letters == 1
    assert [(d.source, d.reason, d.record["id"]) for d in letters] == [
        ("replay", "detection failed: ZeroDivisionError: a bug", "f2")
    ]
    assert [f.event_ids for f in found] == [("f4",)]  # f1, f3, f4: the third failure crosses
