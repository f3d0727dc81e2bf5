"""Run-time semantics of rule expressions: values, operators, built-in functions, and the rule-engine oracle.

``expr.py`` compiles a ``match:`` expression into closures built from the helpers here; the same helpers
define what an operator means on one event, so the semantics documented in :mod:`vigil.rules.expr` live in
one place. The second half adapts rule-engine itself (its AST evaluator over views of the event) so that
anything the compiler does not cover, and the property test's oracle, evaluate with the same rules: absent
values read as ``null``, regexes run on RE2, ordering against ``null`` is false.

Values inside the compiled closures are plain Python: ``str``, ``int``/``float``, ``bool``, ``None``,
``datetime``, ``list`` (arrays), mappings. Values inside rule-engine are its own: ``Decimal``, ``tuple``, and
the read-only :class:`MapView` over event mappings.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import operator
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import re2  # type: ignore[import-untyped]

from vigil.events.model import FrozenMap


class RuleRuntimeError(Exception):
    """A real fault while evaluating an expression on one event (type error on a present value, a failing
    function). Callers count it per rule (``rule_errors_total``); it never means "no match"."""


Getter = Callable[[Any], Any]
_NUMS: Final = frozenset({int, float})
_ORDERED: Final = frozenset({str, int, float, bool, datetime, timedelta, bytes})
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.never_capture = True  # only yes/no answers are needed


def kind(value: Any) -> str:
    """The expression-language name of a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float, Decimal)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "mapping"
    return type(value).__name__


def fault(message: str) -> RuleRuntimeError:
    return RuleRuntimeError(message)


def eq(a: Any, b: Any) -> bool:
    """``==``: equal values of the same type; numbers compare by value (``1 == 1.0``), never with booleans."""
    ta, tb = type(a), type(b)
    if ta is tb or (ta in _NUMS and tb in _NUMS):
        return bool(a == b)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return dict(a) == dict(b)
    return False


def order(op: Callable[[Any, Any], bool], a: Any, b: Any) -> bool:
    """``< <= > >=``: false when either side is null, a fault across types or on arrays and mappings."""
    if a is None or b is None:
        return False
    ta, tb = type(a), type(b)
    if (ta is tb and ta in _ORDERED) or (ta in _NUMS and tb in _NUMS):
        return bool(op(a, b))
    raise fault(f"cannot order {kind(a)} and {kind(b)}")


def contains(container: Any, member: Any) -> bool:
    """``member in container`` and ``contains(container, member)``: substring, array element, mapping key."""
    if container is None:
        return False
    if type(container) is str:
        if member is None:
            return False
        if type(member) is not str:
            raise fault(f"cannot look for a {kind(member)} in a string")
        return member in container
    if isinstance(container, (list, tuple)):
        return member in container
    if isinstance(container, (frozenset, set)):
        try:
            return member in container
        except TypeError:
            return False
    if isinstance(container, Mapping):
        return not isinstance(member, (list, tuple)) and member in container
    raise fault(f"cannot look inside a {kind(container)}")


def in_literal(values: frozenset[Any], items: tuple[Any, ...]) -> Callable[[Any], bool]:
    """Membership in a literal array or a values list: a set lookup, falling back for unhashable members."""

    def check(member: Any) -> bool:
        try:
            return member in values
        except TypeError:
            return member in items

    return check


def getitem(container: Any, key: Any) -> Any:
    """``x[key]``: a mapping key or an array/string index; null when absent or out of range."""
    if container is None:
        return None
    if isinstance(container, Mapping):
        return None if isinstance(key, list) else container.get(key)
    if type(container) is list or type(container) is str:
        if type(key) is int or (type(key) is float and key.is_integer()):
            try:
                return container[int(key)]
            except IndexError:
                return None
        raise fault(f"an index into a {kind(container)} must be an integer, not {kind(key)}")
    raise fault(f"cannot index a {kind(container)}")


