"""The faust workers' stages as plain objects: messages in, messages out, no broker in sight.

Each class drives the functions the embedded runner uses, so both runners judge an event alike:

* :class:`Normalise` — :class:`~vigil.events.batch.BatchNormalizer` (the drop folder's and the HTTP
  endpoints' path) turns a raw record into canonical events, keyed for the events topic by
  ``kafka.partition_key`` (the resource id by default), and dead letters with their reasons;
* :class:`Detect` — the :class:`~vigil.detectors.engine.Detector` of each partition
  (:mod:`.kafka_state`) turns events into findings; for each finding it also writes the trigger alert
  (:func:`~vigil.alerts.router.finding_alert`, keyed by the alert's ``dedup_key``) and one *action intent*
  per ``remediate`` action, its target resolved against the triggering event with the response stage's
  own :func:`~vigil.response.stage.resolve_target` and keyed by that target, so one worker owns each target;
* :class:`Act` — intents become :class:`~vigil.response.policy.Proposal` objects exactly as the embedded
  response stage builds them, and go to :meth:`ResponseEngine.submit` (policy, idempotency key, audit,
  execution).

:mod:`.kafka_app` wires them to topics; tests drive them through ``agent.test_context()`` or directly.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from vigil.alerts.model import dedup_key
from vigil.alerts.router import finding_alert
from vigil.detectors.clock import to_ms
from vigil.detectors.finding import Finding, field_getter, finding_id, group_key
from vigil.events.batch import BatchNormalizer
from vigil.events.deadletter import DeadLetter, for_failed_event
from vigil.events.model import Event, encode_event, encode_json, event_from_mapping
from vigil.logs import sampled
from vigil.response.model import Action
from vigil.response.policy import Proposal
from vigil.response.templates import bind
from vigil.rules.model import RemediateAction, RuleSet
from vigil.streams.kafka_state import PartitionDetectors

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Out:
    """One message to produce: logical topic (``events``, ``findings``, ``intents``, ``alerts``,
    ``deadletter``), key and value bytes."""

    topic: str
    key: bytes | None
    value: bytes


def dead(source: str, reason: str, data: bytes) -> Out:
    """A dead letter for the dead-letter topic (the record kept as JSON, text or excerpt)."""
    try:
        record: Any = orjson.loads(data)
        letter = DeadLetter(source=source, reason=reason, record=record)
    except orjson.JSONDecodeError:
        letter = DeadLetter(source=source, reason=reason, text=data[:4096].decode("utf-8", "replace"))
    return Out("deadletter", source.encode(), encode_json(letter))


def partition_key(event: Event, fields: Sequence[str]) -> bytes:
    """The events-topic key: the first non-empty of ``fields``, else the event id (spreads evenly)."""
    for name in fields:
        value = field_getter(name)(event)
        if isinstance(value, str) and value:
            return value.encode()
    return event.id.encode()


class Normalise:
    """Raw records (one JSON document, an envelope, or JSON Lines per message) to canonical events."""

    def __init__(self, fmt: str = "auto", key_fields: Sequence[str] = ("resource.id", "node.id")) -> None:
        self.normalizer = BatchNormalizer(fmt)
        self.key_fields = tuple(key_fields)
        self.events = 0
        self.dead = 0

    def run(self, data: bytes, source: str) -> list[Out]:
        result = self.normalizer.body(data, source)
        out = [Out("events", partition_key(e, self.key_fields), encode_event(e)) for e in result.events]
        out += [Out("deadletter", source.encode(), encode_json(d)) for d in result.dead]
        self.events += len(result.events)
        self.dead += len(result.dead)
        return out


class Detect:
    """Events of owned partitions to findings, alerts and action intents (see the module docstring)."""

    def __init__(self, rules: RuleSet, detectors: PartitionDetectors, *, base_url: str = "") -> None:
        self.rules = rules
        self.detectors = detectors
        self.base_url = base_url
        self.events = 0
        self.findings = 0
        #: events detection raised on (dead-lettered)
        self.failed = 0

    def run(self, partition: int, offset: int, data: bytes, source: str = "events") -> list[Out]:
        """One message of the events topic; what to produce for it."""
        try:
            event = event_from_mapping(orjson.loads(data))
        except (orjson.JSONDecodeError, msgspec.ValidationError, TypeError) as exc:
            self.detectors.skip(partition, offset)
            return [dead(f"kafka:{source}/{partition}@{offset}", f"not a canonical event: {exc}", data)]
        try:
            found = self.detectors.process(partition, offset, event)
        except Exception as exc:  # a bug on one event must not stall its partition (A11)
            self.failed += 1
            if sampled(self.failed):  # (the first with its traceback, then at every power of ten)
                log.error(
                    "detection failed on %s/%d@%d (%d so far): %r; dead-lettered",
                    source, partition, offset, self.failed, exc, exc_info=self.failed == 1,
                )  # fmt: skip
            letter = for_failed_event(f"kafka:{source}/{partition}@{offset}", event, exc)
            return [Out("deadletter", letter.source.encode(), encode_json(letter))]
        if found is None:
            return []
        self.events += 1
        return self.outputs(partition, found, event)

    def tick(self) -> list[Out]:
        """Timers due by the wall clock in every owned partition (live mode)."""
        out: list[Out] = []
        for partition, found in self.detectors.tick().items():
            out += self.outputs(partition, found, None)
        return out

    def outputs(self, partition: int, found: list[Finding], event: Event | None) -> list[Out]:
        out: list[Out] = []
        for f in found:
            self.findings += 1
            gkey = group_key(f.group)
            fid = finding_id(f)
            body = encode_json(f)
            page = dedup_key(f.rule, gkey).encode()
            out.append(Out("findings", page, body))
            alert = finding_alert(orjson.loads(body), gkey, fid, None, self.base_url)
            out.append(Out("alerts", page, orjson.dumps(alert.to_json())))
            rule = self.rules.get(f.rule)
            if rule is None:
                continue
            actions = [a for a in rule.actions if isinstance(a, RemediateAction)]
            if not actions:
                continue
            first = f.event_ids[0] if f.event_ids else ""
            trigger = (
                event if event is not None and event.id == first else self.detectors.event(partition, first)
            )
            for index, action in enumerate(actions):
                bound = bind(action, trigger, first)
                intent: dict[str, Any] = {
                    "rule": f.rule, "action": index, "finding": fid, "target": bound.target,
                    "time_ms": to_ms(f.time), "problem": bound.problem,
                }  # fmt: skip
                if bound.params is not None:  # templated parameters travel resolved, with their binding
                    intent |= {"params": bound.params, "binding": bound.binding}
                out.append(Out("intents", bound.target.encode(), orjson.dumps(intent)))
        return out


Submit = Callable[[list[Proposal]], Awaitable[list[Action]]]


class Act:
    """Action intents to the response engine (decide and act), the way the embedded stage proposes them."""

    def __init__(self, rules: Callable[[], RuleSet], submit: Submit) -> None:
        self.rules = rules
        self.submit = submit
        self.actions = 0

    def proposal(self, intent: Mapping[str, Any]) -> Proposal:
        """The proposal of one intent; KeyError/ValueError when the rule or its action is gone."""
        rule = self.rules().get(str(intent["rule"]))
        if rule is None:
            raise KeyError(f"rule {intent['rule']!r} is not loaded")
        actions = [a for a in rule.actions if isinstance(a, RemediateAction)]
        index = int(intent["action"])
        if not 0 <= index < len(actions):
            raise ValueError(f"rule {rule.id!r} has no remediate action #{index}")
        return Proposal(
            rule.id,
            rule.status,
            rule.author,
            actions[index],
            str(intent["finding"]),
            None,
            str(intent["target"]),
            int(intent["time_ms"]) / 1000,
            str(intent.get("problem") or ""),
            _params(intent.get("params")),
            str(intent.get("binding") or ""),
        )

    async def run(self, values: Sequence[tuple[str, bytes]]) -> tuple[list[Action], list[Out]]:
        """Submit one batch of intents (``(source, value)``); the actions as stored, and dead letters."""
        proposals: list[Proposal] = []
        letters: list[Out] = []
        for source, value in values:
            try:
                proposals.append(self.proposal(orjson.loads(value)))
            except (orjson.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
                letters.append(dead(source, f"unusable action intent: {exc}", value))
        actions = await self.submit(proposals) if proposals else []
        self.actions += len(actions)
        return actions, letters


def _params(value: object) -> dict[str, object] | None:
    """An intent's resolved parameters: a JSON object, or absent (none templated)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"params must be an object, not {type(value).__name__}")
    return value
