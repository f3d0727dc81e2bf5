"""Turning one validated rule document into a compiled :class:`~vigil.rules.model.Rule`.

The loader (``loader.py``) reads and classifies documents and gathers the lists and macros; this module
checks what one rule needs beyond its schema — its expression (compiled against every list and macro
loaded), its action templates, and its test cases, which become real canonical events here — and reports
each problem at the exact ``line:col`` it comes from, inside the ``match:`` text included.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec
import orjson
from pydantic import ValidationError

from vigil.events.batch import BatchNormalizer
from vigil.events.model import KINDS, Event, event_from_mapping
from vigil.rules.build_forms import build_flatline, build_sequence, build_threshold
from vigil.rules.diagnostics import CODES, Diagnostic
from vigil.rules.documents import Document, schema_diagnostics, vocabulary_of
from vigil.rules.expr import DEFAULT_COST_BUDGET, CompiledExpr, ExprError, compile_expression
from vigil.rules.model import Action, AlertAction, ListDef, RemediateAction, Rule, RuleTest
from vigil.rules.positions import scalar_offset_position
from vigil.rules.schema import DEFAULT_TARGET, AlertSpec, RuleDoc, TestSpec
from vigil.rules.schema_forms import field_known, parse_duration

#: test events without a ``time`` get this one plus their position in the case, in seconds
TEST_EPOCH: Final = datetime(2024, 1, 1, tzinfo=UTC)
#: the filter of a sequence rule without a ``match`` of its own (its steps match)
_MATCH_ALL: Final = compile_expression("true")
_TEMPLATE: Final = re.compile(r"\{\{\s*(.*?)\s*\}\}")
VOCABULARY: Final = vocabulary_of(RuleDoc)


@dataclass(slots=True)
class Context:
    """What every rule is compiled against."""

    lists: Mapping[str, ListDef]
    macros: Mapping[str, str]
    cost_budget: int | None = None
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def budget(self) -> int:
        return DEFAULT_COST_BUDGET if self.cost_budget is None else self.cost_budget


def content_hash(data: Any) -> str:
    """sha256 of the canonical JSON of a document (sorted keys, no spaces): the identity of its text."""
    return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


def compile_match(doc: Document, ctx: Context, rule_id: str | None) -> CompiledExpr | None:
    """Compile the ``match`` expression; an error is reported where it is inside the ``match:`` value."""
    text = doc.data.get("match")
    if not isinstance(text, str) or not text.strip():
        return None  # the schema reports it
    try:
        return compile_expression(text, lists=ctx.lists, macros=ctx.macros, cost_budget=ctx.budget)
    except ExprError as exc:
        start = doc.position(("match",))
        pos = start if exc.offset is None else scalar_offset_position(doc.text, start, text, exc.offset)
        code = exc.code if exc.code in CODES else "E120"
        ctx.diagnostics.append(doc.diagnostic(code, exc.message, pos, rule_id))
        return None


def compile_macro(doc: Document, loc: tuple[Any, ...], name: str, ctx: Context) -> None:
    """Compile a macro on its own, so an error in it is reported once, inside its own text."""
    text = doc.data_at(loc)
    if not isinstance(text, str):
        return
    try:
        compile_expression(text, lists=ctx.lists, macros=ctx.macros, cost_budget=ctx.budget)
    except ExprError as exc:
        start = doc.position(loc)
        pos = start if exc.offset is None else scalar_offset_position(doc.text, start, text, exc.offset)
        code = exc.code if exc.code in CODES else "E120"
        ctx.diagnostics.append(doc.diagnostic(code, f"macro {name}: {exc.message}", pos))


def build_rule(doc: Document, ctx: Context) -> Rule | None:
    """The compiled rule of a rule document, or None when it has any error (all of them reported)."""
    data = doc.data
    rid = data.get("id") if isinstance(data.get("id"), str) else None
    before = len(ctx.diagnostics)
    try:
        spec: RuleDoc | None = RuleDoc.model_validate(data)
    except ValidationError as exc:
        ctx.diagnostics += schema_diagnostics(doc, exc, VOCABULARY, rid)
        spec = None
    if "match" not in data and "sequence" not in data:
        message = "missing required key 'match' (only a sequence rule, whose steps match, may omit it)"
        ctx.diagnostics.append(doc.diagnostic("E111", message, doc.start, rid))
    expr = compile_match(doc, ctx, rid) if data.get("match") is not None or spec is None else _MATCH_ALL
    sequence = build_sequence(doc, spec, ctx, rid, ctx.diagnostics) if spec is not None else None
    _check_actions(doc, data, rid, ctx)
    kinds = _kinds_of(data.get("kind"))
    cases = list(enumerate(spec.tests)) if spec else _salvage_tests(data)
    tests = _tests(doc, cases, kinds, rid, ctx)
    if spec is None or expr is None or len(ctx.diagnostics) > before:
        return None
    return Rule(
        id=spec.id,
        title=spec.title,
        status=spec.status,
        severity=spec.severity,
        score=spec.effective_score,
        kinds=frozenset(spec.kind),
        expr=expr,
        description=spec.description,
        tags=tuple(spec.tags),
        suppress=spec.suppress_delta,
        actions=tuple(_actions(spec)),
        tests=tuple(tests),
        references=tuple(spec.references),
        author=spec.author,
        falsepositives=tuple(spec.falsepositives),
        path=doc.path,
        line=doc.start[0],
        content_hash=content_hash(data),
        threshold=build_threshold(spec),
        sequence=sequence,
        flatline=build_flatline(spec),
    )


def _kinds_of(value: Any) -> list[str]:
    values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return [k for k in values if isinstance(k, str) and k in KINDS]


def _salvage_tests(data: Mapping[str, Any]) -> list[tuple[int, TestSpec]]:
    """The valid test cases of a rule whose schema failed, so that their problems are reported too."""
    cases = data.get("tests")
    out: list[tuple[int, TestSpec]] = []
    for i, case in enumerate(cases if isinstance(cases, list) else ()):
        with contextlib.suppress(ValidationError):  # reported by the schema
            out.append((i, TestSpec.model_validate(case)))
    return out


def _actions(spec: RuleDoc) -> list[Action]:
    return [
        AlertAction(sinks=tuple(act.alert))
        if isinstance(act, AlertSpec)
        else RemediateAction(
            act.remediate,
            act.target,
            act.approval,
            dict(act.params),
            act.dry_run,
            act.max_targets,
            act.max_percent,
        )
        for act in spec.actions
    ]


def _check_actions(doc: Document, data: Mapping[str, Any], rid: str | None, ctx: Context) -> None:
    """What the schema cannot see in a remediation: auto approval of an unstable rule, target fields."""
    actions = data.get("actions")
    status = data.get("status", "experimental")
    for i, act in enumerate(actions if isinstance(actions, list) else ()):
        if not isinstance(act, dict) or "remediate" not in act:
            continue
        if act.get("approval") == "auto" and status != "stable":
            pos = doc.position(("actions", i, "approval"))
            message = f"approval: auto requires status: stable (the rule is {status})"
            ctx.diagnostics.append(doc.diagnostic("E131", message, pos, rid))
        target = act.get("target", DEFAULT_TARGET)
        if isinstance(target, str):
            _check_template(doc, ("actions", i, "target"), target, rid, ctx)
        params = act.get("params")
        for name, value in params.items() if isinstance(params, dict) else ():
            # string parameters are templates too (vigil/response/templates.py), so they are checked alike
            if isinstance(value, str):
                _check_template(doc, ("actions", i, "params", name), value, rid, ctx, f"params.{name}")
            for j, item in enumerate(value if isinstance(value, list) else ()):
                if isinstance(item, str):
                    loc = ("actions", i, "params", name, j)
                    _check_template(doc, loc, item, rid, ctx, f"params.{name}[{j}]")


def _check_template(
    doc: Document, loc: tuple[Any, ...], text: str, rid: str | None, ctx: Context, what: str = "target"
) -> None:
    """A template (``what``: the target, or a parameter): ``{{ field }}`` placeholders naming canonical
    event fields."""
    given = doc.data_at(loc) is not None
    start = doc.position(loc) if given else doc.position(loc[:-1])
    for m in _TEMPLATE.finditer(text):
        if not field_known(m.group(1)):
            pos = scalar_offset_position(doc.text, start, text, m.start(1)) if given else start
            message = f"unknown event field {m.group(1)!r} in {what} template"
            ctx.diagnostics.append(doc.diagnostic("E121", message, pos, rid))
    if "{{" in _TEMPLATE.sub("", text) or "}}" in _TEMPLATE.sub("", text):
        message = f"{what}: unbalanced {{{{ }}}} in template"
        ctx.diagnostics.append(doc.diagnostic("E112", message, start, rid))


def _tests(
    doc: Document, cases: list[tuple[int, TestSpec]], kinds: list[str], rid: str | None, ctx: Context
) -> list[RuleTest]:
    """Each case's events, completed with defaults and validated as canonical events (E134 otherwise)."""
    out: list[RuleTest] = []
    for ci, case in cases:
        events: list[Event] = []
        ok = True
        if case.events is not None:
            for n, partial in enumerate(case.events):
                event, problem = _test_event(partial, rid or "rule", ci, n, kinds)
                if event is not None:
                    events.append(event)
                else:
                    ok = False
                    pos = doc.position(("tests", ci, "events", n))
                    message = f"tests[{ci}].events[{n}]: {problem}"
                    ctx.diagnostics.append(doc.diagnostic("E134", message, pos, rid))
        for n, record in enumerate(case.records or ()):
            found, problems = _record_events(record, f"{doc.path}:tests[{ci}].records[{n}]")
            events += found
            for problem in problems:
                ok = False
                pos = doc.position(("tests", ci, "records", n))
                message = f"tests[{ci}].records[{n}]: {problem}"
                ctx.diagnostics.append(doc.diagnostic("E134", message, pos, rid))
        if ok:
            pos = doc.position(("tests", ci))
            advance = parse_duration(case.advance) if case.advance else None
            out.append(RuleTest(case.name, tuple(events), case.expect.findings, pos[0], advance))
    return out


