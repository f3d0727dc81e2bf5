"""The front end of rule expressions (the language is documented in :mod:`vigil.rules.expr`).

:class:`Source` expands macros and maps every position of the expanded text back to the original, so an
error inside a macro points at the macro's name, and finds where a name, call or string literal is, so that
errors found on the AST (which has no positions) still carry an offset. The static kinds of the canonical
event fields are derived from :class:`vigil.events.model.Event` here, and the small AST helpers shared by the
compiler and the index hints live at the end.
"""

from __future__ import annotations

import bisect
import codecs
import itertools
import typing
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import msgspec
from rule_engine import ast as re_ast  # type: ignore[import-untyped]
from rule_engine import errors as re_errors

from vigil.events.model import Event
from vigil.rules import functions as fn
from vigil.rules.expr_ref import RefRule, from_ref

MAX_LENGTH: Final = 10_000  # characters of expression text, before macros
MAX_EXPANDED: Final = 100_000  # characters after macro expansion


class ExprError(Exception):
    """A load-time problem in an expression: a stable code (E120-E128), a message, and where it is."""

    def __init__(self, code: str, message: str, offset: int | None = None) -> None:
        super().__init__(f"{code} {message}" + (f" (at offset {offset})" if offset is not None else ""))
        self.code = code
        self.message = message
        self.offset = offset


def _kind_of_type(tp: Any) -> str:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is typing.Literal or tp is str:
        return "str"
    if tp is datetime:
        return "datetime"
    if tp is bool:
        return "bool"
    if args and len(args) < len(typing.get_args(tp)):  # Optional[T]
        return _kind_of_type(args[0]) + "?"
    return "mapping"


def _struct_fields(cls: type[msgspec.Struct]) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(cls)}


#: static kinds of the canonical fields: ``kind`` -> "str"; structs map to their fields
STRUCTS: Final = {
    name: {sub: _kind_of_type(t) for sub, t in _struct_fields(tp).items()}
    for name, tp in _struct_fields(Event).items()
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct)
}
SCALARS: Final = {n: _kind_of_type(t) for n, t in _struct_fields(Event).items() if n not in STRUCTS}
EVENT_FIELDS: Final = frozenset(SCALARS) | frozenset(f"{s}.{f}" for s, fs in STRUCTS.items() for f in fs)
_NOT_MACROS: Final = frozenset(SCALARS) | frozenset(STRUCTS) | frozenset(fn.FUNCTIONS) | {"lists"}


_LITERAL_TOKENS: Final = frozenset(
    {"STRING", "FLOAT", "BYTES", "DATETIME", "TIMEDELTA", "TRUE", "FALSE", "NULL", "FLOAT_INF", "FLOAT_NAN"}
)


def tokenize(text: str) -> list[Any]:
    """rule-engine's tokens (type, value, lexpos) of ``text``; its RuleSyntaxError on a bad character."""
    lexer = RefRule.parser._lexer.clone()
    lexer.input(text)
    return list(iter(lexer.token, None))


def string_value(literal: str) -> str | None:
    """The value of a STRING token, decoded as rule-engine's parser does."""
    prefix = literal[0] if literal[0] in "rs" else ""
    body = literal[len(prefix) + 1 : -1]
    if prefix == "r":
        return body
    try:
        escaped = codecs.encode(body, "unicode-escape").decode().replace("\\\\", "\\")
        return codecs.decode(escaped, "unicode-escape")
    except UnicodeError:
        return None


def _is_reference(toks: list[Any], i: int, macros: Mapping[str, str]) -> bool:
    tok = toks[i]
    if tok.type != "SYMBOL" or tok.value not in macros:
        return False
    if i and toks[i - 1].type in ("ATTR", "ATTR_SAFE"):
        return False
    if i + 1 < len(toks) and toks[i + 1].type == "LPAREN":
        return False
    if tok.value in _NOT_MACROS:
        raise ExprError("E123", f"macro {tok.value!r} has the name of an event field or function", None)
    return True


