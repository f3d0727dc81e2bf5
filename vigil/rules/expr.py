"""Rule expressions: the ``match:`` language, compiled to Python closures over canonical events.

The grammar is rule-engine's (https://zerosteiner.github.io/rule-engine/syntax.html); rule-engine parses and
validates every expression and stays the reference evaluator. What an expression means is defined here.

Fields
    ``id time kind action outcome severity``, ``actor.{id,name,type,ip,app_id,tenant}``,
    ``resource.{id,type,name,subscription,group}``, ``node.{id,attested,measurement}``, ``labels.KEY`` and
    ``raw.PATH`` (any depth; ``raw["odd key"][0]`` item syntax too). Anything else, such as ``actor.colour``
    or ``foo``, is rejected when the rule loads (E121; a bare unknown name where a condition is expected is
    reported as an undefined macro, E123). ``labels`` and ``raw`` alone are mappings (``"env" in labels``).
Null
    A field the event does not have reads as ``null``, and so does a ``raw`` path that does not exist, runs
    through ``null`` or through a non-object, or indexes past the end of an array: ``raw.x == "y"`` is false
    and ``raw.x == null`` is true. ``.name`` is always a key lookup: rule-engine's typed attributes
    (``.length``, ``.as_lower``) are not part of the language; use ``len()`` and ``lower()``.
Comparisons
    ``==``/``!=`` compare values of the same type; numbers compare by value (``1 == 1.0``) but never equal a
    string or a boolean: ``raw.code == 403`` is false when the source wrote ``"403"`` (write the literal the
    source uses). ``< <= > >=`` order two numbers, two strings, two booleans or two timestamps
    (``time > d"2025-01-01T00:00:00Z"``); either side ``null`` gives false; any other mix (``"403" > 400``)
    is a run-time fault, not false (see below). Comparing a string field with a number literal is rejected
    at load (E124). Number literals behave as Python ints and floats (rule-engine's Decimals are converted).
Logic
    ``and``, ``or``, ``not`` short-circuit and use truthiness (``null``, ``""``, ``0``, empty arrays and
    mappings are false); ``c ? a : b``; ``a ?? b`` is ``a`` unless it is ``null``.
Membership
    ``x in [..]``, ``x in lists.NAME`` (a values list: one set lookup, whatever its size), ``"sub" in s``
    (substring), ``"k" in raw.obj`` (key), ``x in raw.arr``; ``not in``. A ``null`` container gives false.
Regexes
    RE2 only (linear time, no catastrophic backtracking): ``s =~ "p"`` matches at the start, ``s =~~ "p"``
    searches anywhere, ``!~``/``!~~`` negate them. Patterns must be string literals and are compiled when the
    rule loads; what RE2 rejects (backreferences, lookaround) is E125 pointing at the literal. Use ``(?i)``
    for case-insensitive matching. ``null`` matches nothing (``!~`` is true).
Functions
    ``cidr_match(ip, lists.NAME | "10.0.0.0/8" | ["cidr", ..])`` (a cidr list; a bad literal is E128; an
    address that does not parse, such as ``"10.0.0.1:443"``, is false), ``lower(s)``, ``upper(s)``,
    ``startswith(s, "p" | ["p", ..] | lists.NAME)``, ``endswith(s, ...)``, ``contains(s_or_array_or_mapping,
    x)`` (same as ``x in ...``), ``regex(s, "pattern")`` (RE2 search), ``len(x)``. A ``null`` argument gives
    ``null`` (``lower``, ``upper``, ``len``) or false (the tests). Unknown functions, rule-engine's ``$``
    built-ins and wrong argument counts are E127.
Lists and macros
    ``lists.NAME`` names a ``lists:`` entry (undefined: E122). A macro is a named expression used by its bare
    name (``match: kv_secret_read and not from_corp_network``); it is inlined in parentheses before parsing.
    A cycle, or a macro named like an event field or function, is E123; errors inside a macro point at the
    macro's name in the rule.
Run-time faults
    A type error on a value that is present (``lower(raw.count)`` on a number, ordering a string against a
    number) raises :class:`RuleRuntimeError`: the caller counts it against the rule; it is never "no match".
Cost
    Each expression gets a load-time cost (a node 1, a call +2, a regex +10, a rule-engine-evaluated node x4,
    a comprehension 20 + 10x its body); above the budget (default 200) or longer than 10,000 characters it is
    rejected (E126). Syntax errors are E120 with the position rule-engine reports.
Compilation
    Everything above compiles to closures (well under a microsecond for ``kind == "a" and action == "b"``).
    Other rule-engine syntax (arithmetic, comprehensions, slices, mapping literals) is evaluated by
    rule-engine for that subtree only, with the same semantics; ``CompiledExpr.compiled`` is then False.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from dataclasses import field as dc_field
from typing import Any, Final

from rule_engine import ast as re_ast  # type: ignore[import-untyped]
from rule_engine import errors as re_errors

from vigil.events.model import Event
from vigil.rules.expr_compile import Compiler, Fn, all_of
from vigil.rules.expr_ref import EventView, RefContext, RefRule
from vigil.rules.expr_source import (
    EVENT_FIELDS,
    MAX_LENGTH,
    ExprError,
    Source,
    dotted,
    flatten,
    path_of,
    tokenize,
)
from vigil.rules.functions import RuleRuntimeError
from vigil.rules.model import ListDef

__all__ = [
    "DEFAULT_COST_BUDGET",
    "EVENT_FIELDS",
    "CompiledExpr",
    "ExprError",
    "IndexHint",
    "RuleRuntimeError",
    "compile_expression",
    "evaluate_reference",
]

DEFAULT_COST_BUDGET: Final = 200


@dataclass(frozen=True)
class IndexHint:
    """A requirement for the expression to be true: ``event[field]`` is a string that is in ``values``, or
    starts with one of ``prefixes``, or ends with one of ``suffixes``. Hints come from the top-level ``and``
    chain (``==``, ``in [..]``, ``in lists.NAME``, ``startswith()``, ``endswith()``, and ``or`` of those on
    one field)."""

    field: str
    values: frozenset[str]
    prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    #: which operand of the top-level ``and`` chain this hint is (see :meth:`CompiledExpr.residual`)
    clause: int = dc_field(default=-1, compare=False)


class CompiledExpr:
    """A validated, compiled expression: call it with an event for a bool (or a RuleRuntimeError)."""

    __slots__ = (
        "_clauses",
        "_fn",
        "_lists",
        "_macros",
        "_parts",
        "_ref_lists",
        "_rule",
        "compiled",
        "cost",
        "fields",
        "hints",
        "text",
    )

    def __init__(
        self, text: str, rule: Any, fn: Fn, compiler: Compiler, hints: tuple[IndexHint, ...]
    ) -> None:
        self.text = text
        self.fields: frozenset[str] = frozenset(compiler.fields)
        self.hints = hints
        self.cost: int = compiler.cost
        self.compiled: bool = not compiler.fallback
        self._fn = fn
        self._rule = rule
        self._ref_lists = compiler.ref_lists
        self._lists: Mapping[str, ListDef] = compiler.lists
        self._macros: Mapping[str, str] = {}
        self._clauses: list[tuple[str, CompiledExpr | ExprError]] | None = None
        #: closures of the top-level ``and`` operands, for :meth:`residual`
        self._parts: list[Fn] = []

    def _clause(self, text: str) -> CompiledExpr | ExprError:
        if text == self.text:
            return self
        try:
            return compile_expression(text, lists=self._lists, macros=self._macros, cost_budget=sys.maxsize)
        except ExprError as exc:
            return exc

    def __repr__(self) -> str:
        return f"CompiledExpr({self.text!r}, cost={self.cost}, compiled={self.compiled})"

    def residual(self, proven: Iterable[int]) -> Fn:
        """The bare closure (it may raise any exception on a fault, where calling the expression raises
        :class:`RuleRuntimeError`) of the top-level ``and`` chain without the operands in
        ``proven``: an index that has already established those clauses (an event found under
        ``action == "x"`` needs no second look at ``action``) evaluates only the rest."""
        skip = set(proven)
        if not skip or len(self._parts) < 2:
            return self._fn
        rest = [f for i, f in enumerate(self._parts) if i not in skip]
        if not rest:
            return _always_true
        return rest[0] if len(rest) == 1 else all_of(rest)

    @property
    def syntax_tree(self) -> Any:
        """rule-engine's AST of the expression (macros expanded), for code generators."""
        return self._rule.statement.expression

    @property
    def part_closures(self) -> list[Fn]:
        """Closures of the top-level ``and`` operands (empty when the expression was not split)."""
        return self._parts

    def __call__(self, event: Event) -> bool:
        try:
            return self._fn(event)  # type: ignore[no-any-return]
        except RuleRuntimeError:
            raise
        except Exception as exc:
            raise RuleRuntimeError(f"{type(exc).__name__}: {exc}") from exc

    def reference(self, event: Event) -> bool:
        """Evaluate with rule-engine itself (the oracle of the compiled closures)."""
        try:
            return bool(self._rule.evaluate(EventView(event, self._ref_lists)))
        except Exception as exc:
            raise RuleRuntimeError(f"{type(exc).__name__}: {exc}") from exc

    def explain(self, event: Event) -> list[tuple[str, bool | None, str | None]]:
        """Per top-level clause of the ``and``/``or`` chain: (its text, result or None, error or None)."""
        if self._clauses is None:
            self._clauses = [(text, self._clause(text)) for text in split_clauses(self.text)]
        out: list[tuple[str, bool | None, str | None]] = []
        for text, clause in self._clauses:
            if isinstance(clause, ExprError):
                out.append((text, None, clause.message))
                continue
            try:
                out.append((text, clause(event), None))
            except RuleRuntimeError as exc:
                out.append((text, None, str(exc)))
        return out


