"""Telemetry is trusted only as far as its signature: checked at ingestion against the attested key.

A node says ``"attested": true`` about itself in every record; Vigil believes it only when the record is
signed (:mod:`vigil.training_node.telemetry`) by the key that node attested with
(:class:`~vigil.platform.local.node_keys.NodeKeys`). Each ``node.telemetry`` event gets
``labels.signature``:

* ``valid`` — signed by the attested key; ``node.attested`` keeps the node's statement;
* ``invalid`` — a signature that does not verify with the attested key (forged, altered, an old key);
* ``missing`` — no ``sig``; ``unknown-key`` — a signature, but the node never attested here;

and for every value but ``valid``, ``node.attested`` is set to ``false``. The rules judge the label
(``tel.unsigned-record``, ``tel.bad-signature``); the event is stored either way, since a forged record
is evidence.

Applied to HTTP ingestion, where nodes send their telemetry. Events are immutable, so a checked event is a
copy with the new labels and node; everything else (its id included) is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from vigil.events.model import Event, Node, freeze
from vigil.platform.local.node_keys import NodeKeys
from vigil.training_node.telemetry import verify

KIND = "node.telemetry"


class TelemetryCheck:
    """Callable over a batch of events: telemetry events come back with their signature verdict."""

    def __init__(self, keys: NodeKeys) -> None:
        self.keys = keys
        self.counts = {"valid": 0, "invalid": 0, "missing": 0, "unknown-key": 0}

    def __call__(self, events: Sequence[Event]) -> list[Event]:
        return [self._check(e) if e.kind == KIND else e for e in events]

    def _check(self, event: Event) -> Event:
        record = dict(event.raw)
        key = self.keys.get(event.node.id or "")
        if not record.get("sig"):
            verdict = "missing"
        elif key is None:
            verdict = "unknown-key"
        else:
            verdict = "valid" if verify(record, key) else "invalid"
        self.counts[verdict] += 1
        labels = freeze({**event.labels, "signature": verdict})
        attested = event.node.attested if verdict == "valid" else False
        node = Node(id=event.node.id, attested=attested, measurement=event.node.measurement)
        return msgspec.structs.replace(event, labels=labels, node=node)
