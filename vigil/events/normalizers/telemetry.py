"""Vigil training-node telemetry, schema ``vigil.telemetry/1`` — a format Vigil defines (DESIGN §1, §6).

Attested training nodes (``vigil/training_node``) report what they do as one JSON object per record (JSON
Lines on a file or a socket, or a JSON array in one HTTP body). This docstring is the specification.

Record (version 1)::

    {
      "schema":      "vigil.telemetry/1",  # required; the major version. Other versions are refused.
      "type":        "train.step",         # required; the record type, see below
      "node_id":     "node-a1",            # required non-empty string: the node's id in Vigil's registry
      "time":        "2026-11-24T10:15:00.125Z",  # required ISO 8601 string (no zone means UTC)
      "seq":         1042,                 # required integer >= 0, strictly increasing per node_id and
                                           #   never reused (the node persists it across restarts);
                                           #   re-sending a record re-sends the same seq
      "attested":    true,                 # required boolean: the node holds a valid attestation now
      "measurement": "3c9e...",            # optional: the node's SEV-SNP launch measurement (96 hex)
      "outcome":     "success",            # optional: "success" | "failure" | "unknown" (the default)
      "metrics":     {"step": 1042, "loss": 1.93},  # optional object of name -> number or null
      "object":      {"key": "..."},       # data.access only, see below
      "sig":         "base64url..."        # optional string: the node's signature over the record
                                           #   without "sig" (checked by the telemetry source/detector)
    }

Record types: ``type`` is a lower-case dotted name (``[a-z][a-z0-9_]*`` segments joined by ``.``). The ones
the training node emits today, with the fields each one needs:

* ``heartbeat`` — liveness, every few seconds; ``metrics`` optional (``gpu_util``, ``mem_used_bytes`` ...).
* ``train.start`` / ``train.end`` — a run begins or ends; ``metrics`` optional.
* ``train.step`` — one optimiser step. ``metrics`` is **required** with ``step`` (integer >= 0); ``loss``,
  ``lr``, ``samples_per_s``, ``grad_norm`` are the usual others. A metric whose value is not a finite number
  (a diverging loss is NaN) is sent as ``null``, since JSON has no NaN.
* ``data.access`` — the node read, wrote or deleted an object of the secure store. ``object`` is **required**:
  ``{"key": str (required, non-empty), "op": "read"|"write"|"delete" (optional), "bytes": int >= 0 (optional),
  "key_version": str (optional: the data-key version that decrypted it), "store": str (optional)}``.
* ``checkpoint.save``, ``key.release`` and other types are accepted with only the common fields checked, so a
  node can add a type without breaking its monitor; unknown top-level fields are kept in ``raw``.

Every malformed field is refused with a reason that names it (``seq: expected an integer >= 0, got str``).

Mapping to the canonical event:

=====================  ==================================================================================
``id``                 ``tel:`` + hash of ``node_id`` and ``seq`` (a re-delivered record keeps its id)
``time``               ``time``
``action``             ``node.`` + ``type`` (``node.heartbeat``, ``node.train.step``, ``node.data.access``)
``outcome``            ``outcome``, default ``unknown``
``node``               ``id`` = ``node_id``, ``attested`` = ``attested``, ``measurement`` = lower-case hex
``resource``           ``data.access``: ``id`` = ``object.key`` (case kept: object keys are case-sensitive),
                       ``type`` = ``vigil.object``
``labels``             ``signed`` (``"true"``/``"false"``: whether ``sig`` is present); for ``data.access``
                       ``object_op``, ``key_version`` and ``store`` when given
``raw``                the record (metrics are read as ``raw.metrics.loss``)
=====================  ==================================================================================

Detection: ``schema`` is a string starting with ``vigil.telemetry/``; no other format has a ``schema`` key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from vigil.errors import NormalizeError
from vigil.events.fields import parse_time, stable_id
from vigil.events.model import NO_RESOURCE, Event, Node, Outcome, Resource, freeze
from vigil.events.normalize import Normalizer
from vigil.events.normalizers.attestation import launch_measurement

SCHEMA_PREFIX: Final = "vigil.telemetry/"
SCHEMA_V1: Final = "vigil.telemetry/1"
OBJECT_OPS: Final = frozenset({"read", "write", "delete"})

_TYPE_RE: Final = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")
_OUTCOMES: Final[dict[str, Outcome]] = {"success": "success", "failure": "failure", "unknown": "unknown"}


class TelemetryNormalizer(Normalizer):
    """One ``vigil.telemetry/1`` record from a training node."""

    name = "telemetry"
    kind = "node.telemetry"
    summary = "Vigil training-node telemetry (schema vigil.telemetry/1)"
    priority = 30

    def detect(self, record: Mapping[str, Any]) -> bool:
        schema = record.get("schema")
        return type(schema) is str and schema.startswith(SCHEMA_PREFIX)

    def normalize(self, record: dict[str, Any]) -> Event:
        schema = record.get("schema")
        if schema != SCHEMA_V1:
            raise NormalizeError(f"schema: unsupported version {schema!r} (this Vigil reads {SCHEMA_V1!r})")
        rtype = record.get("type")
        if type(rtype) is not str or not _TYPE_RE.fullmatch(rtype):
            raise NormalizeError(
                f"type: expected a lower-case dotted name such as 'train.step', got {_show(rtype)}"
            )
        node_id = record.get("node_id")
        if type(node_id) is not str or not node_id.strip():
            raise NormalizeError(f"node_id: expected a non-empty string, got {_show(node_id)}")
        raw_time = record.get("time")
        if type(raw_time) is not str:
            raise NormalizeError(f"time: expected an ISO 8601 string, got {_show(raw_time)}")
        when = parse_time(raw_time, "time")
        seq = record.get("seq")
        if type(seq) is not int or seq < 0:
            raise NormalizeError(f"seq: expected an integer >= 0, got {_show(seq)}")
        attested = record.get("attested")
        if type(attested) is not bool:
            raise NormalizeError(f"attested: expected a boolean, got {_show(attested)}")
        measurement = launch_measurement(record.get("measurement"), "measurement")
        outcome = _outcome(record.get("outcome"))
        metrics = _metrics(record.get("metrics"), required=rtype == "train.step")
        if rtype == "train.step":
            step = metrics.get("step")
            if type(step) is not int or step < 0:
                raise NormalizeError(f"metrics.step: expected an integer >= 0, got {_show(step)}")
        sig = record.get("sig")
        if sig is not None and (type(sig) is not str or not sig):
            raise NormalizeError(f"sig: expected a non-empty string, got {_show(sig)}")

        labels = {"signed": "false" if sig is None else "true"}
        resource = NO_RESOURCE
        if rtype == "data.access":
            resource = _object(record.get("object"), labels)

        return Event(
            id=stable_id("tel:", node_id, seq),
            time=when,
            kind="node.telemetry",
            action="node." + rtype,
            outcome=outcome,
            node=Node(id=node_id, attested=attested, measurement=measurement),
            resource=resource,
            labels=freeze(labels),
            raw=freeze(record),
        )


def _metrics(value: Any, *, required: bool) -> dict[str, Any]:
    if value is None:
        if required:
            raise NormalizeError("metrics: missing (a train.step record needs metrics.step)")
        return {}
    if type(value) is not dict:
        raise NormalizeError(f"metrics: expected an object, got {_show(value)}")
    for name, number in value.items():
        if number is not None and (not isinstance(number, int | float) or isinstance(number, bool)):
            raise NormalizeError(f"metrics.{name}: expected a number or null, got {_show(number)}")
    return value


def _object(value: Any, labels: dict[str, str]) -> Resource:
    """The ``object`` of a ``data.access`` record, as the event's resource; op and key version as labels."""
    if type(value) is not dict:
        raise NormalizeError(f"object: expected an object with a 'key' (data.access), got {_show(value)}")
    key = value.get("key")
    if type(key) is not str or not key:
        raise NormalizeError(f"object.key: expected a non-empty string, got {_show(key)}")
    op = value.get("op")
    if op is not None:
        if type(op) is not str or op not in OBJECT_OPS:
            raise NormalizeError(f"object.op: expected 'read', 'write' or 'delete', got {_show(op)}")
        labels["object_op"] = op
    size = value.get("bytes")
    if size is not None and (type(size) is not int or size < 0):
        raise NormalizeError(f"object.bytes: expected an integer >= 0, got {_show(size)}")
    key_version = value.get("key_version")
    if key_version is not None:
        if type(key_version) is not str or not key_version:
            raise NormalizeError(f"object.key_version: expected a non-empty string, got {_show(key_version)}")
        labels["key_version"] = key_version
    store = value.get("store")
    if store is not None:
        if type(store) is not str or not store:
            raise NormalizeError(f"object.store: expected a non-empty string, got {_show(store)}")
        labels["store"] = store
    return Resource(id=key, type="vigil.object")


def _outcome(value: Any) -> Outcome:
    if value is None:
        return "unknown"
    outcome = _OUTCOMES.get(value) if type(value) is str else None
    if outcome is None:
        raise NormalizeError(f"outcome: expected 'success', 'failure' or 'unknown', got {_show(value)}")
    return outcome


def _show(value: Any) -> str:
    """How a bad value is named in a reason: its type, and the value itself when it is short."""
    if value is None:
        return "nothing (missing)"
    shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{type(value).__name__} {shown}"
