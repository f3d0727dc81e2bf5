"""Vigil training-node telemetry, schema vigil.telemetry/1."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from tests.conftest import EVENT_FIXTURES
from vigil.errors import NormalizeError
from vigil.events.batch import BatchNormalizer
from vigil.events.fields import stable_id
from vigil.events.normalizers.telemetry import TelemetryNormalizer

DIR = EVENT_FIXTURES / "telemetry"
MEASUREMENT = (
    "3c9e7a15f2d84b60a9c1e3f5b7d9021468ace0f2b4d6089a1c3e5f7b9d0f2a4c6e8a0c2e4f6b8d0a2c4e6f8a0b2c4d6e"
)


def _lines(name: str) -> list[Any]:
    return [orjson.loads(line) for line in (DIR / name).read_bytes().splitlines() if line.strip()]


def _record(**changes: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "schema": "vigil.telemetry/1",
        "type": "heartbeat",
        "node_id": "node-a1",
        "time": "2026-11-24T10:15:00.125Z",
        "seq": 7,
        "attested": True,
    }
    for key, value in changes.items():
        if value is ...:
            rec.pop(key, None)
        else:
            rec[key] = value
    return rec


def _reason(record: dict[str, Any]) -> str:
    with pytest.raises(NormalizeError) as err:
        TelemetryNormalizer().normalize(record)
    return err.value.reason


def test_node_stream_maps_every_field() -> None:
    out = BatchNormalizer("auto").body((DIR / "good_node_stream.jsonl").read_bytes(), "f")
    assert not out.dead
    hb, step, nan_step, read, denied, other = out.events
    assert {e.kind for e in out.events} == {"node.telemetry"}

    assert hb.action == "node.heartbeat"
    assert hb.id == stable_id("tel:", "node-a1", 1040)
    assert hb.time == datetime(2026, 11, 24, 10, 15, 0, 125000, tzinfo=UTC)
    assert hb.outcome == "unknown"
    assert hb.node.id == "node-a1" and hb.node.attested is True and hb.node.measurement == MEASUREMENT
    assert dict(hb.labels) == {"signed": "false"}
    assert hb.resource.id is None and hb.actor.id is None
    assert hb.raw["metrics"]["gpu_util"] == 0.97

    assert step.action == "node.train.step"
    assert step.labels["signed"] == "true"
    assert step.raw["metrics"] == {
        "step": 5120,
        "loss": 1.932,
        "lr": 0.0003,
        "samples_per_s": 412.5,
        "grad_norm": 0.81,
    }
    assert nan_step.raw["metrics"]["loss"] is None  # NaN travels as null

    assert read.action == "node.data.access"
    assert read.outcome == "success"
    assert read.resource.id == "datasets/llm-corpus/shard-00017.bin.enc"
    assert read.resource.type == "vigil.object"
    assert read.labels["object_op"] == "read"
    assert read.labels["key_version"] == "9a8b7c6d5e4f40312a1b2c3d4e5f6a7b"
    assert read.labels["store"] == "vigil-secure-store"
    assert read.raw["object"]["bytes"] == 268435456

    assert denied.outcome == "failure"
    assert "key_version" not in denied.labels

    assert other.node.id == "node-b7" and other.node.attested is False and other.node.measurement is None
    assert len({e.id for e in out.events}) == len(out.events)


def test_http_body_array_and_open_type_vocabulary() -> None:
    out = BatchNormalizer("auto").body((DIR / "good_http_body_array.json").read_bytes(), "f")
    assert not out.dead
    assert [e.action for e in out.events] == ["node.checkpoint.save", "node.heartbeat"]


def test_id_is_node_and_seq_only() -> None:
    norm = TelemetryNormalizer()
    a = norm.normalize(_record())
    resent = norm.normalize(_record(time="2026-11-24T10:15:09Z", metrics={"x": 1}))
    assert a.id == resent.id == stable_id("tel:", "node-a1", 7)
    assert norm.normalize(_record(seq=8)).id != a.id
    assert norm.normalize(_record(node_id="node-a2")).id != a.id


def test_measurement_is_lower_cased_and_time_without_zone_is_utc() -> None:
    ev = TelemetryNormalizer().normalize(_record(measurement=MEASUREMENT.upper(), time="2026-11-24T10:15:00"))
    assert ev.node.measurement == MEASUREMENT
    assert ev.time == datetime(2026, 11, 24, 10, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"seq": "x"}, "seq: expected an integer >= 0, got str 'x'"),
        ({"seq": -1}, "seq: expected an integer >= 0, got int -1"),
        ({"seq": 1.0}, "seq: expected an integer >= 0, got float 1.0"),
        ({"seq": True}, "seq: expected an integer >= 0, got bool True"),
        ({"seq": ...}, "seq: expected an integer >= 0, got nothing (missing)"),
        ({"node_id": ""}, "node_id: expected a non-empty string, got str ''"),
        ({"node_id": 12}, "node_id: expected a non-empty string, got int 12"),
        ({"attested": "yes"}, "attested: expected a boolean, got str 'yes'"),
        ({"attested": ...}, "attested: expected a boolean, got nothing (missing)"),
        ({"time": 1795513200}, "time: expected an ISO 8601 string, got int 1795513200"),
        (
            {"type": "Heart Beat"},
            "type: expected a lower-case dotted name such as 'train.step', got str 'Heart Beat'",
        ),
        (
            {"type": "node..x"},
            "type: expected a lower-case dotted name such as 'train.step', got str 'node..x'",
        ),
        (
            {"schema": "vigil.telemetry/2"},
            "schema: unsupported version 'vigil.telemetry/2' (this Vigil reads ",
        ),
        ({"measurement": "xyz"}, "measurement: not hex (found 'x')"),
        ({"measurement": "ab" * 32}, "measurement: expected 96 hex digits (SHA-384), got 64"),
        ({"measurement": 5}, "measurement: expected a hex string, got int"),
        ({"outcome": "ok"}, "outcome: expected 'success', 'failure' or 'unknown', got str 'ok'"),
        ({"outcome": ["x"]}, "outcome: expected 'success', 'failure' or 'unknown', got list ['x']"),
        ({"metrics": [1]}, "metrics: expected an object, got list [1]"),
        ({"metrics": {"gpu_util": "97%"}}, "metrics.gpu_util: expected a number or null, got str '97%'"),
        ({"metrics": {"ok": True}}, "metrics.ok: expected a number or null, got bool True"),
        ({"sig": ""}, "sig: expected a non-empty string, got str ''"),
        ({"type": "train.step"}, "metrics: missing (a train.step record needs metrics.step)"),
        (
            {"type": "train.step", "metrics": {"loss": 1.0}},
            "metrics.step: expected an integer >= 0, got nothing",
        ),
        (
            {"type": "train.step", "metrics": {"step": 1.5}},
            "metrics.step: expected an integer >= 0, got float 1.5",
        ),
        ({"type": "data.access"}, "object: expected an object with a 'key' (data.access), got nothing"),
        (
            {"type": "data.access", "object": {"key": ""}},
            "object.key: expected a non-empty string, got str ''",
        ),
        (
            {"type": "data.access", "object": {"key": "k", "op": "copy"}},
            "object.op: expected 'read', 'write' or",
        ),
        (
            {"type": "data.access", "object": {"key": "k", "bytes": -5}},
            "object.bytes: expected an integer >= 0",
        ),
        ({"type": "data.access", "object": {"key": "k", "key_version": 3}}, "object.key_version: expected a"),
        ({"type": "data.access", "object": {"key": "k", "store": {}}}, "object.store: expected a non-empty"),
    ],
)
def test_precise_reasons_name_the_field(changes: dict[str, Any], reason: str) -> None:
    assert _reason(_record(**changes)).startswith(reason)


def test_bad_fixtures() -> None:
    out = BatchNormalizer("auto").body((DIR / "bad_seq_not_int.json").read_bytes(), "f")
    (dead,) = out.dead
    assert dead.format == "telemetry"
    assert dead.reason == "seq: expected an integer >= 0, got str 'x'"
    out = BatchNormalizer("auto").body((DIR / "bad_fields.jsonl").read_bytes(), "f")
    assert not out.events
    assert [d.reason.split(":")[0] for d in out.dead] == [
        "schema",
        "node_id",
        "seq",
        "attested",
        "metrics.loss",
        "metrics.step",
        "object.key",
        "time",
        "type",
        "measurement",
    ]


def test_long_values_are_shortened_in_reasons() -> None:
    reason = _reason(_record(seq="x" * 500))
    assert len(reason) < 100
    assert reason.endswith("...")


def test_detect() -> None:
    norm = TelemetryNormalizer()
    assert norm.detect(_record())
    assert norm.detect(_record(schema="vigil.telemetry/9"))  # refused later, with a reason
    assert not norm.detect(_record(schema="other/1"))
    assert not norm.detect(_record(schema=1))
    assert not norm.detect(_record(schema=...))
    assert not norm.detect({"schemaId": "azureMonitorCommonAlertSchema", "data": {}})
    assert TelemetryNormalizer.name == "telemetry"
    assert TelemetryNormalizer.kind == "node.telemetry"
