"""rule-engine as Vigil's parser, validator and reference evaluator (the oracle of the property test).

Expressions are parsed by rule-engine's own grammar and LALR tables (:class:`VigilParser`), with four node
types swapped so that rule-engine evaluates them the way :mod:`vigil.rules.expr` documents: regexes run on
RE2, ``in`` on a null container is false, ordering against null is false, and ``x[k]`` is always the safe
``x&[k]``. Events reach rule-engine as views (:class:`EventView`, :class:`StructView`, :class:`MapView`) so
that it never copies a mapping and ``.name`` is always a key lookup (:class:`RefContext`); rule-engine's
typed attributes (``.length``, ``.as_lower``) are therefore not part of the language.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, Final

import msgspec
import re2  # type: ignore[import-untyped]
import rule_engine  # type: ignore[import-untyped]
from rule_engine import ast as re_ast
from rule_engine import errors as re_errors
from rule_engine._vendor.ply import yacc  # type: ignore[import-untyped]
from rule_engine.parser import Parser as _ReParser  # type: ignore[import-untyped]

from vigil.events.model import Event
from vigil.rules.functions import FUNCTIONS, re2_compile, re2_message


def to_ref(value: Any) -> Any:
    """An event value as rule-engine reads it: mappings as :class:`MapView`, arrays as tuples."""
    if isinstance(value, Mapping):
        return MapView(value)
    if isinstance(value, list):
        return tuple(to_ref(v) for v in value)
    return value


def from_ref(value: Any) -> Any:
    """A rule-engine result as the compiled closures use it (Decimal -> int/float, tuple -> list)."""
    if isinstance(value, Decimal):
        if value.is_finite() and value == value.to_integral_value():
            return int(value)
        return float(value)
    if isinstance(value, tuple):
        return [from_ref(v) for v in value]
    if isinstance(value, MapView):
        return value.data
    if isinstance(value, Mapping):
        return {k: from_ref(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return frozenset(from_ref(v) for v in value)
    return value


class MapView(Mapping[Any, Any]):
    """A read-only view that hands rule-engine converted values without copying the mapping (a ``dict``
    would be deep-copied by rule-engine on every access)."""

    __slots__ = ("data",)

    def __init__(self, data: Mapping[Any, Any]) -> None:
        self.data = data

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, Decimal):  # rule-engine numbers: JSON object keys are strings anyway
            raise KeyError(key)
        return to_ref(self.data[key])

    def __iter__(self) -> Iterator[Any]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


class StructView(Mapping[str, Any]):
    """``actor``/``resource``/``node`` as rule-engine sees them."""

    __slots__ = ("obj",)

    def __init__(self, obj: msgspec.Struct) -> None:
        self.obj = obj

    def __getitem__(self, key: str) -> Any:
        if key not in self.obj.__struct_fields__:
            raise KeyError(key)
        return getattr(self.obj, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.obj.__struct_fields__)

    def __len__(self) -> int:
        return len(self.obj.__struct_fields__)


def _ref_function(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        return fn(*(a.data if isinstance(a, MapView) else a for a in args))

    call.__name__ = fn.__name__
    return call


_REF_FUNCTIONS: Final = {name: _ref_function(fn) for name, (fn, _) in FUNCTIONS.items()}


class EventView:
    """The object rule-engine resolves top-level symbols against."""

    __slots__ = ("event", "lists")

    def __init__(self, event: Event, lists: Mapping[str, Any]) -> None:
        self.event = event
        self.lists = lists

    def resolve(self, name: str) -> Any:
        if name in _REF_FUNCTIONS:
            return _REF_FUNCTIONS[name]
        if name == "lists":
            return MapView(self.lists)
        if name not in Event.__struct_fields__:
            raise re_errors.SymbolResolutionError(name)
        value = getattr(self.event, name)
        if isinstance(value, msgspec.Struct):
            return StructView(value)
        return to_ref(value)


def _resolve(thing: Any, name: str) -> Any:
    if isinstance(thing, EventView):
        return thing.resolve(name)
    raise re_errors.SymbolResolutionError(name)


class RefContext(rule_engine.Context):  # type: ignore[misc]
    """Missing symbols read as null; ``.name`` is always a key lookup (no rule-engine typed attributes)."""

    def __init__(self) -> None:
        super().__init__(default_value=None, default_timezone="utc", resolver=_resolve)

    def resolve_attribute(self, thing: Any, object_: Any, name: str) -> Any:
        if isinstance(object_, Mapping):
            return object_.get(name)
        return None


class _Re2Fuzzy(re_ast.FuzzyComparisonExpression):  # type: ignore[misc]
    def _compile_regex(self, regex: str) -> Any:
        try:
            return re2_compile(regex)
        except re2.error as exc:
            raise re_errors.RegexSyntaxError(re2_message(exc), error=exc, value=regex) from None


_ORDER_OPS: Final = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}


class _NullFalseOrdering(re_ast.ArithmeticComparisonExpression):  # type: ignore[misc]
    def evaluate(self, thing: Any) -> Any:
        left, right = self.left.evaluate(thing), self.right.evaluate(thing)
        if left is None or right is None:
            return False
        if isinstance(left, tuple) or isinstance(right, tuple):
            raise re_errors.EvaluationError("data type mismatch (arrays cannot be ordered)")
        return self._ArithmeticComparisonExpression__op_arithmetic_values(_ORDER_OPS[self.type], left, right)


class _NullSafeContains(re_ast.ContainsExpression):  # type: ignore[misc]
    """``in`` on a null container, ``null in "string"`` and an array/mapping in a set are false."""

    def evaluate(self, thing: Any) -> Any:
        container = self.container.evaluate(thing)
        if container is None:
            return False
        if isinstance(container, (str, set, frozenset)):
            member = self.member.evaluate(thing)
            if member is None and isinstance(container, str):
                return False
            if isinstance(container, (set, frozenset)) and not _hashable(member):
                return False
        return super().evaluate(thing)


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


class VigilParser(_ReParser):  # type: ignore[misc]
    """rule-engine's grammar and LALR tables, with four node types swapped for Vigil's semantics:
    RE2 regexes, null-safe ``in``, ordering against null is false, and ``x[k]`` is always the safe ``x&[k]``.
    """

    def __init__(self) -> None:
        base = rule_engine.Rule.parser
        try:  # reuse the tables rule-engine built at import (building them again takes most of a second)
            productions = [_rebind(p, self) for p in base._parser.productions]
            tables = SimpleNamespace(lr_productions=productions, lr_action=base._parser.action)
            tables.lr_goto = base._parser.goto
            self.debug, self.context = False, None
            self._lexer = base._lexer.clone()
            self._parser = yacc.LRParser(tables, self.p_error)
        except Exception:  # pragma: no cover - a different vendored PLY: build the tables ourselves
            super().__init__()

    def p_expression_fuzzy_comparison(self, p: Any) -> None:
        super().p_expression_fuzzy_comparison(p)
        p[0].cls = _Re2Fuzzy

    def p_expression_arithmetic_comparison(self, p: Any) -> None:
        super().p_expression_arithmetic_comparison(p)
        p[0].cls = _NullFalseOrdering

    def p_expression_contains(self, p: Any) -> None:
        super().p_expression_contains(p)
        node = p[0] if len(p) == 4 else p[0].args[2]
        node.cls = _NullSafeContains

    def p_expression_getitem(self, p: Any) -> None:
        super().p_expression_getitem(p)
        p[0].kwargs["safe"] = True


for _name in ("fuzzy_comparison", "arithmetic_comparison", "contains", "getitem"):  # the grammar lives in
    _method = getattr(VigilParser, f"p_expression_{_name}")  # the docstrings, which PLY reads if it rebuilds
    _method.__doc__ = getattr(_ReParser, f"p_expression_{_name}").__doc__


def _rebind(production: Any, parser: Any) -> Any:
    clone = copy.copy(production)
    clone.callable = getattr(parser, production.func) if production.func else None
    return clone


class RefRule(rule_engine.Rule):  # type: ignore[misc]
    """A rule-engine Rule parsed by :class:`VigilParser`."""

    parser = VigilParser()