def getattr_(container: Any, name: str) -> Any:
    """``x.name``: a mapping key; null on anything that is not a mapping."""
    return container.get(name) if isinstance(container, Mapping) else None


def path_getter(root: str, steps: tuple[tuple[bool, Any], ...]) -> Getter:
    """A getter for ``raw``/``labels`` paths; ``steps`` are (is_item, key) pairs: ``[key]`` or ``.name``."""
    base = operator.attrgetter(root)
    if not steps:
        return base
    if all(not is_item and type(key) is str for is_item, key in steps):
        # member names only: an undecoded raw record gives just that value (FrozenMap.path)
        names = tuple(key for _, key in steps)
        walk = _walker(base, steps)
        return lambda e: m.path(names) if type(m := base(e)) is FrozenMap else walk(e)
    return _walker(base, steps)


def _walker(base: Getter, steps: tuple[tuple[bool, Any], ...]) -> Getter:
    """:func:`path_getter` over a mapping, one step at a time."""
    first, rest = steps[0][1], steps[1:]  # raw and labels are always mappings
    if not rest:
        return lambda e: base(e).get(first)

    def get(e: Any) -> Any:
        value = base(e).get(first)
        for is_item, key in rest:
            if type(value) is dict:
                value = value.get(key) if not isinstance(key, list) else None
            elif value is None:
                return None
            else:
                value = getitem(value, key) if is_item else getattr_(value, key)
        return value

    return get


# ---- built-in functions (value level: the compiled and the rule-engine paths both call these) ----------


def f_lower(value: Any) -> Any:
    if value is None or type(value) is str:
        return value and value.lower()
    raise fault(f"lower() needs a string, not {kind(value)}")


def f_upper(value: Any) -> Any:
    if value is None or type(value) is str:
        return value and value.upper()
    raise fault(f"upper() needs a string, not {kind(value)}")


def affixes(value: Any) -> tuple[str, ...] | None:
    """Normalise the second argument of startswith/endswith: a string or a collection of strings."""
    if value is None:
        return None
    items = (value,) if isinstance(value, str) else value
    if isinstance(items, (list, tuple, set, frozenset)) and all(type(v) is str for v in items):
        return tuple(items)
    raise fault(f"startswith()/endswith() need a string or an array of strings, not {kind(value)}")


def f_startswith(value: Any, prefixes: Any) -> bool:
    if value is None or prefixes is None:
        return False
    if type(value) is not str:
        raise fault(f"startswith() needs a string, not {kind(value)}")
    return value.startswith(prefixes if type(prefixes) is tuple else affixes(prefixes))  # type: ignore[arg-type]


def f_endswith(value: Any, suffixes: Any) -> bool:
    if value is None or suffixes is None:
        return False
    if type(value) is not str:
        raise fault(f"endswith() needs a string, not {kind(value)}")
    return value.endswith(suffixes if type(suffixes) is tuple else affixes(suffixes))  # type: ignore[arg-type]


def f_len(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (str, list, tuple, Mapping)):
        return len(value)
    raise fault(f"len() needs a string, array or mapping, not {kind(value)}")


@functools.lru_cache(maxsize=1024)
def re2_compile(pattern: str) -> Any:
    """Compile with RE2 (linear time); ``re2.error`` for what RE2 rejects (backreferences, lookaround)."""
    return re2.compile(pattern, _RE2_OPTIONS)


def re2_message(exc: Exception) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)