def _test_event(
    partial: dict[str, Any], rid: str, case: int, n: int, kinds: list[str]
) -> tuple[Event | None, str]:
    data = dict(partial)
    data.setdefault("id", f"test:{rid}:{case}:{n}")
    data.setdefault("time", (TEST_EPOCH + timedelta(seconds=n)).isoformat().replace("+00:00", "Z"))
    data.setdefault("action", "")
    if "kind" not in data:
        if len(kinds) != 1:
            return None, "give the event a kind (the rule has several kinds, or none)"
        data["kind"] = kinds[0]
    try:
        return event_from_mapping(data), ""
    except (msgspec.ValidationError, TypeError, ValueError) as exc:
        return None, f"not a valid canonical event: {exc}"


def _record_events(record: dict[str, Any], source: str) -> tuple[list[Event], list[str]]:
    """A raw source record normalised the way ``vigil normalize`` would (format auto-detected)."""
    try:
        body = orjson.dumps(record)
    except TypeError as exc:
        return [], [f"record cannot be written as JSON: {exc}"]
    result = BatchNormalizer("auto").body(body, source)
    problems = [f"record not normalised: {dl.reason}" for dl in result.dead]
    problems += [f"record is a {c.kind} control message, not an event" for c in result.controls]
    if not result.events and not problems:
        problems.append("record produced no event")
    return list(result.events), problems