def compile_expression(
    text: str,
    *,
    lists: Mapping[str, ListDef] | None = None,
    macros: Mapping[str, str] | None = None,
    cost_budget: int = DEFAULT_COST_BUDGET,
) -> CompiledExpr:
    """Parse, validate and compile ``text``; raises :class:`ExprError` (E120-E128, offsets into ``text``)."""
    if len(text) > MAX_LENGTH:
        raise ExprError("E126", f"expression longer than {MAX_LENGTH} characters", None)
    lists = lists or {}
    src = Source(text, macros or {})
    compiler = Compiler(src, lists)
    try:
        rule = _parse(src)
        src.check_literal_attributes()
        fn = compiler.boolean(rule.statement.expression)
    except ExprError as exc:
        raise src.in_macro(exc) from None
    except RecursionError:
        raise ExprError("E126", "expression is nested too deeply", None) from None
    if compiler.cost > cost_budget:
        raise ExprError("E126", f"expression cost {compiler.cost} exceeds the budget of {cost_budget}", None)
    out = CompiledExpr(text, rule, fn, compiler, extract_hints(rule.statement.expression, lists))
    out._macros = macros or {}
    parts = flatten(rule.statement.expression, "and")
    if len(parts) > 1 and out.hints:
        part_compiler = Compiler(src, lists)  # the operands again, one closure each (cost already counted)
        out._parts = [part_compiler.boolean(p) for p in parts]
    return out


