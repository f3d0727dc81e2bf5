"""The canonical event: one immutable shape for every source Vigil reads (DESIGN §3).

Normalizers build :class:`Event` values; rules read them with dotted names (``actor.ip``,
``resource.type``, ``raw.properties.httpStatusCode``). The model is a frozen ``msgspec.Struct`` rather than a
pydantic model because it is built once per event on the hot path: construction costs about 0.1 µs, against
several µs for a validating model (reference/performance.md §2). Validation happens where input is untrusted:
in the normalizers, and in :func:`event_from_mapping` for already-canonical input.

``raw`` and ``labels`` are :class:`FrozenMap` values: read-only mappings, so an event cannot be changed after
it was made (the nested values of ``raw`` are the source's own JSON values and must be treated as read-only
too). A ``FrozenMap`` may hold the record's JSON bytes instead of a dict and decode them on first access: the
fast normalisation path never builds the dict of a record that no rule looks into, and writes the original
bytes back out verbatim.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from datetime import datetime
from typing import Any, Final, Literal

import msgspec
import orjson

from vigil.runtime import PURE_PYTHON

try:
    from vigil.events._activity import json_path as _json_path
except ImportError:  # built without a C compiler: paths are read from the decoded dict
    _json_path = None  # type: ignore[assignment]
if PURE_PYTHON:
    _json_path = None  # type: ignore[assignment]

Outcome = Literal["success", "failure", "unknown"]
Severity = Literal["informational", "low", "medium", "high"]

#: Source families. ``sentinel.incident`` and ``eventgrid.validation`` extend DESIGN §3: incidents are not
#: alerts, and a subscription handshake is a control message, never a security event.
KINDS: Final = frozenset(
    {
        "azure.activity",
        "azure.keyvault",
        "azure.storage",
        "sentinel.alert",
        "sentinel.incident",
        "azure.monitor.alert",
        "eventgrid",
        "attestation",
        "node.telemetry",
        "platform",
        "generic",
    }
)
OUTCOMES: Final = frozenset({"success", "failure", "unknown"})
SEVERITIES: Final = frozenset({"informational", "low", "medium", "high"})


class FrozenMap(Mapping[str, Any]):
    """A read-only mapping over a dict, or over JSON object bytes decoded lazily on first access."""

    __slots__ = ("_data", "_json")

    def __init__(self, data: dict[str, Any] | None = None, json: bytes | msgspec.Raw | None = None) -> None:
        self._data = data
        self._json = json

    @classmethod
    def from_json(cls, json: bytes | msgspec.Raw) -> FrozenMap:
        """Wrap the JSON bytes of an object without decoding them."""
        return cls(None, json)

    def _dict(self) -> dict[str, Any]:
        data = self._data
        if data is None:
            decoded = orjson.loads(memoryview(self._json)) if self._json is not None else {}
            data = self._data = decoded if isinstance(decoded, dict) else {}
        return data

    def __getitem__(self, key: str) -> Any:
        return self._dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._dict().get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    # (the dict's own views: Mapping's generic ones call __getitem__ per key, and group keys, suppression
    # and incidents join a finding's group values for every finding)
    def keys(self) -> KeysView[str]:
        return self._dict().keys()

    def values(self) -> ValuesView[Any]:
        return self._dict().values()

    def items(self) -> ItemsView[str, Any]:
        return self._dict().items()

    def __len__(self) -> int:
        return len(self._dict())

    def __contains__(self, key: object) -> bool:
        return key in self._dict()

    def __repr__(self) -> str:
        return f"FrozenMap({self._dict()!r})"

    def path(self, keys: tuple[str, ...]) -> Any:
        """``self[k1][k2]...``, None where a member is missing or a value on the way is not a mapping.

        While the JSON bytes are still undecoded, only the value at the path is (``_activity.json_path``
        finds it in the bytes): a rule reads one field of a 1.5 KB record, and decoding the whole record for
        it, then freeing it with the event, took about 15 % of the daemon's GIL time under the shipped
        rules. Whatever the compiled finder declines (a duplicate or escaped key on the path) decodes all."""
        if self._data is None and self._json is not None and _json_path is not None:
            found = _json_path(self._json, keys)
            if found is not NotImplemented:
                return None if found is None else orjson.loads(found)
        value: Any = self._dict()
        for key in keys:
            value = value.get(key) if isinstance(value, Mapping) else None
            if value is None:
                return None
        return value

    def to_json_value(self) -> Any:
        """What the encoder writes: the original bytes when they were kept, the dict otherwise."""
        if self._json is not None:
            return self._json if isinstance(self._json, msgspec.Raw) else msgspec.Raw(self._json)
        return self._data if self._data is not None else {}


_EMPTY: Final[Mapping[str, Any]] = FrozenMap({})


class Actor(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True, gc=False
):
    """Who did it and from where."""

    id: str | None = None
    name: str | None = None
    type: str | None = None
    ip: str | None = None
    app_id: str | None = None
    tenant: str | None = None


class Resource(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True, gc=False
):
    """What it was done to. ``id`` is the lower-cased ARM id; the other fields are parsed out of it."""

    id: str | None = None
    type: str | None = None
    name: str | None = None
    subscription: str | None = None
    group: str | None = None


class Node(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True, gc=False
):
    """Training-node identity, for telemetry and attestation events."""

    id: str | None = None
    attested: bool | None = None
    measurement: str | None = None


NO_ACTOR: Final = Actor()
NO_RESOURCE: Final = Resource()
NO_NODE: Final = Node()


class Event(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True, gc=False
):
    """One normalised security event.

    ``id`` is stable across re-delivery of the same source record (the source's own id where it has one,
    otherwise a hash of the fields that identify the record), because exactly-once effects key on it.
    ``time`` is timezone-aware UTC.
    """

    id: str
    time: datetime
    kind: str
    action: str
    outcome: Outcome = "unknown"
    severity: Severity | None = None
    actor: Actor = NO_ACTOR
    resource: Resource = NO_RESOURCE
    node: Node = NO_NODE
    labels: Mapping[str, str] = _EMPTY
    raw: Mapping[str, Any] = _EMPTY


class Control(msgspec.Struct, frozen=True, kw_only=True):
    """A record that is a protocol message rather than a security event (Event Grid validation handshake).

    Sources answer it (the HTTP endpoint echoes ``validation_code``); it is counted, never scored.
    """

    kind: str
    id: str
    details: Mapping[str, Any] = _EMPTY


def freeze(mapping: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """Return a read-only view of ``mapping`` without copying it."""
    if not mapping:
        return _EMPTY
    if isinstance(mapping, FrozenMap):
        return mapping
    return FrozenMap(mapping if isinstance(mapping, dict) else dict(mapping))


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, FrozenMap):
        return obj.to_json_value()
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


_encoder: Final = msgspec.json.Encoder(enc_hook=_enc_hook)


def encode_event(event: Event | Control) -> bytes:
    """Serialise an event as compact JSON; absent (``None``) fields are omitted."""
    return _encoder.encode(event)


def encode_json(obj: msgspec.Struct) -> bytes:
    """Any of Vigil's structs (a finding, a dead letter) as compact JSON, read-only mappings included."""
    return _encoder.encode(obj)


def encode_events(events: list[Event]) -> bytes:
    """Serialise many events as JSON Lines in one call (the fast path of ``vigil normalize``)."""
    buf = bytearray()
    for ev in events:
        _encoder.encode_into(ev, buf, len(buf))
        buf += b"\n"
    return bytes(buf)


def event_from_mapping(data: Mapping[str, Any]) -> Event:
    """Validate an already-canonical mapping (for example a decoded ``vigil normalize`` line) into an Event.

    Raises ``msgspec.ValidationError`` naming the offending field.
    """
    ev = msgspec.convert(data, Event, strict=False)
    if ev.kind not in KINDS:
        raise msgspec.ValidationError(f"unknown kind {ev.kind!r} - at `$.kind`")
    if ev.time.tzinfo is None:
        raise msgspec.ValidationError("time must carry a timezone (use Z for UTC) - at `$.time`")
    return msgspec.structs.replace(ev, raw=freeze(ev.raw), labels=freeze(ev.labels))
