"""The rule loader: every problem of every file at once, each at its exact ``path:line:col``."""

from __future__ import annotations

import doctest
import shutil
from datetime import UTC, datetime
from pathlib import Path

from tests.conftest import FIXTURES
from vigil.rules import loader
from vigil.rules.diagnostics import Diagnostic
from vigil.rules.loader import load_rules
from vigil.rules.model import AlertAction, RemediateAction

RULES = FIXTURES / "rules"
GOOD = RULES / "good"
BROKEN = RULES / "broken"
OVERLAYS = RULES / "overlays"


def _where(diags: tuple[Diagnostic, ...] | list[Diagnostic]) -> list[str]:
    """``file:line:col CODE`` of each diagnostic (file name only), in report order."""
    return [f"{Path(d.path).name}:{d.line}:{d.col} {d.code}" for d in diags]


def _load_text(tmp_path: Path, text: str, name: str = "r.yaml") -> tuple[str, list[str]]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    rs = load_rules([path])
    return str(path), _where(rs.diagnostics)


# -- the good pack ---------------------------------------------------------------------------------------


def test_good_pack_loads_clean() -> None:
    rs = load_rules([GOOD])
    assert rs.ok and rs.diagnostics == ()
    assert [r.id for r in rs.rules] == [
        "kv.secret-read-outside-allowed-network",
        "kv.key-decrypt-by-managed-identity",
        "storage.anonymous-blob-read",
    ]
    assert set(rs.lists) == {"corp_networks", "break_glass_accounts", "secret_reads"}
    assert rs.macros == {"succeeded": 'outcome == "success"'}
    assert len(rs.hash) == 64


def test_docstring_example_runs() -> None:
    assert doctest.testmod(loader).failed == 0


def test_multi_document_file_and_rule_fields() -> None:
    rs = load_rules([GOOD])
    first, second, storage = rs.rules
    assert (first.path, first.line) == (str(GOOD / "keyvault.yaml"), 2)
    assert (second.path, second.line) == (str(GOOD / "keyvault.yaml"), 30)
    assert first.status == "stable" and first.severity == "high" and first.score == 70
    assert first.kinds == frozenset({"azure.keyvault"})
    assert first.tags == ("attack.credential_access", "attack.t1552")
    assert first.suppress is not None and first.suppress.total_seconds() == 1800
    assert first.actions == (
        AlertAction(("pagerduty", "teams")),
        RemediateAction("rotate_key", "{{ resource.id }}", "auto", {}),
    )
    assert second.score == 50  # medium's default
    assert second.actions == (
        AlertAction(("console",)),
        RemediateAction("lock_storage", "{{ resource.id }}", "required", {"mode": "readonly"}),
    )
    assert storage.kinds == frozenset({"azure.storage"}) and storage.score == 30
    assert first.falsepositives == ("A new office network not yet in corp_networks",)
    assert first.references == ("https://attack.mitre.org/techniques/T1552/",)


def test_lists_of_each_form() -> None:
    rs = load_rules([GOOD])
    nets = rs.lists["corp_networks"]
    assert nets.kind == "cidr" and [str(n) for n in nets.networks] == [
        "10.0.0.0/8",
        "192.168.0.0/16",
        "2001:db8::/32",
    ]
    assert (Path(nets.path).name, nets.line) == ("lists.yaml", 3)
    assert rs.lists["break_glass_accounts"].values == {
        "breakglass@contoso.example",
        "emergency@contoso.example",
    }
    assert rs.lists["secret_reads"].kind == "values" and rs.lists["secret_reads"].values == {
        "secretget",
        "secretlist",
    }


def test_test_events_get_defaults() -> None:
    rs = load_rules([GOOD])
    first = rs.rules[0]
    positive, negative = first.tests
    assert (positive.name, positive.expect_findings, positive.line) == ("external read fires", 1, 22)
    (event,) = positive.events
    assert event.id == "test:kv.secret-read-outside-allowed-network:0:0"
    assert event.time == datetime(2024, 1, 1, tzinfo=UTC)
    assert event.kind == "azure.keyvault"  # the rule's only kind
    assert event.action == "secretget" and event.actor.ip == "203.0.113.9"
    assert negative.expect_findings == 0 and negative.events[0].id.endswith(":1:0")
    explicit, defaulted = rs.rules[2].tests[0].events
    assert explicit.time == datetime(2026, 1, 1, tzinfo=UTC)
    assert defaulted.time == datetime(2024, 1, 1, 0, 0, 1, tzinfo=UTC)  # the epoch plus its position


