from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import orjson
import pytest

from vigil.events.model import (
    KINDS,
    Actor,
    Event,
    FrozenMap,
    Resource,
    encode_event,
    encode_events,
    event_from_mapping,
    freeze,
)


def _event(**kw: object) -> Event:
    base: dict[str, object] = {
        "id": "x:1",
        "time": datetime(2026, 11, 24, 9, 41, 7, tzinfo=UTC),
        "kind": "azure.activity",
        "action": "microsoft.keyvault/vaults/write",
        "actor": Actor(id="u1", ip="203.0.113.9"),
        "resource": Resource(id="/subscriptions/s", type="microsoft.resources/subscriptions", name="s"),
        "labels": freeze({"env": "prod"}),
        "raw": freeze({"a": {"b": [1, 2]}}),
    }
    base.update(kw)
    return Event(**base)  # type: ignore[arg-type]


def test_event_is_immutable() -> None:
    ev = _event()
    with pytest.raises(AttributeError):
        ev.action = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        ev.raw["a"] = 1  # type: ignore[index]
    with pytest.raises(TypeError):
        ev.labels["env"] = "dev"  # type: ignore[index]


def test_defaults_and_omitted_fields() -> None:
    ev = Event(id="i", time=datetime(2026, 1, 1, tzinfo=UTC), kind="generic", action="x")
    assert ev.outcome == "unknown"
    assert ev.severity is None
    assert ev.actor.ip is None and ev.resource.id is None and ev.node.id is None
    assert dict(ev.raw) == {} and dict(ev.labels) == {}
    assert orjson.loads(encode_event(ev)) == {
        "id": "i",
        "time": "2026-01-01T00:00:00Z",
        "kind": "generic",
        "action": "x",
    }


def test_encode_then_validate_round_trip() -> None:
    ev = _event(outcome="failure", severity="high")
    data = orjson.loads(encode_event(ev))
    assert data["raw"] == {"a": {"b": [1, 2]}}
    assert data["actor"] == {"id": "u1", "ip": "203.0.113.9"}
    back = event_from_mapping(data)
    assert back == ev
    assert isinstance(back.raw, FrozenMap)


def test_encode_events_is_json_lines() -> None:
    lines = encode_events([_event(id="a"), _event(id="b")]).splitlines()
    assert [orjson.loads(line)["id"] for line in lines] == ["a", "b"]


def test_frozen_map_lazy_json_is_written_verbatim_and_reads_like_a_dict() -> None:
    raw = FrozenMap.from_json(b'{"z": 1, "nested": {"k": "v"}}')
    ev = _event(raw=raw)
    assert b'"raw":{"z": 1, "nested": {"k": "v"}}' in encode_event(ev)
    assert raw["nested"]["k"] == "v"
    assert raw.get("missing") is None
    assert "z" in raw and len(raw) == 2
    assert raw == {"z": 1, "nested": {"k": "v"}}


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"kind": "nope"}, "unknown kind"),
        ({"time": "2026-11-24T09:00:00"}, "timezone"),
        ({"outcome": "maybe"}, "outcome"),
        ({"actor": {"ip": 5}}, "actor.ip"),
        ({"actor": {"colour": "red"}}, "colour"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_event_from_mapping_rejects_bad_input_naming_the_field(
    patch: dict[str, object], message: str
) -> None:
    data: dict[str, object] = {"id": "i", "time": "2026-11-24T09:00:00Z", "kind": "generic", "action": "x"}
    data.update(patch)
    with pytest.raises(msgspec.ValidationError, match=message):
        event_from_mapping(data)


def test_kinds_cover_design_section_3() -> None:
    assert {
        "azure.activity",
        "azure.keyvault",
        "azure.storage",
        "sentinel.alert",
        "azure.monitor.alert",
        "eventgrid",
        "attestation",
        "node.telemetry",
        "generic",
    } <= KINDS
