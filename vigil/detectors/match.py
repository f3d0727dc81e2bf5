"""The single-event matcher: rules indexed by kind and action, so an event meets only its candidate rules.

Peers evaluate every rule against every event, so their cost grows with the rule count
(reference/performance.md §3). Here each rule is filed under the kinds it declares and, when its expression
requires ``action`` to equal one of some values or to start with one of some prefixes (the compiler extracts
these *hints* from top-level ``and`` chains), under those values or prefixes. An event looks up its kind,
then its action: one dict hit for the exact values, one per distinct prefix length for the prefixes.
Inside each of those buckets a second level files the rules that also require equality on another field
(``actor.ip == "..."``, ``resource.group in [...]``) under that field's values, the most selective such
field first, so an event reaches only rules whose two most selective requirements it meets. Rules with no
usable hint are evaluated for every event of their kinds (lint warns, W204).

For speed, the buckets one (kind, action) reaches (its exact bucket, every prefix bucket it falls under, and
the rules without an action requirement) are merged when the pair is first seen, and each key of the merged
bucket gets one generated function (``codegen.py``), and so does the walk of the merged bucket itself (its
field reads and key look-ups written out: ``compile_dispatch``). Merged buckets are compiled once per
distinct set of source buckets, so new action names never cost a compilation each.

A rule that raises :class:`~vigil.rules.expr.RuleRuntimeError` on an event (a real fault, such as ordering a
string against a number) is counted in :attr:`Matcher.errors` per rule and is never taken as "no match"
silently; the other rules still see the event.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from operator import attrgetter
from typing import Final, TypeVar

from vigil.detectors.codegen import BucketFn, compile_buckets, compile_dispatch
from vigil.detectors.finding import Finding, group_of, single
from vigil.events.model import Event
from vigil.logs import sampled
from vigil.rules.expr import IndexHint, RuleRuntimeError
from vigil.rules.model import Rule

log = logging.getLogger(__name__)

__all__ = ["Finding", "Matcher", "group_of"]

_ALL_KINDS: Final = ""


def _slots(bucket: _Frozen, event: Event, out: list[_Slot]) -> None:
    """The slots of ``bucket`` that ``event`` reaches: its always-slot, and one per matching lookup key."""
    always, lookups, _ = bucket
    if always is not None:
        out.append(always)
    for field, n, table in lookups:
        value = attrgetter(field)(event)
        if type(value) is str:
            hit = table.get(value if n == 0 else value[:n] if n > 0 else value[n:])
            if hit is not None:
                out.append(hit)


class _Slot:
    """The rules filed under one key, and the generated function that evaluates them all."""

    __slots__ = ("entries", "run")

    def __init__(self, entries: list[_Entry]) -> None:
        self.entries = entries
        self.run: BucketFn = _unset


#: fields a second index level may use, most selective first (struct fields: one attribute read each)
_SECONDARY_FIELDS: Final = (
    "actor.ip",
    "actor.id",
    "actor.name",
    "actor.app_id",
    "resource.id",
    "resource.name",
    "node.id",
    "node.measurement",
    "resource.type",
    "resource.group",
    "resource.subscription",
    "actor.type",
    "actor.tenant",
    "severity",
    "outcome",
)
_RANK: Final = {f: i for i, f in enumerate(_SECONDARY_FIELDS)}


class _Bucket:
    """Rules that share a first-level key. Those that also require equality (or a prefix) on another field
    are filed under that field's values; the rest are always candidates."""

    __slots__ = ("always", "by_field", "by_prefix", "by_suffix")

    def __init__(self) -> None:
        self.always: list[_Entry] = []
        self.by_field: dict[str, dict[str, list[_Entry]]] = {}
        self.by_prefix: dict[tuple[str, int], dict[str, list[_Entry]]] = {}
        self.by_suffix: dict[tuple[str, int], dict[str, list[_Entry]]] = {}

    def add(self, rule: Rule, proven: set[int]) -> None:
        """File ``rule``; ``proven`` are the operands of its ``and`` chain that reaching this bucket proves
        (they are not evaluated again, see :mod:`vigil.detectors.codegen`)."""
        second = _secondary_hint(rule)
        if second is None:
            self.always.append((rule, frozenset(proven)))
            return
        entry = (rule, frozenset(proven | {second.clause}))
        if second.values:
            table = self.by_field.setdefault(second.field, {})
            for value in second.values:
                table.setdefault(value, []).append(entry)
        for prefix in second.prefixes:
            ptable = self.by_prefix.setdefault((second.field, len(prefix)), {})
            ptable.setdefault(prefix, []).append(entry)
        for suffix in second.suffixes:
            stable = self.by_suffix.setdefault((second.field, len(suffix)), {})
            stable.setdefault(suffix, []).append(entry)

    def dedupe(self) -> None:
        """Drop repeated rules from every list (a merged bucket gets a rule once per source bucket)."""
        self.always = _unique(self.always)
        tables = [*self.by_field.values(), *self.by_prefix.values(), *self.by_suffix.values()]
        for table in tables:
            for key, entries in table.items():
                table[key] = _unique(entries)

    def frozen(self, slots: list[_Slot]) -> tuple[_Slot | None, tuple[_Lookup, ...]]:
        """The always-slot and the lookups; each rule list becomes a :class:`_Slot` (in ``slots``)."""

        def slot(entries: list[_Entry]) -> _Slot:
            slots.append(_Slot(entries))
            return slots[-1]

        def table(t: dict[str, list[_Entry]]) -> dict[str, _Slot]:
            return {k: slot(v) for k, v in t.items()}

        lookups: list[_Lookup] = [(f, 0, table(t)) for f, t in self.by_field.items()]
        lookups += [(f, n, table(t)) for (f, n), t in self.by_prefix.items()]
        lookups += [(f, -n, table(t)) for (f, n), t in self.by_suffix.items()]
        return (slot(self.always) if self.always else None), tuple(lookups)