def test_test_records_are_normalised() -> None:
    rs = load_rules([GOOD])
    case = rs.rules[1].tests[0]
    (event,) = case.events
    assert event.kind == "azure.keyvault" and event.action == "keydecrypt"
    assert event.actor.type == "managedidentity" and event.actor.ip == "10.40.2.15"
    assert event.id.startswith("kv:")


def test_hashes_are_stable_and_follow_content(tmp_path: Path) -> None:
    a, b = load_rules([GOOD]), load_rules([GOOD])
    assert a.hash == b.hash
    assert [r.content_hash for r in a.rules] == [r.content_hash for r in b.rules]
    copy = tmp_path / "good"
    shutil.copytree(GOOD, copy)
    storage = copy / "storage.yaml"
    storage.write_text(storage.read_text().replace("suppress: 1h", "suppress: 2h"))
    c = load_rules([copy])
    assert c.hash != a.hash
    assert [r.content_hash == s.content_hash for r, s in zip(a.rules, c.rules, strict=True)] == [
        True,
        True,
        False,
    ]
    # comments and layout are not content
    storage.write_text("# a comment\n" + storage.read_text().replace("suppress: 2h", "suppress:   2h"))
    assert load_rules([copy]).rules[2].content_hash == c.rules[2].content_hash
    assert load_rules([GOOD], overlays=[OVERLAYS / "prod.yaml"]).hash != a.hash


def test_directories_recursive_sorted_and_filtered(tmp_path: Path) -> None:
    rule = 'id: t.{n}\ntitle: t\nseverity: low\nkind: generic\nmatch: action == "{n}"\n'
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.yml").write_text(rule.format(n="b-z"))
    (tmp_path / "a.yaml").write_text(rule.format(n="a"))
    (tmp_path / "c.yaml").write_text(rule.format(n="c"))
    (tmp_path / "notes.txt").write_text("not: yaml rules")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "x.yaml").write_text("[broken")
    rs = load_rules([tmp_path, tmp_path / "a.yaml"])  # a file named twice is read once
    assert rs.ok, rs.diagnostics
    assert [r.id for r in rs.rules] == ["t.a", "t.b-z", "t.c"]


def test_missing_path_and_unreadable_text(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"id: caf\xe9\n")
    rs = load_rules([tmp_path / "nope", bad])
    assert [(Path(d.path).name, d.code) for d in rs.diagnostics] == [
        ("latin1.yaml", "E100"),
        ("nope", "E100"),
    ]
    assert "UTF-8" in rs.diagnostics[0].message


# -- broken files: exact positions -------------------------------------------------------------------------


def test_yaml_syntax_error() -> None:
    rs = load_rules([BROKEN / "syntax.yaml"])
    (d,) = rs.diagnostics
    assert d.format() == (
        f"{BROKEN / 'syntax.yaml'}:7:15: E101 YAML syntax error: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence on line 6)"
    )
    assert rs.rules == ()


def test_syntax_error_keeps_earlier_documents_diagnostics(tmp_path: Path) -> None:
    text = "id: t.one\ntitle: t\nseverity: low\nkind: generic\nmatch: action == 'x'\nbogus: 1\n---\nid: [\n"
    _, where = _load_text(tmp_path, text)
    assert where == ["r.yaml:6:1 E110", "r.yaml:9:1 E101"]


def test_unknown_keys_with_suggestions() -> None:
    rs = load_rules([BROKEN / "unknown_key.yaml"])
    assert [d.format().split(": ", 1)[1] for d in rs.diagnostics] == [
        "E110 unknown key 'falsepositive'; did you mean 'falsepositives'? (broken.unknown-key)",
        "E110 unknown key 'expected'; did you mean 'expect'? (broken.unknown-key)",
    ]
    assert _where(rs.diagnostics) == ["unknown_key.yaml:6:1 E110", "unknown_key.yaml:12:5 E110"]
    assert rs.rules == ()