def regex_test(pattern: Any, method: str = "search") -> Callable[[Any], bool]:
    """``=~`` (match at the start), ``=~~`` and ``regex()`` (search anywhere) with a compiled RE2 pattern.

    The public ``search``/``match`` of google-re2 build match objects and map byte offsets back to
    characters (about 10 µs a call); a yes/no answer needs neither, so the bound RE2 object is called
    directly when this version of the binding has it.
    """
    regexp, anchors = getattr(pattern, "_regexp", None), getattr(re2, "_Anchor", None)
    if regexp is not None and anchors is not None and hasattr(regexp, "Match"):
        match, anchor = regexp.Match, anchors.ANCHOR_START if method == "match" else anchors.UNANCHORED
        no_match = (-1, -1)

        def test(text: str) -> bool:
            data = text.encode()
            return bool(match(anchor, data, 0, len(data))[0] != no_match)

    else:  # pragma: no cover - another binding version
        public = getattr(pattern, method)

        def test(text: str) -> bool:
            return public(text) is not None

    def run(value: Any) -> bool:
        if value is None:
            return False
        if type(value) is not str:
            raise fault(f"a regular expression needs a string, not {kind(value)}")
        return test(value)

    return run


@functools.lru_cache(maxsize=65536)
def _ip_key(text: str) -> tuple[int, int] | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.version, int(ip)


class CidrSet:
    """Networks merged into sorted integer ranges per IP version: membership is a binary search."""

    __slots__ = ("_ends", "_starts")

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        self._ends: dict[int, list[int]] = {4: [], 6: []}
        nets = list(networks)
        v4 = ipaddress.collapse_addresses(n for n in nets if isinstance(n, ipaddress.IPv4Network))
        v6 = ipaddress.collapse_addresses(n for n in nets if isinstance(n, ipaddress.IPv6Network))
        for version, merged in ((4, list(v4)), (6, list(v6))):
            for net in merged:
                self._starts[version].append(int(net.network_address))
                self._ends[version].append(int(net.broadcast_address))

    @classmethod
    def parse(cls, texts: Iterable[str]) -> CidrSet:
        """From CIDR strings (``10.0.0.0/8``, a bare address); raises ValueError naming a bad one."""
        nets = []
        for text in texts:
            try:
                nets.append(ipaddress.ip_network(text, strict=False))
            except ValueError as exc:
                raise ValueError(f"invalid CIDR {text!r}: {exc}") from None
        return cls(nets)

    def __contains__(self, ip: object) -> bool:
        key = _ip_key(ip) if isinstance(ip, str) else None
        if key is None:
            return False
        starts = self._starts[key[0]]
        i = bisect.bisect_right(starts, key[1]) - 1
        return i >= 0 and key[1] <= self._ends[key[0]][i]


def is_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


def f_cidr_match(ip: Any, networks: Any) -> bool:
    """True when ``ip`` (a string) is inside ``networks``; null or an unparsable address is false."""
    if ip is None:
        return False
    if type(ip) is not str:
        raise fault(f"cidr_match() needs an address string, not {kind(ip)}")
    if not isinstance(networks, CidrSet):
        networks = _cidr_of(networks)
    return ip in networks


@functools.lru_cache(maxsize=256)
def _cidr_literal(texts: tuple[str, ...]) -> CidrSet:
    return CidrSet.parse(texts)


def _cidr_of(value: Any) -> CidrSet:
    texts = (value,) if isinstance(value, str) else value
    if isinstance(texts, tuple) and all(isinstance(t, str) for t in texts):
        try:
            return _cidr_literal(texts)
        except ValueError as exc:
            raise fault(str(exc)) from None
    raise fault(f"cidr_match() needs a CIDR string or a cidr list, not {kind(value)}")


def f_regex(value: Any, pattern: Any) -> bool:
    if not isinstance(pattern, str):
        raise fault("regex() needs a pattern string")
    return regex_test(re2_compile(pattern))(value)


#: name -> (value-level implementation, number of arguments)
FUNCTIONS: Final[dict[str, tuple[Callable[..., Any], int]]] = {
    "cidr_match": (f_cidr_match, 2),
    "lower": (f_lower, 1),
    "upper": (f_upper, 1),
    "startswith": (f_startswith, 2),
    "endswith": (f_endswith, 2),
    "contains": (contains, 2),
    "regex": (f_regex, 2),
    "len": (f_len, 1),
}


RE2Error: Final[type[Exception]] = re2.error
