"""Embedded rule tests and replay through the CLI, as an analyst runs them."""

from __future__ import annotations

from pathlib import Path

import orjson

from tests.conftest import EVENT_FIXTURES, run_vigil

RULE = """\
id: kv.forbidden-secret-read
title: Forbidden secret read
status: test
severity: high
tags: [attack.credential_access, attack.t1552]
kind: azure.keyvault
match: action == "secretget" and outcome == "failure"
tests:
  - name: forbidden read fires
    events: [{kind: azure.keyvault, action: secretget, outcome: failure}]
    expect: {findings: 1}
  - name: allowed read is quiet
    events: [{kind: azure.keyvault, action: secretget, outcome: success}]
    expect: {findings: 0}
"""


def test_rules_test_passes_and_reports_counts(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RULE)
    res = run_vigil("rules", "test", str(path))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.decode().strip().splitlines()[-1] == "2 passed, 0 failed"


def test_rules_test_failure_names_rule_case_expected_and_actual(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RULE.replace("expect: {findings: 0}", "expect: {findings: 2}"))
    res = run_vigil("rules", "test", str(path))
    assert res.returncode == 1
    out = res.stdout.decode()
    assert "FAIL kv.forbidden-secret-read :: allowed read is quiet: expected 2 findings, got 0" in out
    assert out.strip().splitlines()[-1] == "1 passed, 1 failed"


def test_replay_prints_findings_and_stats(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RULE)
    data = EVENT_FIXTURES / "keyvault" / "good_envelope_azure_md.json"
    res = run_vigil("replay", "--rules", str(path), "--stats", str(data))
    assert res.returncode == 0, res.stderr
    findings = [orjson.loads(x) for x in res.stdout.splitlines()]
    assert [f["rule"] for f in findings] == ["kv.forbidden-secret-read"]
    f = findings[0]
    assert f["severity"] == "high" and f["score"] == 70 and len(f["event_ids"]) == 1 and f["time"]
    assert f["group"]["resource.id"].endswith("/vaults/kv-cctrain-weu")
    stats = orjson.loads(res.stderr.splitlines()[-1])
    assert stats["events"] == 2 and stats["findings"] == 1 and stats["dead_letters"] == 0
    assert stats["rule_errors"] == 0 and stats["events_per_second"] > 0


def test_rules_new_scaffolds_a_rule_that_lints_and_passes(tmp_path: Path) -> None:
    for kind in ("azure.keyvault", "attestation", "node.telemetry", "azure.activity"):
        out = tmp_path / f"{kind}.yaml"
        res = run_vigil("rules", "new", kind, "--output", str(out))
        assert res.returncode == 0, res.stderr
        test = run_vigil("rules", "test", str(out))
        assert test.returncode == 0, test.stdout + test.stderr
        assert b"2 passed, 0 failed" in test.stdout
    again = run_vigil("rules", "new", "azure.keyvault", "--output", str(tmp_path / "azure.keyvault.yaml"))
    assert again.returncode == 1 and b"not overwriting" in again.stderr
    assert run_vigil("rules", "new", "nope").returncode == 2


def test_explain_shows_clauses(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RULE)
    data = EVENT_FIXTURES / "keyvault" / "good_envelope_azure_md.json"
    res = run_vigil("rules", "explain", "--rules", str(path), "kv.forbidden-secret-read", str(data))
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode()
    assert "=> MATCH" in out and "=> no match" in out
    assert 'outcome == "failure"' in out


SEQUENCE = """\
id: t.fail-then-release
title: attestation failed, then a key release
severity: critical
sequence:
  by: [node.id]
  within: 2m
  steps:
    - {name: failure, kind: attestation, match: 'outcome == "failure"'}
    - {kind: azure.keyvault, match: 'action == "keyrelease"'}
---
id: t.silent
title: node silent
severity: high
kind: node.telemetry
match: "true"
flatline: {period: 90s, group_by: [node.id]}
"""


def test_explain_walks_sequence_steps_and_runs_the_stateful_form(tmp_path: Path) -> None:
    rules = tmp_path / "r.yaml"
    rules.write_text(SEQUENCE)
    events = tmp_path / "ev.jsonl"
    events.write_text(
        '{"id":"a1","time":"2024-01-01T00:00:00Z","kind":"attestation","action":"x","outcome":"failure",'
        '"node":{"id":"n1"}}\n'
        '{"id":"k1","time":"2024-01-01T00:01:00Z","kind":"azure.keyvault","action":"keyrelease","node":{"id":"n1"}}\n'
        '{"id":"t1","time":"2024-01-01T00:01:30Z","kind":"node.telemetry","action":"hb","node":{"id":"n1"}}\n'
    )
    res = run_vigil("rules", "explain", "--rules", str(rules), "t.fail-then-release", str(events))
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode()
    assert "form sequence: failure then step 2, within 2m, joined by ['node.id']" in out
    assert "step 1 (failure): outcome" in out and "step 2: action" in out
    assert "1 finding(s) of t.fail-then-release" in out and "events=['a1', 'k1']" in out
    res = run_vigil("rules", "explain", "--rules", str(rules), "t.silent", str(events), "--advance", "5m")
    out = res.stdout.decode()
    assert "form flatline: silent for 1m30s per ['node.id']" in out
    assert "1 finding(s) of t.silent" in out


def test_replay_refuses_broken_rules(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(RULE.replace("severity: high", "severity: extreme"))
    res = run_vigil(
        "replay", "--rules", str(path), str(EVENT_FIXTURES / "keyvault" / "good_envelope_azure_md.json")
    )
    assert res.returncode == 1 and b"r.yaml:4:" in res.stderr