def test_a_key_in_the_wrong_place_says_where_it_goes(tmp_path: Path) -> None:
    """A key valid elsewhere in a rule was answered with "did you mean" itself; hints for misspelt keys come
    from the keys valid where the typo is."""
    text = (
        "id: t.one\ntitle: t\nseverity: low\nkind: generic\nmatch: action == 'x'\n"
        "group_by: [actor.ip]\nthreshold: {count: 3, window: 1m, titel: x, windw: 2m}\n"
    )
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    rs = load_rules([path])
    assert [d.format().split(": ", 1)[1] for d in rs.diagnostics] == [
        "E110 unknown key 'group_by' here; it goes under 'flatline' or under 'threshold' (t.one)",
        "E110 unknown key 'titel' (t.one)",  # (title is a key of the rule, not of its threshold)
        "E110 unknown key 'windw'; did you mean 'window'? (t.one)",
    ]


def test_a_key_valid_for_another_kind_of_the_same_place_is_not_sent_where_it_is(tmp_path: Path) -> None:
    """pydantic's location of a key under a tagged union holds the tag (and a list's name is the user's):
    the hint must not say that a key "goes under" the place it already is."""
    text = (
        "id: t.one\ntitle: t\nseverity: low\nkind: generic\nmatch: action == 'x'\n"
        "actions:\n  - alert: console\n    approval: auto\n"
        "---\nlists:\n  nets: {cidr: [10.0.0.0/8], values: [a]}\n"
    )
    path = tmp_path / "r.yaml"
    path.write_text(text, encoding="utf-8")
    messages = [d.message for d in load_rules([path]).diagnostics]
    assert messages == ["unknown key 'approval'", "unknown key 'values'"]


def test_duplicate_id_points_at_second_and_names_first() -> None:
    rs = load_rules([BROKEN / "duplicate_id.yaml"])
    (d,) = rs.diagnostics
    assert (d.code, d.line, d.col, d.rule_id) == ("E113", 8, 5, "dup.same-id")
    assert (
        d.message == f"duplicate rule id 'dup.same-id' (first defined at {BROKEN / 'duplicate_id.yaml'}:1:5)"
    )
    assert [r.title for r in rs.rules] == ["First"]


def test_duplicate_id_across_files(tmp_path: Path) -> None:
    rule = "id: t.same\ntitle: {t}\nseverity: low\nkind: generic\nmatch: action == 'x'\n"
    (tmp_path / "a.yaml").write_text(rule.format(t="a"))
    (tmp_path / "b.yaml").write_text("# b\n" + rule.format(t="b"))
    rs = load_rules([tmp_path])
    assert _where(rs.diagnostics) == ["b.yaml:2:5 E113"]
    assert f"{tmp_path / 'a.yaml'}:1:5" in rs.diagnostics[0].message


def test_duplicate_mapping_key(tmp_path: Path) -> None:
    text = "id: t.dup\ntitle: a\nseverity: low\ntitle: b\nkind: generic\nmatch: action == 'x'\n"
    _, where = _load_text(tmp_path, text)
    assert where == ["r.yaml:4:1 E101"]


def test_bad_cidrs_each_at_its_item() -> None:
    rs = load_rules([BROKEN / "bad_cidr.yaml"])
    assert _where(rs.diagnostics) == [
        "bad_cidr.yaml:5:9 E128",
        "bad_cidr.yaml:6:9 E128",
        "bad_cidr.yaml:7:31 E128",
    ]
    assert "host bits set" in rs.diagnostics[1].message
    assert [str(n) for n in rs.lists["office"].networks] == ["10.0.0.0/8"]  # the list exists, minus bad items