_K = TypeVar("_K")


def _merge_tables(mine: dict[_K, dict[str, list[_Entry]]], theirs: dict[_K, dict[str, list[_Entry]]]) -> None:
    for key, table in theirs.items():
        target = mine.setdefault(key, {})
        for value, entries in table.items():
            target.setdefault(value, []).extend(entries)


def _unique(entries: list[_Entry]) -> list[_Entry]:
    return list({id(rule): (rule, proven) for rule, proven in entries}.values())


def _selectivity(hint: IndexHint) -> tuple[int, int]:
    """Lower is more selective: few exact values beat prefixes, and short prefixes are nearly useless."""
    affixes = hint.prefixes + hint.suffixes
    short = any(len(a) < 3 for a in affixes)
    return len(hint.values) + 4 * len(affixes) + (100 if short else 0), _RANK[hint.field]


def _secondary_hint(rule: Rule) -> IndexHint | None:
    usable = [
        h
        for h in rule.expr.hints
        if h.field in _RANK and (h.values or h.prefixes or h.suffixes) and all(h.prefixes + h.suffixes)
    ]
    return min(usable, key=_selectivity) if usable else None


#: a filed rule and the operands of its ``and`` chain that its place in the index proves
_Entry = tuple[Rule, frozenset[int]]
#: (field, n, table): n == 0 looks up the exact value, n > 0 its first n characters, n < 0 its last -n
_Lookup = tuple[str, int, "dict[str, _Slot]"]
#: (always-slot, lookups, the generated function that runs both for an event: codegen.compile_dispatch)
_Frozen = tuple["_Slot | None", tuple[_Lookup, ...], BucketFn]


def _unset(event: Event, out: list[Rule]) -> None:  # pragma: no cover - replaced before first use
    raise RuntimeError("bucket function not compiled")


class _KindIndex:
    __slots__ = ("exact", "prefixes", "rest")

    def __init__(self) -> None:
        self.exact: dict[str, _Bucket] = {}
        self.prefixes: dict[str, _Bucket] = {}
        self.rest = _Bucket()