def _always_true(event: Any) -> bool:
    return True


def evaluate_reference(
    expr: CompiledExpr | str,
    event: Event,
    *,
    lists: Mapping[str, ListDef] | None = None,
    macros: Mapping[str, str] | None = None,
) -> bool:
    """Evaluate through rule-engine itself: the oracle for the compiled closures. Raises RuleRuntimeError."""
    if isinstance(expr, str):
        expr = compile_expression(expr, lists=lists, macros=macros, cost_budget=sys.maxsize)
    return expr.reference(event)


def _parse(src: Source) -> Any:
    try:
        return RefRule(src.expanded, RefContext())
    except re_errors.RegexSyntaxError as exc:
        raise ExprError(
            "E125", f"invalid regular expression {exc.value!r}: {exc}", src.find_string(exc.value)
        ) from None
    except re_errors.RuleSyntaxError as exc:
        tok = exc.token
        offset, macro = src.origin(tok.lexpos if tok is not None else len(src.expanded))
        what = f"syntax error near {tok.value!r}" if tok is not None else "syntax error at the end"
        raise ExprError("E120", what + (f" (in macro {macro!r})" if macro else ""), offset) from None
    except re_errors.SyntaxError as exc:
        raise ExprError("E120", str(exc.message), None) from None
    except RecursionError:
        raise ExprError("E126", "expression is nested too deeply", None) from None
    except re_errors.EngineError as exc:
        raise ExprError("E124", f"type error: {exc.message}", None) from None
    except (ArithmeticError, ValueError, TypeError) as exc:
        raise ExprError("E124", f"type error: {exc}", None) from None


