"""Already-canonical events: what ``vigil normalize`` writes, so its output can be fed back in (DESIGN §3).

A record is one canonical event as JSON: ``id``, ``time``, ``kind``, ``action``, ``outcome``,
``severity``, ``actor``, ``resource``, ``node``, ``labels``, ``raw`` — exactly the encoding of
:func:`vigil.events.model.encode_event`. It is validated by
:func:`~vigil.events.model.event_from_mapping`, strictly: unknown fields inside ``actor``, ``resource``
or ``node``, a ``kind`` outside :data:`~vigil.events.model.KINDS`, an outcome or severity outside their
sets, labels that are not strings, and a time without a zone are refused, with msgspec's message naming
the field (``... - at `$.actor.ip```). ``kind`` passes through: a re-read Event Grid event stays
``eventgrid``.

``id`` is optional for hand-written input (tests, replays, other tools): without one, the id is ``gen:``
+ a hash of the record's content, so the same record always gets the same id. ``time`` is an ISO 8601
string with a zone, or epoch seconds.

Detection: ``kind`` is a string, ``action`` and ``time`` are present, and **every** top-level key is a
canonical field name. The last condition makes detection exclusive by construction: every other format
has a top-level key the canonical event has not (``eventType``, ``specversion``, ``schema``,
``x-ms-attestation-type``, ``claims``, ``operationName``, ``SystemAlertId``, ``objectSchemaType``,
``schemaId``). ``kind`` is not checked against :data:`~vigil.events.model.KINDS` in ``detect``, so that
a bad kind is refused with a reason instead of going unrecognised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from vigil.errors import NormalizeError
from vigil.events.fields import content_id
from vigil.events.model import Event, event_from_mapping
from vigil.events.normalize import Normalizer

#: the top-level fields of a canonical event
FIELDS: Final = frozenset(f.encode_name for f in msgspec.structs.fields(Event))


class GenericNormalizer(Normalizer):
    """A canonical event (the output of ``vigil normalize``), validated and passed through."""

    name = "generic"
    kind = "generic"
    summary = "Already-canonical Vigil events (the output of `vigil normalize`), kind passed through"
    priority = 90

    def detect(self, record: Mapping[str, Any]) -> bool:
        return (
            type(record.get("kind")) is str
            and "action" in record
            and "time" in record
            and FIELDS.issuperset(record)
        )

    def normalize(self, record: dict[str, Any]) -> Event:
        data = record
        if "id" not in record:
            data = dict(record)
            data["id"] = content_id("gen:", record)
        try:
            event = event_from_mapping(data)
        except msgspec.ValidationError as exc:
            raise NormalizeError(f"canonical event: {exc}") from None
        if not event.id:
            raise NormalizeError("canonical event: id is empty - at `$.id`")
        if not event.action:
            raise NormalizeError("canonical event: action is empty - at `$.action`")
        return event
