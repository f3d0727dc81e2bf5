"""Bucket functions: the rules filed under one index key, evaluated by one generated Python function.

The closures of ``vigil/rules/expr*.py`` cost a few Python calls per clause. Once the index has narrowed an
event to its candidate rules, those calls are most of the remaining cost, so each bucket of candidates is
also compiled into one function whose body is a sequence of plain ``if`` tests, one per rule::

    def _b17(e, out, R, P, K, fault):
        try:
            if (e.actor.id is not None and 'abc' in e.actor.id) and (not (e.outcome == 'failure')):
                out.append(R[3])
        except Exception as x:
            fault(R[3], e, x)
        ...

Only clause shapes whose Python meaning is exactly the closure compiler's are emitted as source: ``==`` and
``!=`` between a string field of the event's structs and a string, ``true``, ``false`` or ``null``; ``in``
with a literal list of strings; ``startswith``/``endswith``/``contains`` of a string field and a string
literal; ``not``, ``and``, ``or``. String literals are written inline (``repr`` of a ``str`` is an exact
Python literal, and it saves a global look-up per clause); other constants are ``K[i]``. Every other
clause (``raw.*``, regexes, lists, functions) calls its compiled closure (``P[i](e)``), so meaning never
depends on which path ran. Each rule has its own ``try``: a fault in one rule is counted and the others
still run.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, Final

from rule_engine import ast as re_ast  # type: ignore[import-untyped]

from vigil.events.model import Event
from vigil.rules.expr_source import SCALARS, STRUCTS, flatten, path_of
from vigil.rules.model import Rule

#: a bucket function: (event, output list) -> None; appends the rules that match
BucketFn = Callable[[Event, list[Rule]], None]
Fault = Callable[[Rule, Event, Exception], None]

_STR_KINDS: Final = frozenset({"str", "str?"})
#: what compile_dispatch writes after ``e.``: an attribute path of plain names
_FIELD_PATH: Final = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")


_SCALAR_KINDS: Final = _STR_KINDS | {"bool?"}


def _field(node: Any, kinds: frozenset[str] = _STR_KINDS) -> str | None:
    """``e.action`` / ``e.actor.ip`` for an event field whose kind is in ``kinds``, else None."""
    p = path_of(node)
    if p is None:
        return None
    root, steps = p
    if not steps and SCALARS.get(root) in kinds:
        return f"e.{root}"
    if len(steps) == 1 and not steps[0][0] and STRUCTS.get(root, {}).get(steps[0][1]) in kinds:
        return f"e.{root}.{steps[0][1]}"
    return None


class _Emitter:
    """Turns one rule's residual clauses into a Python expression over ``e``."""

    def __init__(self, consts: list[Any]) -> None:
        self.consts = consts

    def const(self, value: Any) -> str:
        """A literal: strings inline (``repr`` of a ``str`` is exact Python), other values as ``K[i]``."""
        if type(value) is str:
            return repr(value)
        self.consts.append(value)
        return f"K[{len(self.consts) - 1}]"

    def emit(self, node: Any) -> str | None:
        if isinstance(node, re_ast.LogicExpression) and node.type in ("and", "or"):
            left, right = self.emit(node.left), self.emit(node.right)
            return None if left is None or right is None else f"({left} {node.type} {right})"
        if isinstance(node, re_ast.UnaryExpression) and node.type == "not":
            inner = self.emit(node.right)
            return None if inner is None else f"(not {inner})"
        if isinstance(node, re_ast.ComparisonExpression) and node.type in ("eq", "ne"):
            return self._compare(node)
        if isinstance(node, re_ast.ContainsExpression):
            field = _field(node.member)
            container = node.container
            if field is None or not isinstance(container, re_ast.ArrayExpression):
                return None
            items = list(container.value)
            if not all(isinstance(i, re_ast.StringExpression) for i in items):
                return None
            return f"({field} in {self.const(frozenset(i.value for i in items))})"
        if isinstance(node, re_ast.FunctionCallExpression) and len(node.arguments) == 2:
            name = getattr(node.function, "name", None)
            field = _field(node.arguments[0])
            lit = node.arguments[1]
            if field is None or not isinstance(lit, re_ast.StringExpression):
                return None
            k = self.const(lit.value)
            if name == "startswith":
                return f"({field} is not None and {field}.startswith({k}))"
            if name == "endswith":
                return f"({field} is not None and {field}.endswith({k}))"
            if name == "contains":
                return f"({field} is not None and {k} in {field})"
        return None

    def _compare(self, node: Any) -> str | None:
        op = "==" if node.type == "eq" else "!="
        for side, other in ((node.left, node.right), (node.right, node.left)):
            if isinstance(other, re_ast.StringExpression) and (field := _field(side)) is not None:
                return f"({field} {op} {self.const(other.value)})"
            if isinstance(other, re_ast.BooleanExpression | re_ast.NullExpression):
                field = _field(side, _SCALAR_KINDS)
                if field is not None:
                    value = getattr(other, "value", None)
                    return f"({field} {'is' if op == '==' else 'is not'} {value!r})"
        return None