def _hint(node: Any, lists: Mapping[str, ListDef]) -> IndexHint | None:
    if isinstance(node, re_ast.LogicExpression) and node.type == "or":
        hints = [_hint(n, lists) for n in flatten(node, "or")]
        found = [h for h in hints if h is not None]
        if len(found) < len(hints) or len({h.field for h in found}) != 1:
            return None
        values = frozenset[str]().union(*(h.values for h in found))
        prefixes = tuple(p for h in found for p in h.prefixes)
        return IndexHint(found[0].field, values, prefixes, tuple(s for h in found for s in h.suffixes))
    if isinstance(node, re_ast.ComparisonExpression) and node.type == "eq":
        for side, other in ((node.left, node.right), (node.right, node.left)):
            if (f := _hint_field(side)) and isinstance(other, re_ast.StringExpression):
                return IndexHint(f, frozenset({other.value}))
    if isinstance(node, re_ast.ContainsExpression) and (f := _hint_field(node.member)):
        members = _strings(node.container, lists)
        return IndexHint(f, frozenset(members)) if members is not None else None
    if isinstance(node, re_ast.FunctionCallExpression) and len(node.arguments) == 2:
        name = getattr(node.function, "name", None)
        if name in ("startswith", "endswith") and (f := _hint_field(node.arguments[0])):
            arg = node.arguments[1]
            affixes = [arg.value] if isinstance(arg, re_ast.StringExpression) else _strings(arg, lists)
            if affixes is None:
                return None
            if name == "startswith":
                return IndexHint(f, frozenset(), tuple(affixes))
            return IndexHint(f, frozenset(), (), tuple(affixes))
    return None


def _hint_field(node: Any) -> str | None:
    p = path_of(node)
    if p is None or p[0] == "lists" or not all(isinstance(k, str) for _, k in p[1]):
        return None
    return dotted(*p)


def _strings(node: Any, lists: Mapping[str, ListDef]) -> list[str] | None:
    """The strings of a literal array/set of strings or of a values list; None for anything else."""
    if isinstance(node, (re_ast.ArrayExpression, re_ast.SetExpression)):
        members = list(node.value)
        ok = all(isinstance(m, re_ast.StringExpression) for m in members)
        return [m.value for m in members] if ok else None
    p = path_of(node)
    if p and p[0] == "lists" and len(p[1]) == 1 and (d := lists.get(p[1][0][1])) and d.kind == "values":
        return sorted(d.values)
    return None


def extract_hints(node: Any, lists: Mapping[str, ListDef]) -> tuple[IndexHint, ...]:
    """Index hints of the top-level ``and`` chain (see :class:`IndexHint`)."""
    parts = flatten(node, "and")
    hints = ((i, _hint(part, lists)) for i, part in enumerate(parts))
    return tuple(replace(h, clause=i) for i, h in hints if h is not None)


def split_clauses(text: str) -> list[str]:
    """The top-level ``and``/``or`` operands of ``text`` (outer parentheses dropped; ``?:`` stays whole)."""
    while True:
        try:
            toks = tokenize(text)
        except re_errors.RuleSyntaxError:
            return [text.strip()]
        toks = [t for t in toks if t.type != "COMMENT"]
        end = toks[-1].lexpos + len(toks[-1].value) if toks else 0
        depth, start, clauses, ternary = 0, 0, [], False
        for tok in toks:
            depth += tok.type in ("LPAREN", "LBRACKET", "LBRACE")
            depth -= tok.type in ("RPAREN", "RBRACKET", "RBRACE")
            ternary |= depth == 0 and tok.type == "QMARK"
            if depth == 0 and tok.type in ("AND", "OR"):
                clauses.append(text[start : tok.lexpos].strip())
                start = tok.lexpos + len(tok.value)
        clauses.append(text[start:end].strip())
        if ternary:
            return [text[:end].strip()]
        if len(clauses) > 1 or not _wrapped(toks):
            return clauses
        text = text[toks[0].lexpos + 1 : toks[-1].lexpos]


def _wrapped(toks: list[Any]) -> bool:
    """Whether the first token's ``(`` closes at the last token."""
    if len(toks) < 2 or toks[0].type != "LPAREN" or toks[-1].type != "RPAREN":
        return False
    depth = 0
    for i, tok in enumerate(toks):
        depth += (tok.type == "LPAREN") - (tok.type == "RPAREN")
        if depth == 0:
            return i == len(toks) - 1
    return False
