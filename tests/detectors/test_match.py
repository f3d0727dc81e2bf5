"""The indexed matcher: candidates, matches, per-rule error counting, equality with evaluating every rule."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from vigil.detectors.match import Matcher
from vigil.events.model import Actor, Event, Resource, freeze
from vigil.rules.loader import load_rules
from vigil.rules.model import RuleSet

RULES = """\
id: t.exact
title: exact action
status: test
severity: high
kind: azure.keyvault
match: action == "secretget" and outcome == "failure"
---
id: t.in-list
title: action in list
status: test
severity: medium
kind: [azure.keyvault, azure.activity]
match: action in ["keydelete", "secretdelete"]
---
id: t.prefix
title: prefix
status: test
severity: low
kind: azure.activity
match: startswith(action, "microsoft.keyvault/") and outcome == "success"
---
id: t.unindexed
title: no action clause
status: test
severity: low
kind: azure.keyvault
match: actor.ip == "203.0.113.9"
---
id: t.suffix
title: second level on a suffix
status: test
severity: low
kind: azure.keyvault
match: action == "secretget" and endswith(actor.ip, ".9")
---
id: t.empty-suffix
title: an empty suffix is not indexable
status: test
severity: low
kind: azure.keyvault
match: action == "keydelete" and endswith(actor.ip, "")
---
id: t.faulty
title: compares a string to a number
status: test
severity: low
kind: generic
match: action == "count" and raw.n > 5
"""


def _ruleset(tmp_path: Path) -> RuleSet:
    path = tmp_path / "r.yaml"
    path.write_text(RULES)
    rs = load_rules([path])
    assert rs.ok, [d.format() for d in rs.diagnostics]
    return rs


def _event(kind: str, action: str, **kw: object) -> Event:
    return Event(
        id=f"e-{kind}-{action}",
        time=datetime(2026, 11, 24, tzinfo=UTC),
        kind=kind,
        action=action,
        **kw,  # type: ignore[arg-type]
    )


def test_candidates_come_from_the_index(tmp_path: Path) -> None:
    m = Matcher(_ruleset(tmp_path).rules)
    ids = lambda ev: sorted(r.id for r in m.candidates(ev))  # noqa: E731
    ip = Actor(ip="203.0.113.9")
    assert ids(_event("azure.keyvault", "secretget", outcome="failure", actor=ip)) == [
        "t.exact",
        "t.suffix",
        "t.unindexed",
    ]
    # second level: t.exact also requires outcome == "failure", t.unindexed actor.ip == "203.0.113.9"
    assert ids(_event("azure.keyvault", "secretget", outcome="success")) == []
    assert ids(_event("azure.keyvault", "keydelete", actor=ip)) == [
        "t.empty-suffix",
        "t.in-list",
        "t.unindexed",
    ]
    assert ids(_event("azure.keyvault", "secretget", actor=Actor(ip="203.0.113.8"))) == []
    assert ids(_event("azure.activity", "keydelete")) == ["t.in-list"]
    assert ids(_event("azure.activity", "microsoft.keyvault/vaults/write", outcome="success")) == ["t.prefix"]
    assert ids(_event("azure.activity", "microsoft.compute/virtualmachines/write")) == []
    assert ids(_event("azure.storage", "secretget")) == []
    assert m.unindexed == ["t.unindexed"]


def test_findings_carry_rule_and_event(tmp_path: Path) -> None:
    m = Matcher(_ruleset(tmp_path).rules)
    ev = _event(
        "azure.keyvault",
        "secretget",
        outcome="failure",
        actor=Actor(ip="203.0.113.9"),
        resource=Resource(id="/subscriptions/s/resourcegroups/g/providers/microsoft.keyvault/vaults/kv1"),
    )
    found = {f.rule: f for f in m.match(ev)}
    assert set(found) == {"t.exact", "t.suffix", "t.unindexed"}
    f = found["t.exact"]
    assert f.severity == "high" and f.score == 70 and f.event_ids == (ev.id,) and f.time == ev.time
    assert dict(f.group) == {"resource.id": ev.resource.id}
    assert f.rule_hash


def test_runtime_faults_are_counted_not_swallowed(tmp_path: Path) -> None:
    m = Matcher(_ruleset(tmp_path).rules)
    bad = _event("generic", "count", raw=freeze({"n": "not a number"}))
    good = _event("generic", "count", raw=freeze({"n": 9}))
    assert m.match(bad) == []
    assert m.errors["t.faulty"] == 1
    assert [f.rule for f in m.match(good)] == ["t.faulty"]
    assert m.match(_event("generic", "count")) == []  # absent field reads as null: no fault, no match
    assert m.errors["t.faulty"] == 1


def test_index_never_changes_results(tmp_path: Path) -> None:
    rs = _ruleset(tmp_path)
    m = Matcher(rs.rules)
    events = [
        _event(kind, action, outcome=outcome, actor=Actor(ip=ip))
        for kind in ("azure.keyvault", "azure.activity", "generic")
        for action in ("secretget", "keydelete", "microsoft.keyvault/vaults/write", "count", "x")
        for outcome in ("success", "failure")
        for ip in ("203.0.113.9", "198.51.100.1")
    ]
    for ev in events:
        indexed = sorted(f.rule for f in m.match(ev))
        brute = sorted(r.id for r in rs.rules if (not r.kinds or ev.kind in r.kinds) and _safe(r.expr, ev))
        assert indexed == brute, ev


def _safe(expr, ev) -> bool:  # type: ignore[no-untyped-def]
    try:
        return bool(expr(ev))
    except Exception:
        return False


def test_index_and_residual_closures_agree_with_full_evaluation(tmp_path: Path) -> None:
    """Generated rules of every indexable shape over generated events: indexed == evaluate everything."""
    import importlib.util
    import sys

    bench = Path(__file__).resolve().parents[2] / "bench"
    sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location("bench_rules", bench / "rules.py")
    assert spec is not None and spec.loader is not None
    bench_rules = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_rules)
    from gen_activity import lines

    from vigil.events.batch import BatchNormalizer

    bench_rules.write_rules(bench_rules.make_rules(300, seed=17), tmp_path)
    rs = load_rules([tmp_path])
    assert rs.ok
    m = Matcher(rs.rules)
    events = BatchNormalizer().body(b"".join(lines(400, seed=23)), "s").events
    total = 0
    for ev in events:
        indexed = sorted(f.rule for f in m.match(ev))
        brute = sorted(r.id for r in rs.rules if ev.kind in r.kinds and r.expr(ev))
        assert indexed == brute, ev.id
        total += len(brute)
    assert total > 20  # the generated rules do fire
    assert not m.errors


def test_new_actions_reuse_compiled_buckets(tmp_path: Path) -> None:
    """Ever-new action names (hostile input) must not cost a compilation each."""
    m = Matcher(_ruleset(tmp_path).rules)
    for i in range(500):
        m.match(_event("azure.activity", f"microsoft.keyvault/vaults/x{i}/write", outcome="success"))
        m.match(_event("azure.keyvault", f"made-up-{i}"))
    assert len(m._compiled) <= 4
    found = m.match(_event("azure.activity", "microsoft.keyvault/vaults/y/write", outcome="success"))
    assert [f.rule for f in found] == ["t.prefix"]


def test_merged_buckets_share_the_functions_of_the_slots_they_have_in_common(tmp_path: Path) -> None:
    """The rules filed under one key of the kind's unindexed bucket recur in every merged bucket of that kind:
    their function is generated once, and still finds what it should for each action."""
    m = Matcher(_ruleset(tmp_path).rules)
    ip = Actor(ip="203.0.113.9")
    for action in ("secretget", "keydelete", "made-up"):
        found = {f.rule for f in m.match(_event("azure.keyvault", action, actor=ip))}
        assert "t.unindexed" in found, action
    runs = set()
    slots = 0
    for _always, lookups, _dispatch in m._compiled.values():
        for field, _n, table in lookups:
            slots += len(table)
            if field == "actor.ip" and "203.0.113.9" in table:
                runs.add(table["203.0.113.9"].run)
    assert len(m._compiled) == 3
    assert len(runs) == 1  # one function for the shared slot, not one per merged bucket
    assert len(m._slot_fns) < slots


def test_generated_conditions_keep_literals_that_spell_field_reads(tmp_path: Path) -> None:
    """The generated bucket functions write field reads as source (``e.actor.name``); a string literal that
    spells such a read stays a literal, and several clauses on one field in one bucket agree."""
    path = tmp_path / "r.yaml"
    docs = [
        ("t.spelled", 'contains(actor.name, "e.actor.name")'),
        ("t.prefix", 'startswith(actor.name, "alice")'),
        ("t.ip", 'actor.ip == "e.actor.ip" or actor.ip == "203.0.113.9"'),
        ("t.none", "actor.name == null"),
    ]
    path.write_text(
        "---\n".join(
            f"id: {rid}\ntitle: {rid}\nstatus: test\nseverity: low\nkind: generic\n"
            f'match: action == "login" and {expr}\n'
            for rid, expr in docs
        )
    )
    rs = load_rules([path])
    assert rs.ok, [d.format() for d in rs.diagnostics]
    m = Matcher(rs.rules)
    cases = {
        "alice": {"t.prefix"},
        "alice e.actor.name": {"t.prefix", "t.spelled"},
        "bob": set(),
        None: {"t.none"},
    }
    for name, want in cases.items():
        for ip, extra in (("203.0.113.9", {"t.ip"}), ("e.actor.ip", {"t.ip"}), ("10.0.0.1", set())):
            event = _event("generic", "login", actor=Actor(name=name, ip=ip))
            assert {r.id for r in m.matching(event)} == want | extra, (name, ip)


def test_a_merged_bucket_walk_reads_each_lookup_key_as_the_loop_did() -> None:
    """``compile_dispatch`` writes out the walk of a merged bucket: the always-function first, then per lookup
    the whole value, its first n or its last n characters as the key; a value that is None (or not a str)
    looks nothing up, and a field that is not an event field is refused rather than written into source."""
    import pytest

    from vigil.detectors.codegen import compile_dispatch

    calls: list[str] = []

    def fn(name: str):  # type: ignore[no-untyped-def]
        return lambda e, out: calls.append(name)

    run = compile_dispatch(
        fn("always"),
        [
            ("actor.ip", 0, {"203.0.113.9": fn("ip")}),
            ("resource.name", 3, {"vau": fn("prefix"), "va": fn("short")}),
            ("resource.name", -2, {"01": fn("suffix")}),
            ("actor.name", 0, {"x": fn("name")}),
        ],
        "t",
    )
    ev = _event(
        "azure.keyvault", "secretget", actor=Actor(ip="203.0.113.9"), resource=Resource(name="vault01")
    )
    run(ev, [])
    assert calls == ["always", "ip", "prefix", "suffix"]  # (actor.name is None: no look-up)
    calls.clear()
    run(_event("azure.keyvault", "secretget", resource=Resource(name="va")), [])
    assert calls == ["always", "short"]  # a value shorter than the prefix is its own key, as value[:n] is
    assert compile_dispatch(None, [], "empty")(ev, []) is None
    with pytest.raises(ValueError, match="not an event field"):
        compile_dispatch(None, [("actor.ip or __import__('os')", 0, {})], "bad")
