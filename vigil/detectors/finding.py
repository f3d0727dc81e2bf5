"""What a detector reports: the :class:`Finding`, and the group a finding belongs to.

A finding names its rule (and the hash of the exact rule text, so it is explainable), the events behind it,
its event time, and its *group*: the field values it is about. Suppression, alert de-duplication keys and
incidents all key on (rule, group), so the group is computed the same way everywhere: from a rule's
``group_by`` fields for the stateful forms, and for single-event rules from the resource the event is about,
else the training node.

Group values are strings; a field the event lacks groups as ``""`` (all such events form one group), which
is documented in docs/rules.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from operator import attrgetter
from typing import Any, Final

import msgspec

from vigil.detectors.clock import to_ms
from vigil.events.fields import time_id
from vigil.events.model import Event, FrozenMap
from vigil.rules.functions import path_getter
from vigil.rules.model import Rule

NO_GROUP: Final[Mapping[str, str]] = FrozenMap({})
#: joins the values of a multi-field group into one state key (a control character no id contains)
SEP: Final = "\x1f"


class Finding(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, gc=False):
    """A rule matched (``form: event``) or a stateful condition held (``threshold``, ``sequence``,
    ``flatline``). ``value`` is the aggregate a threshold crossed; ``suppressed`` the number of matches of
    the same (rule, group) that suppression held back since the previous finding."""

    rule: str
    title: str
    severity: str
    score: int
    event_ids: tuple[str, ...]
    time: datetime
    group: Mapping[str, str] = NO_GROUP
    rule_hash: str = ""
    form: str = "event"
    value: float | None = None
    suppressed: int = 0


def group_of(event: Event) -> Mapping[str, str]:
    """The group a single-event finding belongs to: the resource it is about, else the training node.
    (Built per finding, not memoised: a cache of these would hold tens of thousands of objects the
    collector tracks, and a full collection would scan them all.)"""
    rid = event.resource.id
    if rid:
        return FrozenMap({"resource.id": rid})
    node = event.node.id
    return FrozenMap({"node.id": node}) if node else NO_GROUP


def finding_id(found: Finding) -> str:
    """The identity of a finding: rule, group, form, event time and events. Processing the same events
    again (after a crash, from the store's cursor and snapshot) yields the same ids, so the store keeps each
    finding once.

    Time first (32 hex digits: 12 of the finding's time in milliseconds, then 20 of the hash, see
    :func:`~vigil.events.fields.time_id`), so the findings table's primary key, which only grows, takes
    new findings at its edge instead of a random page each."""
    ms = to_ms(found.time)
    text = SEP.join((found.rule, found.form, group_key(found.group), str(ms), *found.event_ids))
    return time_id("", text, ms)


def group_key(group: Mapping[str, str]) -> str:
    """The state key of a group mapping (values joined in field order)."""
    return SEP.join(group.values())


def field_getter(dotted: str) -> Callable[[Event], Any]:
    """A getter for a canonical field, ``raw.<path>`` or ``labels.<name>`` (fields are validated by the
    schema, so anything else is a programming error)."""
    head, _, rest = dotted.partition(".")
    if head in ("raw", "labels"):
        return path_getter(head, tuple((False, part) for part in rest.split(".")))
    return attrgetter(dotted)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if type(value) is str:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def key_function(fields: tuple[str, ...]) -> Callable[[Event], str]:
    """Event -> state key for ``fields`` (one field: its value; several: values joined by :data:`SEP`)."""
    if not fields:
        return lambda e: ""
    getters = [field_getter(f) for f in fields]
    if len(getters) == 1:
        get = getters[0]

        def one(e: Event) -> str:
            v = get(e)
            return v if type(v) is str else _text(v)

        return one
    if len(getters) == 2:
        first, second = getters

        def two(e: Event) -> str:
            a, b = first(e), second(e)
            return (a if type(a) is str else _text(a)) + SEP + (b if type(b) is str else _text(b))

        return two
    return lambda e: SEP.join([_text(g(e)) for g in getters])


def group_from_key(fields: tuple[str, ...], key: str) -> Mapping[str, str]:
    """The group mapping of a state key (the inverse of :func:`key_function`)."""
    if not fields:
        return NO_GROUP
    values = key.split(SEP) if len(fields) > 1 else [key]
    return FrozenMap(dict(zip(fields, values, strict=False)))


def single(rule: Rule, event: Event, group: Mapping[str, str]) -> Finding:
    """The finding of a single-event rule that matched ``event``."""
    return Finding(
        rule=rule.id,
        title=rule.title,
        severity=rule.severity,
        score=rule.score,
        event_ids=(event.id,),
        time=event.time,
        group=group,
        rule_hash=rule.content_hash,
    )


def finding(
    rule: Rule,
    event_ids: tuple[str, ...],
    time: datetime,
    group: Mapping[str, str],
    value: float | None = None,
) -> Finding:
    """A finding of ``rule`` (its form, title, severity, score and text hash filled in)."""
    return Finding(
        rule=rule.id,
        title=rule.title,
        severity=rule.severity,
        score=rule.score,
        event_ids=event_ids,
        time=time,
        group=group,
        rule_hash=rule.content_hash,
        form=rule.form,
        value=value,
    )