def compile_buckets(buckets: Sequence[Sequence[tuple[Rule, frozenset[int]]]], fault: Fault) -> list[BucketFn]:
    """One function per bucket of (rule, proven clauses); all generated into one module, compiled once."""
    rules: list[Rule] = []
    parts: list[Callable[[Event], Any]] = []
    consts: list[Any] = []
    emitter = _Emitter(consts)
    lines: list[str] = []
    for b, bucket in enumerate(buckets):
        lines.append(f"def _b{b}(e, out):")
        if not bucket:
            lines.append("    return")
        for rule, proven in bucket:
            rules.append(rule)
            r = len(rules) - 1
            lines += [
                "    try:",
                f"        if {_condition(rule, proven, emitter, parts)}:",
                f"            out.append(R[{r}])",
                "    except Exception as x:",
                f"        fault(R[{r}], e, x)",
            ]
    namespace: dict[str, Any] = {"R": rules, "P": parts, "K": consts, "fault": fault}
    # The source is generated above from validated ASTs; literals enter it only as K[...] references.
    exec(compile("\n".join(lines) + "\n", "<vigil buckets>", "exec"), namespace)
    return [namespace[f"_b{b}"] for b in range(len(buckets))]


def compile_dispatch(
    always: BucketFn | None, lookups: Sequence[tuple[str, int, dict[str, BucketFn]]], name: str
) -> BucketFn:
    """One function that runs a merged bucket for an event: its always-function, then, per lookup (an event
    field, how much of its value is the key: ``n`` == 0 all of it, ``n`` > 0 the first ``n`` characters,
    ``n`` < 0 the last ``-n``, and the table of key -> bucket function), the function filed under the
    event's key. The same walk as the matcher's loop over ``(getter, n, table)`` tuples, written out: the
    field reads become attribute loads and the key's slice a constant, with no tuple unpacking, getter call
    or branch on ``n`` per lookup (this loop was the largest single item of matching).

    ``field`` is one of the matcher's secondary fields (``actor.ip``: struct attributes, no user text)."""
    lines = ["def _m(e, out):"]
    namespace: dict[str, Any] = {}
    if always is not None:
        namespace["A"] = always
        lines.append("    A(e, out)")
    for i, (field, n, table) in enumerate(lookups):
        if not _FIELD_PATH.fullmatch(field):
            raise ValueError(f"not an event field: {field!r}")
        namespace[f"T{i}"] = table
        key = "v" if n == 0 else f"v[:{n}]" if n > 0 else f"v[{n}:]"
        lines += [
            f"    v = e.{field}",
            "    if type(v) is str:",
            f"        f = T{i}.get({key})",
            "        if f is not None:",
            "            f(e, out)",
        ]
    if len(lines) == 1:
        lines.append("    return")
    exec(compile("\n".join(lines) + "\n", f"<vigil bucket {name}>", "exec"), namespace)
    run: BucketFn = namespace["_m"]
    return run


def _condition(
    rule: Rule, proven: frozenset[int], emitter: _Emitter, parts: list[Callable[[Event], Any]]
) -> str:
    expr = rule.expr
    operands = flatten(expr.syntax_tree, "and")
    if len(operands) < 2 or not expr.part_closures:
        # one operand (or no split closures): the whole expression, as source if possible
        source = emitter.emit(expr.syntax_tree)
        if source is not None:
            return source
        parts.append(expr.residual(proven))
        return f"P[{len(parts) - 1}](e)"
    terms: list[str] = []
    for i, operand in enumerate(operands):
        if i in proven:
            continue
        source = emitter.emit(operand)
        if source is None:
            parts.append(expr.part_closures[i])
            source = f"P[{len(parts) - 1}](e)"
        terms.append(source)
    return " and ".join(terms) if terms else "True"