class Matcher:
    """Evaluates a rule set against events through the kind/action index."""

    #: (kind, action) pairs whose merged bucket is kept; past this the cache starts over
    MERGED_CACHE: Final = 4096

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules: tuple[Rule, ...] = tuple(rules)
        self.errors: Counter[str] = Counter()
        self.unindexed: list[str] = []
        #: whether a rule is filed under two keys that one event can both meet (then de-duplicate)
        self._may_repeat = False
        self._index: dict[str, _KindIndex] = {}
        for rule in self.rules:
            self._add(self._index, rule)
        #: rules without a kind are looked up for every event; that second pass is skipped when there are none
        self._kindless = _ALL_KINDS in self._index
        #: per (kind, action): the exact bucket, every prefix bucket the action has and the rest, merged into
        #: one bucket with one generated function per key, built when the pair is first seen
        self._merged: dict[tuple[str, str], _Frozen] = {}
        #: merged buckets by the identity of their source buckets (bounded by the rule set, not the input)
        self._compiled: dict[tuple[int, ...], _Frozen] = {}
        #: generated slot functions by the slot's entries (rule identity, proven clauses): a quarter of the
        #: slots of merged buckets recur in others, and compiling is most of a merge's cost
        self._slot_fns: dict[tuple[tuple[int, frozenset[int]], ...], BucketFn] = {}

    def _merge(self, kind: str, action: str) -> _Frozen:
        """Build (or reuse) the merged bucket of a (kind, action) pair seen for the first time.

        Merged buckets are compiled once per distinct set of source buckets, not per action, so a stream
        of ever-new actions (hostile or not) costs a dict scan each, never a compilation each.
        """
        ki = self._index.get(kind)
        sources: list[_Bucket] = []
        if ki is not None:
            if action in ki.exact:
                sources.append(ki.exact[action])
            sources += [b for p, b in ki.prefixes.items() if action.startswith(p)]
            sources.append(ki.rest)
        key = tuple(id(b) for b in sources)
        frozen = self._compiled.get(key)
        if frozen is None:
            merged = _Bucket()
            for src in sources:
                merged.always += src.always
                _merge_tables(merged.by_field, src.by_field)
                _merge_tables(merged.by_prefix, src.by_prefix)
                _merge_tables(merged.by_suffix, src.by_suffix)
            merged.dedupe()
            slots: list[_Slot] = []
            always, lookups = merged.frozen(slots)
            self._compile_slots(slots)
            tables = [(field, n, {k: s.run for k, s in table.items()}) for field, n, table in lookups]
            dispatch = compile_dispatch(always.run if always else None, tables, str(len(self._compiled)))
            frozen = always, lookups, dispatch
            self._compiled[key] = frozen
        if len(self._merged) >= self.MERGED_CACHE:
            self._merged.clear()
        self._merged[kind, action] = frozen
        return frozen

    def _compile_slots(self, slots: list[_Slot]) -> None:
        """Give every slot its function: the one made for the same entries before, or a new one (all the new
        ones generated into one module)."""
        keys = [tuple((id(rule), proven) for rule, proven in slot.entries) for slot in slots]
        todo = [i for i, key in enumerate(keys) if key not in self._slot_fns]
        fns = compile_buckets([slots[i].entries for i in todo], self.fault) if todo else []
        for i, fn in zip(todo, fns, strict=True):
            self._slot_fns[keys[i]] = fn
        for slot, key in zip(slots, keys, strict=True):
            slot.run = self._slot_fns[key]

    def _add(self, index: dict[str, _KindIndex], rule: Rule) -> None:
        action_hint = next(
            (h for h in rule.expr.hints if h.field == "action" and (h.values or h.prefixes)), None
        )
        if action_hint is None:
            self.unindexed.append(rule.id)
        elif action_hint.prefixes and (action_hint.values or len(action_hint.prefixes) > 1):
            self._may_repeat = True
        second = _secondary_hint(rule)
        if second is not None and len(second.prefixes) + len(second.suffixes) + bool(second.values) > 1:
            self._may_repeat = True
        proven = {action_hint.clause} if action_hint is not None and action_hint.clause >= 0 else set()
        for kind in rule.kinds or (_ALL_KINDS,):
            ki = index.setdefault(kind, _KindIndex())
            if action_hint is None:
                ki.rest.add(rule, proven)
                continue
            for value in action_hint.values:
                ki.exact.setdefault(value, _Bucket()).add(rule, proven)
            for prefix in action_hint.prefixes:
                ki.prefixes.setdefault(prefix, _Bucket()).add(rule, proven)

    def candidates(self, event: Event) -> list[Rule]:
        """The rules that may match ``event``; every other rule is certain not to."""
        rules = [rule for slot in self._reached(event) for rule, _ in slot.entries]
        return list({id(r): r for r in rules}.values())

    def _reached(self, event: Event) -> list[_Slot]:
        out: list[_Slot] = []
        for bucket in self._buckets(event):
            _slots(bucket, event, out)
        return out

    def _buckets(self, event: Event) -> list[_Frozen]:
        """The merged bucket of the event's (kind, action), and of ("", action) when rules lack a kind."""
        action = event.action
        merged = self._merged
        out = []
        for kind in (event.kind, _ALL_KINDS) if self._kindless else (event.kind,):
            bucket = merged.get((kind, action))
            out.append(bucket if bucket is not None else self._merge(kind, action))
        return out

    def match(self, event: Event) -> list[Finding]:
        """Findings of every rule that matches ``event`` (rule faults are counted, see module docstring).

        Every rule is taken as a single-event rule here; :class:`~vigil.detectors.engine.Detector` is what
        runs the stateful forms and suppression on top of :meth:`matching`.
        """
        matched = self.matching(event)
        if not matched:
            return []
        group = group_of(event)
        return [single(rule, event, group) for rule in matched]

    def matching(self, event: Event) -> list[Rule]:
        """The rules whose expression is true for ``event``, each once."""
        matched: list[Rule] = []
        # The hot path: each merged bucket's generated function walks it as _slots() does, running each
        # slot as soon as it is found.
        if self._kindless:
            for bucket in self._buckets(event):
                bucket[2](event, matched)
        else:  # (the usual case: one merged bucket, looked up here without a call or a list)
            found = self._merged.get((event.kind, event.action))
            (found if found is not None else self._merge(event.kind, event.action))[2](event, matched)
        if self._may_repeat and len(matched) > 1:  # a rule filed under two keys that both fit
            matched = list({id(r): r for r in matched}.values())
        return matched

    def fault(self, rule: Rule, event: Event | None, exc: Exception, *, bug: bool = False) -> None:
        """Count a rule that raised: its filter here, or (``bug``) its state update or timer in the engine.
        A fault that is not a :class:`RuleRuntimeError` (or any fault the engine reports) is a bug, so it is
        logged, with its traceback the first time and then at every power of ten of the rule's faults: a
        rule that fails on every event must neither flood the log nor stop the other rules."""
        n = self.errors[rule.id] = self.errors[rule.id] + 1
        data = isinstance(exc, RuleRuntimeError | TypeError | ValueError | AttributeError | LookupError)
        if (bug or not data) and sampled(n):
            where = f"event {event.id}" if event is not None else "a timer"
            log.error("rule %s failed on %s (fault %d): %r", rule.id, where, n, exc, exc_info=n == 1)
