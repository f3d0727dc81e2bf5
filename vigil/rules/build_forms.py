"""Compiling the stateful forms of a rule document (``threshold``, ``sequence``, ``flatline``).

The schema (``schema_forms.py``) has checked their shape and fields; here each sequence step's ``match`` is
compiled against the loaded lists and macros (with the rule's own ``match``, when it has one, ANDed in as a
common filter), and an error inside a step's expression is reported at its exact ``line:col``. Steps that
name another rule are resolved by :func:`check_references` once every rule of the set is built, because
the named rule may live in another file.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any, Final

from vigil.rules.diagnostics import CODES, Diagnostic
from vigil.rules.documents import Document
from vigil.rules.expr import CompiledExpr, ExprError, compile_expression
from vigil.rules.model import Flatline, Rule, Sequence, Step, Threshold
from vigil.rules.positions import scalar_offset_position
from vigil.rules.schema import RuleDoc
from vigil.rules.schema_forms import parse_duration

#: flatline groups are forgotten after this long without an event (or 10 periods), unless the rule says
DEFAULT_EXPIRE: Final = timedelta(hours=24)


def build_threshold(spec: RuleDoc) -> Threshold | None:
    t = spec.threshold
    if t is None:
        return None
    low, high = t.bounds
    return Threshold(
        measure="distinct" if t.distinct else "sum" if t.sum else "count",
        window=parse_duration(t.window),
        at_least=low,
        at_most=high,
        field=t.distinct or t.sum,
        group_by=tuple(t.group_by),
    )


def build_flatline(spec: RuleDoc) -> Flatline | None:
    f = spec.flatline
    if f is None:
        return None
    period = parse_duration(f.period)
    expire = parse_duration(f.expire) if f.expire else max(period * 10, DEFAULT_EXPIRE)
    return Flatline(period=period, expire=expire, group_by=tuple(f.group_by))


def build_sequence(
    doc: Document, spec: RuleDoc, compile_ctx: Any, rid: str | None, out: list[Diagnostic]
) -> Sequence | None:
    """Each step compiled; None (with diagnostics in ``out``) when any step's expression is wrong."""
    seq = spec.sequence
    if seq is None:
        return None
    steps: list[Step] = []
    ok = True
    for i, step in enumerate(seq.steps):
        line, col = doc.position(("sequence", "steps", i))
        expr: CompiledExpr | None = None
        if step.match is not None:
            expr = _compile_step(doc, i, step.match, spec.match, compile_ctx, rid, out)
            ok = ok and expr is not None
        steps.append(
            Step(
                name=step.name or f"step {i + 1}",
                by=tuple(step.by if step.by is not None else seq.by),
                expr=expr,
                kinds=frozenset(step.kind) if step.kind is not None else frozenset(spec.kind),
                rule_id=step.rule,
                absent=step.absent,
                line=line,
                col=col,
            )
        )
    return Sequence(within=parse_duration(seq.within), steps=tuple(steps)) if ok else None


def _compile_step(
    doc: Document, i: int, text: str, common: str | None, ctx: Any, rid: str | None, out: list[Diagnostic]
) -> CompiledExpr | None:
    loc = ("sequence", "steps", i, "match")
    try:
        compile_expression(text, lists=ctx.lists, macros=ctx.macros, cost_budget=ctx.budget)
        if common is None:
            return compile_expression(text, lists=ctx.lists, macros=ctx.macros, cost_budget=ctx.budget)
        combined = f"({common}) and ({text})"
        return compile_expression(combined, lists=ctx.lists, macros=ctx.macros, cost_budget=ctx.budget)
    except ExprError as exc:
        start = doc.position(loc)
        inside = exc.offset is not None and exc.offset <= len(text)
        pos = scalar_offset_position(doc.text, start, text, exc.offset) if inside and exc.offset else start
        code = exc.code if exc.code in CODES else "E120"
        out.append(doc.diagnostic(code, f"steps[{i}].match: {exc.message}", pos, rid))
        return None


def check_references(rules: Iterable[Rule]) -> tuple[list[Rule], list[Diagnostic]]:
    """Resolve steps that name other rules: the named rule must exist and be a single-event or an at_least
    threshold rule (its findings are known when the event is processed). Rules with a bad reference are
    dropped."""
    rules = list(rules)
    forms: dict[str, str] = {r.id: r.form for r in rules}
    # an at_most threshold fires from the watermark timer, not on an event: nothing a step could wait for
    forms |= {r.id: "at_most threshold" for r in rules if r.threshold and r.threshold.at_most is not None}
    keep: list[Rule] = []
    diagnostics: list[Diagnostic] = []
    for rule in rules:
        bad = False
        for i, step in enumerate(rule.sequence.steps if rule.sequence else ()):
            if step.rule_id is None:
                continue
            form = forms.get(step.rule_id)
            problem = (
                f"steps[{i}].rule: no rule {step.rule_id!r} is loaded"
                if form is None
                else f"steps[{i}].rule: {step.rule_id!r} is a {form} rule; a step can name a single-event or "
                "an at_least threshold rule"
                if form not in ("event", "threshold")
                else ""
            )
            if problem:
                bad = True
                diagnostics.append(Diagnostic("E137", problem, rule.path, step.line, step.col, rule.id))
        if not bad:
            keep.append(rule)
    return keep, diagnostics