def test_duplicate_list_and_macro_names(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("lists:\n  l: [a]\nmacros:\n  m: action == 'x'\n")
    (tmp_path / "b.yaml").write_text("lists:\n  l: [b]\n---\nmacros:\n  m: action == 'y'\n")
    rs = load_rules([tmp_path])
    assert _where(rs.diagnostics) == ["b.yaml:2:3 E114", "b.yaml:5:3 E114"]
    assert rs.lists["l"].values == {"a"} and rs.macros["m"] == "action == 'x'"


def test_all_problems_of_a_file_at_once() -> None:
    rs = load_rules([BROKEN / "many_problems.yaml"])
    assert _where(rs.diagnostics) == [
        "many_problems.yaml:2:5 E112",  # id pattern
        "many_problems.yaml:3:8 E112",  # empty title
        "many_problems.yaml:4:11 E112",  # severity
        "many_problems.yaml:5:8 E112",  # score is a string
        "many_problems.yaml:6:8 E112",  # tags[0] upper case
        "many_problems.yaml:6:22 E112",  # tags[1] malformed ATT&CK tactic
        "many_problems.yaml:7:24 E112",  # kind[1] unknown
        "many_problems.yaml:9:47 E112",  # threshold group_by: unknown field
        "many_problems.yaml:17:11 E112",  # suppress
        "many_problems.yaml:19:24 E132",  # unknown sink
        "many_problems.yaml:20:16 E132",  # unknown remediation
        "many_problems.yaml:22:15 E131",  # auto approval, experimental rule
        "many_problems.yaml:23:23 E121",  # unknown field in the target template, at the field
        "many_problems.yaml:24:5 E132",  # unknown action
        "many_problems.yaml:27:14 E134",  # invalid test event
        "many_problems.yaml:29:5 E112",  # events and records
        "many_problems.yaml:33:5 E111",  # case without a name
        "many_problems.yaml:36:1 E102",  # a list document
        "many_problems.yaml:38:1 E102",  # a mapping of no known type
    ]
    assert rs.rules == ()
    messages = {d.code: d.message for d in rs.diagnostics}
    assert (
        messages["E134"]
        == "tests[0].events[0]: not a valid canonical event: Invalid enum value 'maybe' - at `$.outcome`"
    )
    assert messages["E121"] == "unknown event field 'resource.idd' in target template"
    assert messages["E111"] == "missing required key 'name' in tests[2]"


def test_expression_errors_inside_the_match_value() -> None:
    rs = load_rules([BROKEN / "expressions.yaml"])
    assert [d.format().split(": ", 1)[0].rsplit("/", 1)[1] + " " + d.code for d in rs.diagnostics] == [
        "expressions.yaml:6:31 E122",  # in the macro's own text
        "expressions.yaml:12:40 E122",  # plain scalar: at lists.nope
        "expressions.yaml:18:41 E125",  # single-quoted: at the regex literal
        "expressions.yaml:24:29 E124",  # double-quoted with escapes: at the comparison
        "expressions.yaml:32:7 E121",  # literal block, second line: at actr.ip
        "expressions.yaml:41:11 E123",  # folded block, third line: at is_robot
        "expressions.yaml:47:26 E122",  # error inside a macro: at the macro's name in the rule
    ]
    assert rs.rules == ()
    assert rs.diagnostics[1].message == "undefined list 'nope'"
    assert rs.diagnostics[1].rule_id == "expr.undefined-list"
    assert rs.diagnostics[0].message.startswith("macro broken_macro: ")


def test_cost_budget(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(
        "id: t.cost\ntitle: t\nseverity: low\nkind: generic\nmatch: action == 'a' or action == 'b'\n"
    )
    assert load_rules([path]).ok
    rs = load_rules([path], cost_budget=1)
    assert [(d.code, d.line, d.col) for d in rs.diagnostics] == [("E126", 5, 8)]


def test_every_broken_file_reported_in_one_run() -> None:
    together = load_rules([BROKEN])
    one_by_one = [d for f in sorted(BROKEN.glob("*.yaml")) for d in load_rules([f]).diagnostics]
    assert sorted(together.diagnostics, key=lambda d: d.format()) == sorted(
        one_by_one, key=lambda d: d.format()
    )
    assert {Path(d.path).name for d in together.diagnostics} == {f.name for f in BROKEN.glob("*.yaml")}


def test_text_with_colon_space_hint(tmp_path: Path) -> None:
    text = "id: t.fp\ntitle: t\nseverity: low\nkind: generic\nmatch: action == 'x'\nfalsepositives:\n  - a note: oops\n"
    path = tmp_path / "r.yaml"
    path.write_text(text)
    (d,) = load_rules([path]).diagnostics
    assert (d.code, d.line, d.col) == ("E112", 7, 5) and "quote it" in d.message


# -- overlays ---------------------------------------------------------------------------------------------


def test_overlay_append_and_replace() -> None:
    rs = load_rules([GOOD], overlays=[OVERLAYS / "prod.yaml"])
    assert rs.ok, rs.diagnostics
    assert [str(n) for n in rs.lists["corp_networks"].networks] == [
        "10.0.0.0/8",
        "192.168.0.0/16",
        "2001:db8::/32",
        "172.16.0.0/12",
    ]
    assert rs.lists["break_glass_accounts"].values == {"prod-breakglass@contoso.example"}
    assert rs.lists["secret_reads"].values == {"secretget", "secretlist", "secretbackup"}
    # the definition's location is kept
    assert Path(rs.lists["corp_networks"].path).name == "lists.yaml"


def test_overlays_apply_in_order(tmp_path: Path) -> None:
    one = tmp_path / "one.yaml"
    two = tmp_path / "two.yaml"
    one.write_text("overlay:\n  lists:\n    secret_reads: {replace: [a]}\n")
    two.write_text("overlay:\n  lists:\n    secret_reads: {append: [b]}\n")
    assert load_rules([GOOD], overlays=[one, two]).lists["secret_reads"].values == {"a", "b"}
    assert load_rules([GOOD], overlays=[two, one]).lists["secret_reads"].values == {"a"}


def test_bad_overlay() -> None:
    rs = load_rules([GOOD], overlays=[OVERLAYS / "bad.yaml"])
    assert _where(rs.diagnostics) == ["bad.yaml:3:5 E133", "bad.yaml:6:29 E128", "bad.yaml:8:7 E112"]
    assert "no_such_list" in rs.diagnostics[0].message
    assert len(rs.rules) == 3  # an overlay problem does not spoil the rules (the set is still not ok)
    assert not rs.ok


def test_overlay_documents_only_from_overlay_files(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    shutil.copytree(GOOD, rules)
    shutil.copy(OVERLAYS / "prod.yaml", rules / "zz-prod.yaml")
    rs = load_rules([rules])
    assert _where(rs.diagnostics) == ["zz-prod.yaml:2:1 E102", "zz-prod.yaml:9:1 E102"]
    assert rs.lists["break_glass_accounts"].values != {"prod-breakglass@contoso.example"}
    rs = load_rules([GOOD], overlays=[GOOD / "lists.yaml"])
    assert _where(rs.diagnostics) == ["lists.yaml:2:1 E102", "lists.yaml:9:1 E102"]


def test_null_in_test_event_data_is_a_value_but_an_empty_setting_is_a_default(tmp_path: Path) -> None:
    text = (
        "id: t.nan\ntitle: t\nseverity: low\nscore:\nkind: node.telemetry\n"
        "match: raw.metrics.loss == null and 'loss' in raw.metrics\n"
        "tests:\n"
        "  - name: null loss\n    events: [{action: a, raw: {metrics: {loss: null}}}]\n    expect: {findings: 1}\n"
        "  - name: no loss\n    events: [{action: a, raw: {metrics: {}}}]\n    expect: {findings: 0}\n"
    )
    (tmp_path / "r.yaml").write_text(text, encoding="utf-8")
    rs = load_rules([tmp_path / "r.yaml"])
    assert rs.ok, [d.format() for d in rs.diagnostics]
    rule = rs.rules[0]
    assert rule.score == 30  # `score:` (empty) means the severity's default
    assert dict(rule.tests[0].events[0].raw) == {"metrics": {"loss": None}}
    from vigil.rules.testing import run_tests

    assert [r.passed for r in run_tests(rs)] == [True, True]


def test_parameter_templates_are_checked_like_targets(tmp_path: Path) -> None:
    """String parameters are templates too (vigil/response/templates.py): an unknown field is E121 at the
    field, an unbalanced brace E112, in a string or a list item; a known field loads."""
    text = (
        "id: r.tpl\ntitle: templated params\nseverity: high\nkind: generic\nmatch: action == 'x'\n"
        "actions:\n"
        "  - remediate: quarantine_vm\n"
        "    target: '{{ node.id }}'\n"
        "    params:\n"
        "      reason: 'seen from {{ actor.ipp }}'\n"
        "      evidence: {note: fixed}\n"
        "  - remediate: lockdown_vault\n"
        "    target: '{{ resource.id }}'\n"
        "    params:\n"
        "      object_id: '{{ actor.id }}'\n"
        "      ip_rules: ['{{ actor.ip }', '{{ raw.x.y }}']\n"
    )
    path, where = _load_text(tmp_path, text)
    assert where == ["r.yaml:10:29 E121", "r.yaml:16:18 E112"]
    rs = load_rules([Path(path)])
    messages = [d.message for d in rs.diagnostics]
    assert messages == [
        "unknown event field 'actor.ipp' in params.reason template",
        "params.ip_rules[0]: unbalanced {{ }} in template",
    ]
    fixed = text.replace("actor.ipp", "actor.ip").replace("'{{ actor.ip }', ", "")
    path, where = _load_text(tmp_path, fixed)
    assert where == []
