"""Remediation templates: a rule action's ``target`` and string ``params``, bound to the triggering event.

A rule names *what* to act on with ``{{ dotted.field }}`` placeholders (``target: "{{ node.id }}"``), and
the same placeholders work in its string parameters, so one action can say whom to act against as well:
``lockdown_vault`` removing the access of the principal that read the secret (``object_id: "{{ actor.id }}"``)
rather than one principal fixed in the rule. Each placeholder is a dotted path through the event's fields
and its ``raw``/``labels`` mappings and must give a non-empty string or number; one that does not resolves
to a :class:`TargetError`, which the response engine turns into a refusal with the reason (never a crash,
never a finding silently dropped).

Why parameters take part in the action's identity. An action is one per (rule, target, remediation,
idempotency window), so that a storm of findings about one target is acted on once. When a parameter came
from the event, two findings about the same vault can ask for different things (remove principal A,
remove principal B), and the second must not be taken for a repeat of the first: the resolved templated
parameters (:attr:`Bound.binding`) join the key. Fixed parameters are the same for every finding of a
rule, so they stay out of it (and the keys of actions from before templates existed are unchanged).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from vigil.events.model import Event
from vigil.rules.model import RemediateAction

_PLACEHOLDER: Final = re.compile(r"\{\{\s*(.*?)\s*\}\}")
#: joins the resolved templated parameters of a binding (a control character no value contains)
_SEP: Final = "\x1f"


class TargetError(ValueError):
    """A template (target or parameter) that does not resolve against the triggering event."""


def resolve_target(template: str, event: Event | None, event_id: str = "", what: str = "target") -> str:
    """``template`` with every ``{{ dotted.field }}`` replaced by the event's value (TargetError if any
    placeholder has no usable value, or there is no event). ``what`` names the template in the error."""

    def value(m: re.Match[str]) -> str:
        dotted = m.group(1)
        if event is None:
            raise TargetError(f"{what} template {template!r} did not resolve: event {event_id!r} not found")
        found = _lookup(event, dotted)
        if isinstance(found, bool) or not isinstance(found, str | int | float) or found == "":
            raise TargetError(
                f"{what} template {template!r} did not resolve: {dotted} is missing from event {event.id!r}"
            )
        return str(found)

    return _PLACEHOLDER.sub(value, template)


def is_template(value: object) -> bool:
    """Whether a parameter value holds a placeholder (a string, or a list with a string that does)."""
    if isinstance(value, str):
        return _PLACEHOLDER.search(value) is not None
    return isinstance(value, list | tuple) and any(isinstance(v, str) and is_template(v) for v in value)


@dataclass(frozen=True, slots=True)
class Bound:
    """An action bound to one event: its target; its parameters resolved (None when none is templated: the
    action's own apply); the binding (the resolved templated parameters, for the idempotency key; empty
    without any); and, when something did not resolve, the problem (then the target is the template)."""

    target: str
    params: Mapping[str, object] | None = None
    binding: str = ""
    problem: str = ""


def bind(action: RemediateAction, event: Event | None, event_id: str = "") -> Bound:
    """Resolve ``action``'s target and templated parameters against ``event`` (see module docstring)."""
    try:
        target = resolve_target(action.target, event, event_id)
    except TargetError as exc:
        return Bound(action.target, problem=str(exc))
    templated = sorted(k for k, v in action.params.items() if is_template(v))
    if not templated:
        return Bound(target)
    params: dict[str, object] = dict(action.params)
    try:
        for name in templated:
            params[name] = _resolve_value(params[name], event, event_id, f"params.{name}")
    except TargetError as exc:
        return Bound(target, problem=str(exc))
    binding = _SEP.join(f"{name}={_text(params[name])}" for name in templated)
    return Bound(target, params, binding)


def _resolve_value(value: object, event: Event | None, event_id: str, what: str) -> object:
    if isinstance(value, str):
        return resolve_target(value, event, event_id, what)
    assert isinstance(value, list | tuple)
    return [resolve_target(v, event, event_id, what) if isinstance(v, str) else v for v in value]


def _text(value: object) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, list) else str(value)


def _lookup(event: Event, dotted: str) -> Any:
    value: Any = event
    for part in dotted.split("."):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, msgspec.Struct) and part in type(value).__struct_fields__:
            value = getattr(value, part)
        else:
            return None
    return value
