"""The compiler behind :mod:`vigil.rules.expr` (the language is documented there).

:class:`Compiler` walks rule-engine's AST once: it validates names, functions, lists, regexes and obvious
type errors, estimates the cost, and returns a closure per node. Nodes it does not translate (arithmetic,
comprehensions, slices, mapping literals) become closures that ask rule-engine to evaluate that subtree, so
an expression is compiled as far as it can be and ``compiled`` is False only when some part is not.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any, Final

from rule_engine import ast as re_ast  # type: ignore[import-untyped]

from vigil.rules import functions as fn
from vigil.rules.expr_ref import EventView, from_ref
from vigil.rules.expr_source import SCALARS, STRUCTS, ExprError, Source, dotted, flatten, path_of
from vigil.rules.model import ListDef

Fn = Callable[[Any], Any]
_ORDER_OPS: Final = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}
_BASIC: Final = frozenset({"str", "num", "bool", "datetime", "timedelta", "bytes"})
_STRING_FUNCTIONS: Final = frozenset({"lower", "upper", "startswith", "endswith", "regex", "cidr_match"})
_RETURNS: Final = {"lower": "str?", "upper": "str?", "len": "num?"}
_CHILDREN: Final = ("left", "right", "container", "start", "stop", "object", "item", "member")
#: cost weights: a node 1, a function call +2, a regex +10, a rule-engine node x4, a comprehension 20 + 10x
REGEX_COST, CALL_COST, FALLBACK_FACTOR, LOOP_BASE, LOOP_FACTOR = 10, 2, 4, 20, 10


def all_of(fns: list[Fn]) -> Fn:
    if len(fns) == 2:
        a, b = fns
        return lambda e: a(e) and b(e)
    if len(fns) == 3:
        a, b, c = fns
        return lambda e: a(e) and b(e) and c(e)

    def check(e: Any) -> bool:
        for f in fns:  # noqa: SIM110 - no generator per event on the hot path
            if not f(e):
                return False
        return True

    return check


def any_of(fns: list[Fn]) -> Fn:
    if len(fns) == 2:
        a, b = fns
        return lambda e: a(e) or b(e)

    def check(e: Any) -> bool:
        for f in fns:  # noqa: SIM110 - no generator per event on the hot path
            if f(e):
                return True
        return False

    return check


def eq_const(get: Fn, value: Any) -> Fn:
    if type(value) is str:
        return lambda e: get(e) == value
    if value is None or type(value) is bool:
        return lambda e: get(e) is value
    return lambda e: fn.eq(get(e), value)


def _bare(kind: str) -> str:
    return kind.rstrip("?")


_WORDS: Final = {"str": "string", "num": "number", "bool": "boolean"}


def _check_kinds(a: str, b: str, ordering: bool, at: int | None) -> None:
    a, b = _bare(a), _bare(b)
    if a in _BASIC and b in _BASIC and a != b:
        what = f"a {_WORDS.get(a, a)} and a {_WORDS.get(b, b)}"
        raise ExprError("E124", f"cannot order {what}" if ordering else f"{what} are never equal", at)


class Compiler:
    """One walk over the AST: validation, cost, the fields read, and a closure per node."""

    def __init__(self, src: Source, lists: Mapping[str, ListDef]) -> None:
        self.src = src
        self.lists = lists
        #: the lists the expression names, as rule-engine reads them (a set, or a CidrSet)
        self.ref_lists: dict[str, Any] = {}
        self.cost = 0
        self.fields: set[str] = set()
        self.fallback = False
        self.scopes: list[str] = []

    # -- positions -----------------------------------------------------------------------------------
    def where(self, node: Any) -> int | None:
        """The best original offset for a node: its path, call or string literal, or an operand's."""
        if (p := path_of(node)) is not None:
            return self.src.find_path([p[0], *(k for _, k in p[1] if isinstance(k, str))])
        if isinstance(node, re_ast.FunctionCallExpression) and isinstance(
            node.function, re_ast.SymbolExpression
        ):
            return self.src.find_call(node.function.name)
        if isinstance(node, re_ast.StringExpression):
            return self.src.find_string(node.value)
        for attr in _CHILDREN:
            child = getattr(node, attr, None)
            if isinstance(child, re_ast.ExpressionBase) and (at := self.where(child)) is not None:
                return at
        return None

    # -- entry points --------------------------------------------------------------------------------
    def boolean(self, node: Any) -> Fn:
        """A closure returning a real bool (truthiness of the value, as rule-engine's ``and``/``not``)."""
        if isinstance(node, re_ast.SymbolExpression) and node.scope is None and self._unknown(node.name):
            at = self.src.find_path([node.name])
            raise ExprError("E123", f"undefined macro (or unknown field) {node.name!r}", at)
        f, kind = self.value(node)
        if kind == "bool":
            return f
        return lambda e: bool(f(e))

    def value(self, node: Any) -> tuple[Fn, str]:
        """A closure computing the node's value, and its static kind ("str", "num?", "any", ...)."""
        self.cost += 1
        if isinstance(node, re_ast.LogicExpression):
            parts = flatten(node, node.type)
            self.cost += len(parts) - 2
            fns = [self.boolean(p) for p in parts]
            return (all_of(fns) if node.type == "and" else any_of(fns)), "bool"
        if isinstance(node, re_ast.UnaryExpression) and node.type == "not":
            f = self.boolean(node.right)
            return (lambda e: not f(e)), "bool"
        if isinstance(node, re_ast.FuzzyComparisonExpression):
            return self.regex_op(node), "bool"
        if isinstance(node, re_ast.ArithmeticComparisonExpression):
            return self.ordering(node), "bool"
        if isinstance(node, re_ast.ComparisonExpression):
            return self.equality(node), "bool"
        if isinstance(node, re_ast.ContainsExpression):
            return self.membership(node.member, node.container), "bool"
        if isinstance(node, re_ast.FunctionCallExpression):
            return self.call(node)
        if isinstance(
            node, (re_ast.SymbolExpression, re_ast.GetAttributeExpression, re_ast.GetItemExpression)
        ):
            return self.access(node)
        if isinstance(node, re_ast.TernaryExpression):
            c, (a, ak), (b, bk) = (
                self.boolean(node.condition),
                self.value(node.case_true),
                self.value(node.case_false),
            )
            return (lambda e: a(e) if c(e) else b(e)), (ak if ak == bk else "any")
        if isinstance(node, re_ast.CoalesceExpression):
            (a, ak), (b, bk) = self.value(node.left), self.value(node.right)
            return (lambda e: v if (v := a(e)) is not None else b(e)), (_bare(ak) if ak == bk else "any")
        if isinstance(node, re_ast.ArrayExpression) and not node.is_reduced:
            fns = [self.value(m)[0] for m in node.value]
            return (lambda e: [f(e) for f in fns]), "array"
        if isinstance(node, (re_ast.ArrayExpression, re_ast.SetExpression)) and node.is_reduced:
            items = from_ref(node.evaluate(None))
            return (lambda e: items), ("array" if isinstance(items, list) else "set")
        if isinstance(node, re_ast.LiteralExpressionBase) and not isinstance(node, re_ast.MappingExpression):
            value = from_ref(node.value)
            return (lambda e: value), _literal_kind(value)
        return self.rule_engine(node)

    def rule_engine(self, node: Any) -> tuple[Fn, str]:
        """Validate a subtree the compiler does not translate, and let rule-engine evaluate it."""
        before = self.cost
        loop = isinstance(node, re_ast.ComprehensionExpression)
        if loop:
            self.value(node.iterable)
            self.scopes.append(node.variable)
            for child in (node.result, node.condition):
                if child is not None:
                    self.value(child)
            self.scopes.pop()
        elif isinstance(node, re_ast.MappingExpression):
            for pair in node.value:
                for part in pair:
                    self.value(part)
        elif isinstance(node, re_ast.SetExpression):
            for member in node.value:
                self.value(member)
        else:
            for attr in (*_CHILDREN, "condition", "case_true", "case_false"):
                if isinstance(child := getattr(node, attr, None), re_ast.ExpressionBase):
                    self.value(child)
        inner = self.cost - before
        self.cost = before + (LOOP_BASE + LOOP_FACTOR * inner if loop else FALLBACK_FACTOR * (inner + 1))
        self.fallback = True
        evaluate, lists = node.evaluate, self.ref_lists
        return (lambda e: from_ref(evaluate(EventView(e, lists)))), "any"

    # -- fields ----------------------------------------------------------------------------------------
    def _unknown(self, name: str) -> bool:
        known = name in SCALARS or name in STRUCTS or name in fn.FUNCTIONS or name == "lists"
        return not known and name not in self.scopes

    def access(self, node: Any) -> tuple[Fn, str]:
        p = path_of(node)
        if p is None:
            if isinstance(node, re_ast.GetItemExpression):
                (c, _), (k, _) = self.value(node.container), self.value(node.item)
                return (lambda e: fn.getitem(c(e), k(e))), "any"
            if isinstance(node, re_ast.GetAttributeExpression):
                (c, _), name = self.value(node.object), node.name
                return (lambda e: fn.getattr_(c(e), name)), "any"
            name = f"${node.name}"
            raise ExprError(
                "E127", f"rule-engine built-in {name} is not available", self.src.find_path([name])
            )
        root, steps = p
        if root in self.scopes:
            return (lambda e: None), "any"  # a comprehension variable: rule-engine evaluates that subtree
        field = dotted(root, steps)
        at = self.src.find_path(field.split("."))
        if root == "lists":
            self.list_ref(node)
            raise ExprError(
                "E124", "a list can only be used with in, contains, startswith, endswith, cidr_match", at
            )
        if root in fn.FUNCTIONS:
            raise ExprError("E127", f"{root} is a function: call it as {root}(...)", at)
        if root in SCALARS and not steps:
            self.fields.add(root)
            return operator.attrgetter(root), SCALARS[root]
        if root in STRUCTS and len(steps) == 1 and steps[0][1] in STRUCTS[root]:
            self.fields.add(field)
            return operator.attrgetter(field), STRUCTS[root][steps[0][1]]
        if (root == "labels" and len(steps) <= 1) or root == "raw":
            self.fields.add(field)
            return fn.path_getter(root, steps), (
                "mapping" if not steps else "str?" if root == "labels" else "any"
            )
        hint = f": use {root}.<field>" if root in STRUCTS and not steps else ""
        raise ExprError("E121", f"unknown event field {field!r}{hint}", at)

    def list_ref(self, node: Any) -> ListDef | None:
        """The list a ``lists.NAME`` node names (E122 if undefined); None if the node is not one."""
        p = path_of(node)
        if p is None or p[0] != "lists" or p[0] in self.scopes:
            return None
        if len(p[1]) != 1 or not isinstance(p[1][0][1], str):
            raise ExprError("E122", "a list is named as lists.NAME", self.src.find_path(["lists"]))
        name = p[1][0][1]
        if name not in self.lists:
            raise ExprError("E122", f"undefined list {name!r}", self.src.find_path(["lists", name]))
        listdef = self.lists[name]
        if name not in self.ref_lists:
            cidr = listdef.kind == "cidr"
            self.ref_lists[name] = fn.CidrSet(listdef.networks) if cidr else set(listdef.values)
        return listdef

    def constants(self, node: Any) -> list[Any] | None:
        """The members of a literal array/set or of a values list; None when the node is neither."""
        if isinstance(node, (re_ast.ArrayExpression, re_ast.SetExpression)) and node.is_reduced:
            self.cost += 1
            return list(from_ref(node.evaluate(None)))
        listdef = self.list_ref(node)
        if listdef is None:
            return None
        if listdef.kind != "values":
            raise ExprError(
                "E124", f"lists.{listdef.name} holds networks: use cidr_match()", self.where(node)
            )
        return sorted(listdef.values)

    # -- operators -------------------------------------------------------------------------------------
    def equality(self, node: Any) -> Fn:
        (a, ak), (b, bk) = self.value(node.left), self.value(node.right)
        _check_kinds(ak, bk, False, self.where(node))
        if _is_scalar_literal(node.right):
            f = eq_const(a, from_ref(node.right.value))
        elif _is_scalar_literal(node.left):
            f = eq_const(b, from_ref(node.left.value))
        else:
            f = lambda e: fn.eq(a(e), b(e))  # noqa: E731
        return (lambda e: not f(e)) if node.type == "ne" else f

    def ordering(self, node: Any) -> Fn:
        (a, ak), (b, bk) = self.value(node.left), self.value(node.right)
        _check_kinds(ak, bk, True, self.where(node))
        if {_bare(ak), _bare(bk)} & {"array", "mapping", "set"}:
            raise ExprError("E124", "arrays and mappings cannot be ordered", self.where(node))
        op, order = _ORDER_OPS[node.type], fn.order
        if _is_scalar_literal(node.right):
            bound = from_ref(node.right.value)
            return lambda e: order(op, a(e), bound)
        return lambda e: order(op, a(e), b(e))

    def regex_op(self, node: Any) -> Fn:
        if not isinstance(node.right, re_ast.StringExpression):
            raise ExprError(
                "E125", "the pattern of a regex operator must be a string literal", self.where(node)
            )
        a, kind = self.value(node.left)
        if _bare(kind) in _BASIC - {"str"}:
            raise ExprError("E124", f"a regex operator needs a string, not a {_bare(kind)}", self.where(node))
        self.cost += REGEX_COST
        test = fn.regex_test(node._right, "match" if node.type.endswith("fzm") else "search")
        return (lambda e: not test(a(e))) if node.type.startswith("ne") else (lambda e: test(a(e)))

    def membership(self, member: Any, container: Any) -> Fn:
        m, mk = self.value(member)
        items = self.constants(container)
        if items is None:
            c, ck = self.value(container)
            if _bare(ck) in _BASIC - {"str"}:
                raise ExprError("E124", f"cannot look inside a {_bare(ck)}", self.where(container))
            return lambda e: fn.contains(c(e), m(e))
        try:
            values = frozenset(items)
        except TypeError:
            return lambda e: m(e) in items
        if _bare(mk) == "str":
            return lambda e: m(e) in values
        check = fn.in_literal(values, tuple(items))
        return lambda e: check(m(e))

    # -- functions -------------------------------------------------------------------------------------
    def call(self, node: Any) -> tuple[Fn, str]:
        f = node.function
        name = (
            (f.name if f.scope is None else f"${f.name}") if isinstance(f, re_ast.SymbolExpression) else None
        )
        if name not in fn.FUNCTIONS:
            what = f"unknown function {name!r}" if name else "only the built-in functions can be called"
            raise ExprError("E127", what, self.src.find_call(name) if name else self.where(node))
        impl, arity = fn.FUNCTIONS[name]
        args = node.arguments
        if len(args) != arity:
            msg = f"{name}() takes {arity} argument{'s' if arity > 1 else ''}, not {len(args)}"
            raise ExprError("E127", msg, self.src.find_call(name))
        self.cost += CALL_COST
        if name == "contains":
            return self.membership(args[1], args[0]), "bool"
        a, kind = self.value(args[0])
        if name in _STRING_FUNCTIONS and _bare(kind) in _BASIC - {"str"} | {"array", "mapping", "set"}:
            raise ExprError("E124", f"{name}() needs a string, not a {_bare(kind)}", self.where(args[0]))
        if name == "cidr_match":
            nets = self.networks(args[1])
            return (lambda e: impl(a(e), nets)), "bool"
        if name == "regex":
            pattern = self.pattern(args[1])
            return (lambda e: pattern(a(e))), "bool"
        if arity == 1:
            return (lambda e: impl(a(e))), _RETURNS[name]
        items = [args[1].value] if isinstance(args[1], re_ast.StringExpression) else self.constants(args[1])
        if items is None:
            b, _ = self.value(args[1])
            return (lambda e: impl(a(e), b(e))), "bool"
        if not all(isinstance(i, str) for i in items):
            raise ExprError("E124", f"{name}() needs string prefixes/suffixes", self.where(args[1]))
        affixes = tuple(items)
        return (lambda e: impl(a(e), affixes)), "bool"

    def networks(self, node: Any) -> fn.CidrSet:
        listdef = self.list_ref(node)
        if listdef is not None:
            if listdef.kind != "cidr":
                msg = f"cidr_match() needs a cidr list; lists.{listdef.name} holds values"
                raise ExprError("E127", msg, self.where(node))
            nets: fn.CidrSet = self.ref_lists[path_of(node)[1][0][1]]  # type: ignore[index]
            return nets
        items = [node.value] if isinstance(node, re_ast.StringExpression) else self.constants(node)
        if items is None or not all(isinstance(i, str) for i in items):
            msg = "cidr_match() takes a CIDR string, an array of them, or lists.NAME of kind cidr"
            raise ExprError("E127", msg, self.where(node))
        try:
            return fn.CidrSet.parse(items)
        except ValueError as exc:
            bad = next(i for i in items if not fn.is_cidr(i))
            raise ExprError("E128", str(exc), self.src.find_string(bad)) from None

    def pattern(self, node: Any) -> Fn:
        if not isinstance(node, re_ast.StringExpression):
            raise ExprError("E125", "the pattern of regex() must be a string literal", self.where(node))
        self.cost += REGEX_COST
        try:
            return fn.regex_test(fn.re2_compile(node.value))
        except fn.RE2Error as exc:
            msg = f"invalid regular expression {node.value!r}: {fn.re2_message(exc)}"
            raise ExprError("E125", msg, self.src.find_string(node.value)) from None


def _is_scalar_literal(node: Any) -> bool:
    return isinstance(node, re_ast.LiteralExpressionBase) and not isinstance(
        node, (re_ast.ArrayExpression, re_ast.SetExpression, re_ast.MappingExpression)
    )


def _literal_kind(value: Any) -> str:
    kind = fn.kind(value)
    return {"string": "str", "number": "num", "boolean": "bool"}.get(kind, kind)
