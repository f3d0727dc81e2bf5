"""The ``vigil.platform/1`` normalizer: Vigil's own platform changes as canonical events."""

from __future__ import annotations

import pytest

from vigil.errors import NormalizeError
from vigil.events.normalizers.platform import PlatformNormalizer
from vigil.platform.events import PlatformEvent

N = PlatformNormalizer()


def test_a_platform_event_record_round_trips_into_a_canonical_event() -> None:
    event = PlatformEvent("platform.storage.put", "node-a", "train/shard-1", {"size": 3}, outcome="denied")
    record = event.to_record()
    assert N.detect(record)
    out = N.normalize(record)
    assert out.id == f"plat:{event.id}" and out.kind == "platform" and out.action == "platform.storage.put"
    assert out.outcome == "failure" and out.severity == "medium"
    assert out.actor.id == "node-a" and out.resource.id == "train/shard-1"
    assert out.resource.type == "vigil.object" and out.resource.name == "shard-1"
    assert out.labels["area"] == "storage" and out.raw["details"] == {"size": 3}


@pytest.mark.parametrize(
    ("kind", "subject", "rtype"),
    [
        ("platform.key.rotate", "data-key", "vigil.key"),
        ("platform.node.quarantine", "node-1", "vigil.node"),
        ("platform.storage.set_lock", "train", "vigil.container"),
    ],
)
def test_resource_type_follows_the_area(kind: str, subject: str, rtype: str) -> None:
    out = N.normalize(PlatformEvent(kind, "vigil", subject).to_record())
    assert out.resource.type == rtype and out.outcome == "success" and out.severity is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"schema": "vigil.platform/9"}, "schema"),
        ({"kind": "key.rotate"}, "kind"),
        ({"principal": ""}, "principal"),
        ({"outcome": "maybe"}, "outcome"),
        ({"details": [1]}, "details"),
        ({"time": None}, "time"),
    ],
)
def test_malformed_records_name_the_field(change: dict[str, object], reason: str) -> None:
    record = PlatformEvent("platform.key.rotate", "vigil", "k").to_record() | change
    with pytest.raises(NormalizeError, match=reason):
        N.normalize(record)