class Source:
    """The expression text, its macro expansion, and the map from expanded positions to original ones."""

    def __init__(self, text: str, macros: Mapping[str, str]) -> None:
        self.text = text
        self._starts: list[int] = []  # expanded start of each segment
        self._segments: list[tuple[int, str | None]] = []  # (original offset, macro name or None)
        self._memo: dict[str, str] = {}
        self._tokens: list[Any] | None = None
        parts: list[str] = []
        size = pos = 0
        for i, tok in enumerate(toks := self._lex(text, None)):
            try:
                if not _is_reference(toks, i, macros):
                    continue
            except ExprError as exc:
                raise ExprError(exc.code, exc.message, tok.lexpos) from None
            body = "(" + self._body(tok.value, macros, (), tok.lexpos) + ")"
            for piece, origin in ((text[pos : tok.lexpos], (pos, None)), (body, (tok.lexpos, tok.value))):
                self._starts.append(size)
                self._segments.append(origin)
                parts.append(piece)
                size += len(piece)
            pos = tok.lexpos + len(tok.value)
        self._starts.append(size)
        self._segments.append((pos, None))
        parts.append(text[pos:])
        self.expanded = "".join(parts)

    @staticmethod
    def _lex(text: str, macro: tuple[str, int] | None) -> list[Any]:
        try:
            return tokenize(text)
        except re_errors.RuleSyntaxError as exc:
            where = f" in macro {macro[0]!r}" if macro else ""
            pos = exc.token.lexpos if exc.token is not None else len(text)
            raise ExprError(
                "E120", f"{exc.message.split(' at: ')[0]}{where}", macro[1] if macro else pos
            ) from None

    def _body(self, name: str, macros: Mapping[str, str], stack: tuple[str, ...], at: int) -> str:
        if name in stack:
            raise ExprError("E123", "macro cycle: " + " -> ".join((*stack, name)), at)
        if name in self._memo:
            return self._memo[name]
        text = macros[name]
        toks = self._lex(text, (name, at))
        parts: list[str] = []
        pos = 0
        for i, tok in enumerate(toks):
            if tok.type == "COMMENT":  # a comment would swallow the closing parenthesis
                parts.append(text[pos : tok.lexpos])
                pos = len(text)
                break
            try:
                if not _is_reference(toks, i, macros):
                    continue
            except ExprError as exc:
                raise ExprError(exc.code, f"{exc.message} (in macro {name!r})", at) from None
            parts += [text[pos : tok.lexpos], "(", self._body(tok.value, macros, (*stack, name), at), ")"]
            pos = tok.lexpos + len(tok.value)
        parts.append(text[pos:])
        out = self._memo[name] = "".join(parts)
        if len(out) > MAX_EXPANDED:
            raise ExprError("E126", f"macro {name!r} expands to more than {MAX_EXPANDED} characters", at)
        return out

    def origin(self, pos: int) -> tuple[int, str | None]:
        """The original offset of an expanded position, and the macro it is inside of (or None)."""
        i = max(bisect.bisect_right(self._starts, pos) - 1, 0)
        offset, macro = self._segments[i]
        return (offset if macro else offset + pos - self._starts[i]), macro

    def in_macro(self, exc: ExprError) -> ExprError:
        """``exc`` with the name of the macro it points into added to its message."""
        names = [m for offset, m in self._segments if m and offset == exc.offset]
        if not names or "macro" in exc.message:
            return exc
        return ExprError(exc.code, f"{exc.message} (in macro {names[0]!r})", exc.offset)

    def tokens(self) -> list[Any]:
        if self._tokens is None:
            self._tokens = tokenize(self.expanded)
        return self._tokens

    def find_path(self, names: list[str]) -> int | None:
        """Where the dotted name ``names`` starts (the longest matching prefix, first occurrence)."""
        toks, best = self.tokens(), (0, None)
        for i, tok in enumerate(toks):
            if (
                tok.type != "SYMBOL"
                or tok.value != names[0]
                or (i and toks[i - 1].type in ("ATTR", "ATTR_SAFE"))
            ):
                continue
            n = 1
            while n < len(names) and i + 2 * n < len(toks) and toks[i + 2 * n].value == names[n]:
                n += 1
            if n > best[0]:
                best = (n, tok.lexpos)
        return None if best[1] is None else self.origin(best[1])[0]

    def check_literal_attributes(self) -> None:
        """Reject ``"abc".length``: rule-engine would resolve a typed attribute of a literal at parse time."""
        toks = self.tokens()
        for before, tok in itertools.pairwise(toks):
            if tok.type in ("ATTR", "ATTR_SAFE") and before.type in _LITERAL_TOKENS:
                msg = (
                    "literals have no attributes (.length and the like are not supported: use len(), lower())"
                )
                raise ExprError("E124", msg, self.origin(before.lexpos)[0])

    def find_call(self, name: str) -> int | None:
        toks = self.tokens()
        for tok, nxt in itertools.pairwise(toks):
            if tok.type == "SYMBOL" and tok.value == name and nxt.type == "LPAREN":
                return self.origin(tok.lexpos)[0]
        return None

    def find_string(self, value: str) -> int | None:
        for tok in self.tokens():
            if tok.type == "STRING" and string_value(tok.value) == value:
                return self.origin(tok.lexpos)[0]
        return None


_NO_KEY: Final = object()


def _literal_key(node: Any) -> Any:
    if isinstance(node, re_ast.LiteralExpressionBase) and not isinstance(node.value, (tuple, list, set)):
        return from_ref(node.value)
    return _NO_KEY


def path_of(node: Any) -> tuple[str, tuple[tuple[bool, Any], ...]] | None:
    """``raw.a["b"][0]`` -> ("raw", ((False, "a"), (True, "b"), (True, 0))); None if not a literal path."""
    steps: list[tuple[bool, Any]] = []
    while True:
        if isinstance(node, re_ast.GetAttributeExpression):
            steps.append((False, node.name))
            node = node.object
        elif isinstance(node, re_ast.GetItemExpression) and (key := _literal_key(node.item)) is not _NO_KEY:
            steps.append((True, key))
            node = node.container
        elif isinstance(node, re_ast.SymbolExpression) and node.scope is None:
            return node.name, tuple(reversed(steps))
        else:
            return None


def dotted(root: str, steps: tuple[tuple[bool, Any], ...]) -> str:
    """The dotted field name of a path, up to its first non-string key."""
    names = [root]
    for _, key in steps:
        if not isinstance(key, str):
            break
        names.append(key)
    return ".".join(names)


def flatten(node: Any, kind: str) -> list[Any]:
    """The operands of a chain of ``and`` (or ``or``), left to right, without recursion."""
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        if isinstance(n, re_ast.LogicExpression) and n.type == kind:
            stack += [n.right, n.left]
        else:
            out.append(n)
    return out
