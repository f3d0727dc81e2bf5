"""Generated state updates for the commonest windowed rule: a plain ``count`` threshold.

A windowed rule that matches costs one state update per event, and with tens of windowed rules an event
meets several of them (``bench/stateful.py``: about 9). Done generically that update is a few dozen Python
operations of look-ups and tuple unpacking around three of real work, so each plain count rule
(``count`` with ``at_least`` only) gets one generated function with its window, bound, state shards and
key field written in as constants::

    def _count(e, t, out):
        k = e.actor.id                      # one field of the event's structs, else the key function
        if type(k) is not str:
            k = KEY(e)
        s = SHARDS[hash(k) & 255]
        st = s.get(k)
        b = t // 60000
        if st is None:                      # a new group: its first event
            ...
        if st >> 48 != b:                   # the next bucket is written out too; a gap or a late event
            ...                             # takes the rule's general path: GENERAL(e, t, out)
        ...                                 # same bucket: count it, and fire on the crossing

Only the common cases are written out (a new group, an event in its group's current bucket, and one in the
bucket after it); every other case (a gap of more than one bucket, a late event) calls
:meth:`ThresholdDetector.on_event`, so the window semantics live in one place (``threshold.py``) and the
tests of both paths compare against the same brute-force recount. The crossing test is skipped outright
when ``cur + prev + 1`` is below the bound (the estimate never exceeds ``cur + prev``), which is the case for
almost every group of a long tail. A key of one or two string fields is read as attributes (``e.actor.ip``);
any other key, and a field that does not hold a string, goes through the rule's key function.

The functions bind the rule's *current* shard list, so the engine regenerates them whenever a state object
is replaced (a hot reload adopting old state); restoring a snapshot fills the same shards and needs nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Final

from vigil.detectors.compiled import CountState, DistinctState
from vigil.detectors.finding import SEP, Finding, finding, group_from_key
from vigil.detectors.state import SHARDS, KeyedState
from vigil.detectors.threshold import ThresholdDetector, text_hash
from vigil.events.model import Event
from vigil.rules.expr_source import SCALARS, STRUCTS

#: a rule's state update: (event, event time in ms, findings out) -> None
Update = Callable[[Event, int, list[Finding]], None]

_NAME: Final = re.compile(r"[a-z_][a-z0-9_]*")
_STR_KINDS: Final = frozenset({"str", "str?"})


def attribute_path(field: str) -> str | None:
    """``e.actor.id`` for a string field of the event's structs (or a top-level string field), else None
    (``raw.*`` and ``labels.*`` go through their getters)."""
    parts = field.split(".")
    if not all(_NAME.fullmatch(p) for p in parts):
        return None
    if len(parts) == 1 and SCALARS.get(parts[0]) in _STR_KINDS:
        return f"e.{parts[0]}"
    if len(parts) == 2 and STRUCTS.get(parts[0], {}).get(parts[1]) in _STR_KINDS:
        return f"e.{field}"
    return None


def _key_lines(fields: tuple[str, ...]) -> list[str]:
    """Source that sets ``k`` to the state key: the fields read as attributes when they are string fields
    of the event's structs and hold strings, else the rule's key function (which maps None and other types
    as :func:`~vigil.detectors.finding.key_function` documents)."""
    paths = [attribute_path(f) for f in fields]
    if len(fields) == 1 and paths[0] is not None:
        return [f"    k = {paths[0]}", "    if type(k) is not str:", "        k = KEY(e)"]
    if len(fields) == 2 and None not in paths:
        return [
            f"    k, k2 = {paths[0]}, {paths[1]}",
            "    k = k + SEP + k2 if type(k) is str and type(k2) is str else KEY(e)",
        ]
    return ["    k = KEY(e)"]


def fast_update(det: ThresholdDetector) -> Update | None:
    """The generated update of a plain count or (compiled) distinct rule, or None for any other rule."""
    return count_update(det) or distinct_update(det)


def distinct_update(det: ThresholdDetector) -> Update | None:
    """The update of a plain distinct rule whose windows are in the compiled table: the counted value's
    8-byte hash and the key read as in ``_count`` (attributes where they can be), then one call; what it
    hands back (a late event) goes to :meth:`ThresholdDetector.late_compiled`. The same as
    ``_distinct_compiled`` without its method calls (``value_hash_of``, the getters): about a microsecond
    less per matching event."""
    state, spec = det.state, det.rule.threshold
    if not isinstance(state, DistinctState) or spec is None or spec.field is None:
        return None
    path = attribute_path(spec.field)
    lines = ["def _update(e, t, out):"]
    if path is not None:
        lines += [
            f"    v = {path}",
            "    if v is None:",
            "        return",
            "    h = HASH(v if type(v) is str else repr(v))",
        ]
    else:
        lines += ["    h = VALUE_HASH(e)", "    if h is None:", "        return"]
    lines += [
        *_key_lines(det.fields),
        "    v = UPDATE(k, t, h)",
        "    if v is None:",
        "        return",
        "    if v is ...:  # a late event",
        "        LATE(e, t, k, h, out)",
        "        return",
        "    out.append(FINDING(RULE, (e.id,), e.time, GROUP(FIELDS, k), v))",
    ]
    namespace = {
        "HASH": text_hash,
        "VALUE_HASH": det.value_hash_of,
        "UPDATE": state.values.update,
        "LATE": det.late_compiled,
    }
    return _build(det, "distinct", lines, namespace)


def count_update(det: ThresholdDetector) -> Update | None:
    """The generated update of a plain count rule (see module docstring), or None for any other rule."""
    fast = det.fast_count
    if fast is None:
        return None
    w, low = fast
    lines = ["def _update(e, t, out):", *_key_lines(det.fields)]
    state = det.state
    if isinstance(state, CountState):
        return _compiled(det, state, lines)
    assert isinstance(state, KeyedState)
    lines += [
        f"    s = SHARDS[hash(k) & {SHARDS - 1}]",
        "    st = s.get(k)",
        f"    b = t // {w}",
        "    if st is None:",
        "        if STATE.size >= STATE.limit:",
        "            STATE.limited += 1",
        "            return",
        "        STATE.size += 1",
        f"        s[k] = (b << 48) | {1 << 24}",
    ]
    if 0 < low <= 1:  # the first event crosses the bound by itself
        lines.append("        out.append(FINDING(RULE, (e.id,), e.time, GROUP(FIELDS, k), 1))")
    lines += [
        "        return",
        "    if st >> 48 != b:",
        "        if st >> 48 != b - 1:  # a gap, or a late event",
        "            GENERAL(e, t, out)",
        "            return",
        "        p = (st >> 24) & 16777215  # the next bucket: the current count becomes the previous one",
        f"        s[k] = (b << 48) | {1 << 24} | p",
        "        if p + 1 < LOW:",
        "            return",
        f"        before = p * (1 - (t - b * {w}) / {w}) if p else 0",
        "        if before < LOW <= before + 1:",
        "            out.append(FINDING(RULE, (e.id,), e.time, GROUP(FIELDS, k), before + 1))",
        "        return",
        f"    lo = st & {(1 << 48) - 1}",
        "    c = lo >> 24",
        f"    if c < {(1 << 24) - 1}:",
        f"        s[k] = st + {1 << 24}",
        f"    p = lo & {(1 << 24) - 1}",
        "    if c + p + 1 < LOW:",
        "        return",
        f"    before = c + p * (1 - (t - b * {w}) / {w}) if p else c",
        "    if before < LOW <= before + 1:",
        "        out.append(FINDING(RULE, (e.id,), e.time, GROUP(FIELDS, k), before + 1))",
    ]
    namespace: dict[str, Any] = {
        "SHARDS": state.shards,
        "STATE": state,
        "LOW": low,
    }
    return _build(det, "count", lines, namespace)


def _compiled(det: ThresholdDetector, state: CountState, lines: list[str]) -> Update:
    """The update of a rule whose windows are in the compiled table: the key as above, then one call
    that counts the event and says whether the bound was crossed (or that the general path must run)."""
    lines += [
        "    v = UPDATE(k, t)",
        "    if v is None:",
        "        return",
        "    if v is ...:  # a late event",
        "        GENERAL(e, t, out)",
        "        return",
        "    out.append(FINDING(RULE, (e.id,), e.time, GROUP(FIELDS, k), v))",
    ]
    return _build(det, "count", lines, {"UPDATE": state.counts.update})


def _build(det: ThresholdDetector, form: str, lines: list[str], namespace: dict[str, Any]) -> Update:
    namespace |= {
        "KEY": det.key_of,
        "GENERAL": det.on_event,
        "FINDING": finding,
        "RULE": det.rule,
        "GROUP": group_from_key,
        "FIELDS": det.fields,
        "SEP": SEP,
    }
    # Generated from validated rule fields (identifier paths only) and integers; nothing else enters it.
    exec(compile("\n".join(lines) + "\n", f"<vigil {form} {det.rule.id}>", "exec"), namespace)
    update: Update = namespace["_update"]
    return update
