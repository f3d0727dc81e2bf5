"""Vigil's own platform changes, schema ``vigil.platform/1`` — a format Vigil defines (issue 7).

Every mutating operation on the local platform (key vault, secure storage, compute) reports a
:class:`vigil.platform.events.PlatformEvent`; the daemon feeds its record into its own pipeline, so the rules
watch Vigil's platform like any other source (a key released to an unexpected principal, a container
unlocked, a burst of denied reads). This docstring is the specification.

Record (version 1)::

    {
      "schema":    "vigil.platform/1",      # required
      "id":        "4f0c...",               # required non-empty string, unique per operation
      "kind":      "platform.key.rotate",   # required: platform.<area>.<operation>
      "principal": "vigil",                 # required: who asked
      "subject":   "data-key",              # required: the key, container[/object] or node
      "outcome":   "success",               # "success" or "denied"
      "time":      1795513200.25,           # required: Unix seconds
      "details":   {"version": "..."}       # optional object; never key material or tokens
    }

Mapping: ``id`` = ``plat:`` + ``id``; ``action`` = ``kind``; ``outcome`` ``success`` → success, ``denied`` →
failure; ``actor.id`` = ``actor.name`` = ``principal``; ``resource.id`` = ``subject`` and ``resource.type`` =
``vigil.key`` / ``vigil.container`` / ``vigil.object`` / ``vigil.node`` by the area; ``labels.area`` is the
area; ``raw`` is the record (rules read ``raw.details.version``). A denied operation has severity ``medium``.

Detection: ``schema`` is a string starting with ``vigil.platform/``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from vigil.errors import NormalizeError
from vigil.events.fields import parse_time
from vigil.events.model import Actor, Event, Resource, freeze
from vigil.events.normalize import Normalizer

SCHEMA_PREFIX: Final = "vigil.platform/"
SCHEMA_V1: Final = "vigil.platform/1"
_KIND_RE: Final = re.compile(r"platform\.([a-z]+)\.[a-z_]+")
_TYPES: Final = {"key": "vigil.key", "node": "vigil.node", "attestation": "vigil.node"}


class PlatformNormalizer(Normalizer):
    """One ``vigil.platform/1`` record: a change on Vigil's own platform."""

    name = "platform"
    kind = "platform"
    summary = "Vigil platform changes (schema vigil.platform/1): keys, storage, nodes"
    priority = 31

    def detect(self, record: Mapping[str, Any]) -> bool:
        schema = record.get("schema")
        return type(schema) is str and schema.startswith(SCHEMA_PREFIX)

    def normalize(self, record: dict[str, Any]) -> Event:
        if record.get("schema") != SCHEMA_V1:
            raise NormalizeError(
                f"schema: unsupported version {record.get('schema')!r} (expected {SCHEMA_V1!r})"
            )
        ident = _text(record, "id")
        kind = _text(record, "kind")
        match = _KIND_RE.fullmatch(kind)
        if match is None:
            raise NormalizeError(f"kind: expected platform.<area>.<operation>, got {kind!r}")
        principal = _text(record, "principal")
        subject = _text(record, "subject")
        outcome = record.get("outcome", "success")
        if outcome not in ("success", "denied"):
            raise NormalizeError(f"outcome: expected 'success' or 'denied', got {outcome!r}")
        raw_time = record.get("time")
        if type(raw_time) not in (int, float, str):
            raise NormalizeError(f"time: expected Unix seconds or ISO 8601, got {type(raw_time).__name__}")
        details = record.get("details", {})
        if not isinstance(details, dict):
            raise NormalizeError(f"details: expected an object, got {type(details).__name__}")
        area = match.group(1)
        rtype = _TYPES.get(area, "vigil.object" if "/" in subject else "vigil.container")
        denied = outcome == "denied"
        return Event(
            id=f"plat:{ident}",
            time=parse_time(raw_time, "time"),
            kind="platform",
            action=kind,
            outcome="failure" if denied else "success",
            severity="medium" if denied else None,
            actor=Actor(id=principal, name=principal, type="principal"),
            resource=Resource(id=subject, type=rtype, name=subject.rsplit("/", 1)[-1]),
            labels=freeze({"area": area}),
            raw=freeze(record),
        )


def _text(record: Mapping[str, Any], field: str) -> str:
    value = record.get(field)
    if type(value) is not str or not value:
        raise NormalizeError(f"{field}: expected a non-empty string, got {type(value).__name__}")
    return value
