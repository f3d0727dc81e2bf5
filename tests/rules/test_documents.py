"""Reading rule files: hostile input refused quickly, YAML restrictions, and positions inside scalars."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import FIXTURES
from vigil.rules.documents import MAX_DOCUMENTS, MAX_FILE_BYTES, SourceFile, parse_text
from vigil.rules.loader import load_rules
from vigil.rules.positions import scalar_offset_position

BROKEN = FIXTURES / "rules" / "broken"


def _where(path: Path) -> list[str]:
    return [f"{Path(d.path).name}:{d.line}:{d.col} {d.code}" for d in load_rules([path]).diagnostics]


# -- hostile input (reliability.md B7) ---------------------------------------------------------------------


def test_alias_bomb_refused_quickly() -> None:
    start = time.perf_counter()
    rs = load_rules([BROKEN / "alias_bomb.yaml"])
    assert time.perf_counter() - start < 1.0
    (d,) = rs.diagnostics
    assert (d.code, d.line, d.col) == ("E103", 2, 8)
    assert "alias" in d.message


def test_hostile_file_refused_whole(tmp_path: Path) -> None:
    text = "id: t.ok\ntitle: t\nseverity: low\nkind: generic\nmatch: action == 'x'\n---\na: &x [1]\nb: *x\n"
    path = tmp_path / "r.yaml"
    path.write_text(text)
    rs = load_rules([path])
    assert _where(path) == ["r.yaml:8:4 E103"] and rs.rules == ()


def test_oversized_file_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_bytes(b"#" * (MAX_FILE_BYTES + 1))
    start = time.perf_counter()
    rs = load_rules([path])
    assert time.perf_counter() - start < 0.5
    (d,) = rs.diagnostics
    assert (d.code, d.line) == ("E103", 0) and str(MAX_FILE_BYTES) in d.message


def test_too_many_documents_refused_quickly(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text("---\na: 1\n" * (MAX_DOCUMENTS + 1))
    start = time.perf_counter()
    load_rules([path])
    assert time.perf_counter() - start < 1.0
    assert _where(path) == [f"many.yaml:{2 * MAX_DOCUMENTS + 1}:1 E103"]


def test_too_many_documents_without_markers_counted_by_the_parser() -> None:
    out = SourceFile("x.yaml")
    parse_text("a: 1\n" + "--- 1\n" * MAX_DOCUMENTS, out)  # "--- 1" is a marker the pre-check counts too
    assert [d.code for d in out.diagnostics] == ["E103"]


def test_deep_nesting_refused(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 5000 + "]" * 5000)
    start = time.perf_counter()
    rs = load_rules([path])
    assert time.perf_counter() - start < 5.0
    (d,) = rs.diagnostics
    assert d.code == "E103" and "nesting" in d.message


def test_only_yaml_1_2(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("# old\n%YAML 1.1\n---\nlists:\n  a: [yes]\n")
    assert _where(path) == ["r.yaml:2:1 E101"]
    path.write_text("%YAML 1.2\n---\nlists:\n  a: [yes, 1e3x]\n")
    assert _where(path) == []


def test_tags_reported_and_reused_anchors_harmless(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("lists:\n  a: &x [p]\n  b: &x [q]\n  c: [!custom r]\n")
    rs = load_rules([path])  # no ReusedAnchorWarning (warnings are errors in the tests)
    assert [(d.code, d.line, d.col) for d in rs.diagnostics] == [("E112", 4, 7)]
    assert "tagged !custom" in rs.diagnostics[0].message


# -- offsets inside the match: value -----------------------------------------------------------------------


def _offset(text: str, key: str, target: str, nth: int = 0) -> tuple[int, int]:
    """Position of the ``nth`` occurrence of ``target`` in the value of ``key``, mapped back to the source."""
    out = SourceFile("x.yaml")
    parse_text(text, out)
    doc = out.documents[0]
    value = doc.data[key]
    offset = -1
    for _ in range(nth + 1):
        offset = value.index(target, offset + 1)
    return scalar_offset_position(text, doc.position((key,)), value, offset)


def test_offsets_in_plain_and_quoted_scalars() -> None:
    assert _offset('match: action == "x" and lists.nope\n', "match", "lists.nope") == (1, 26)
    assert _offset("match: 'action == ''x'' and lists.nope'\n", "match", "lists.nope") == (1, 29)
    assert _offset('match: "action == \\"x\\" and lists.nope"\n', "match", "lists.nope") == (1, 29)
    assert _offset('match: "tab\\there \\u00e9 lists.nope"\n', "match", "lists.nope") == (1, 26)
    assert _offset("k: 1\nmatch:   a and b\n", "match", "b") == (2, 16)


def test_offsets_in_multi_line_flow_scalars() -> None:
    text = "match: action == 'x'\n  and actor.ip in\n    lists.nope\nnext: 1\n"
    assert _offset(text, "match", "actor.ip") == (2, 7)
    assert _offset(text, "match", "lists.nope") == (3, 5)
    text = 'match: "action == \\"x\\"\n  and lists.nope"\n'
    assert _offset(text, "match", "lists.nope") == (2, 7)


def test_offsets_in_block_scalars() -> None:
    literal = 'id: x\nmatch: |\n  action == "x"\n\n  and lists.nope\n    or actor.ip == "1"\nnext: 1\n'
    assert _offset(literal, "match", "action") == (3, 3)
    assert _offset(literal, "match", "lists.nope") == (5, 7)
    assert _offset(literal, "match", "actor.ip") == (6, 8)
    folded = 'match: >-\n  action == "x"\n  and lists.nope\n\n  or y\n'
    assert _offset(folded, "match", "lists.nope") == (3, 7)
    assert _offset(folded, "match", "or y") == (5, 3)
    nested = "tests:\n  - m: |2\n       x\n      and y\n"
    assert _offset_nested(nested) == (4, 11)


def _offset_nested(text: str) -> tuple[int, int]:
    out = SourceFile("x.yaml")
    parse_text(text, out)
    doc = out.documents[0]
    value = doc.data["tests"][0]["m"]
    return scalar_offset_position(text, doc.position(("tests", 0, "m")), value, value.index("y"))


@pytest.mark.parametrize("offset", [0, 5, 1000])
def test_offsets_never_fail(offset: int) -> None:
    # an offset past the end, or a scalar the mapper cannot follow, falls back to the scalar's position
    assert scalar_offset_position("match: abc\n", (1, 8), "abc", offset) in {(1, 8), (1, 11)}
    assert scalar_offset_position("", (5, 1), "abc", offset) == (5, 1)
