"""The in-process normalisation path: expansion, dead letters, bad bytes, caps, fast vs dict paths."""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import msgspec
import orjson
import pytest

from vigil.events.batch import BatchNormalizer
from vigil.events.model import Event, encode_event

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from gen_activity import records


def _activity(n: int, seed: int = 3) -> list[dict[str, object]]:
    return list(records(n, seed))


def test_envelope_of_500_with_one_bad_record_gives_499_events_and_one_dead_letter() -> None:
    recs = _activity(500)
    recs[123] = dict(recs[123], time="not-a-time")
    result = BatchNormalizer().body(orjson.dumps({"records": recs}), "hub")
    assert len(result.events) == 499
    assert len(result.dead) == 1
    dl = result.dead[0]
    assert dl.index == "records[123]"
    assert dl.line == 1 and dl.source == "hub"
    assert "time: not an ISO 8601 timestamp" in dl.reason
    assert dl.format == "activity"
    assert dl.record["time"] == "not-a-time"


def test_fast_path_and_dict_path_build_identical_events() -> None:
    recs = _activity(300, seed=11)
    lines = b"".join(orjson.dumps(r) + b"\n" for r in recs)
    fast = BatchNormalizer("auto").body(lines, "s").events
    pretty = orjson.dumps(recs, option=orjson.OPT_INDENT_2)  # a multi-line document takes the dict path
    slow = BatchNormalizer("auto").body(pretty, "s").events
    assert len(fast) == len(slow) == 300
    assert fast == slow
    assert [e.raw["correlationId"] for e in fast] == [r["correlationId"] for r in recs]


def test_fast_path_declines_odd_records_and_dict_path_explains() -> None:
    rec = _activity(1)[0]
    rec["identity"] = {"claims": {"ipaddr": 12345}}  # numeric claim: typed decode declines
    out = BatchNormalizer().body(orjson.dumps(rec), "s")
    assert len(out.events) == 1 and out.events[0].actor.ip == rec["callerIpAddress"]


def test_arrays_and_arrays_of_envelopes_are_expanded_with_indexes() -> None:
    recs = _activity(4)
    bad = dict(recs[3], resourceId=None)
    body = orjson.dumps([recs[0], {"records": [recs[1], recs[2], bad]}, 7])
    out = BatchNormalizer().body(body, "s")
    assert len(out.events) == 3
    assert sorted(d.index or "" for d in out.dead) == ["[1].records[2]", "[2]"]
    by_index = {d.index: d.reason for d in out.dead}
    assert "resourceId" in by_index["[1].records[2]"]
    assert "expected a JSON object, got number" in by_index["[2]"]


def test_records_that_no_format_recognises_are_dead_lettered_with_their_keys() -> None:
    out = BatchNormalizer().body(b'{"hello": "world", "n": 1}\n', "s")
    assert not out.events
    assert "no normalizer recognises this record (top-level keys: hello, n)" in out.dead[0].reason


def test_invalid_utf8_line_is_dead_lettered_with_its_bytes_and_the_rest_survive() -> None:
    good = orjson.dumps(_activity(1)[0])
    bad = b'{"time": "\xff\xfe"}'
    out = BatchNormalizer().body(good + b"\n" + bad + b"\n" + good + b"\n", "f.jsonl")
    assert len(out.events) == 2
    (dl,) = out.dead
    assert dl.line == 2 and dl.offset == len(good) + 1
    assert "not valid UTF-8" in dl.reason
    assert base64.b64decode(dl.data_b64 or "") == bad


def test_ten_megabyte_line_is_dead_lettered_not_held(tmp_path: Path) -> None:
    good = orjson.dumps(_activity(1)[0])
    huge = b'{"x": "' + b"a" * (10 << 20) + b'"}'
    path = tmp_path / "big.jsonl"
    path.write_bytes(good + b"\n" + huge + b"\n" + good + b"\n")
    norm = BatchNormalizer()
    with path.open("rb") as fh:
        batches = list(norm.stream(fh, str(path)))
    events = [e for b in batches for e in b.events]
    dead = [d for b in batches for d in b.dead]
    assert len(events) == 2
    (dl,) = dead
    assert dl.line == 2 and dl.offset == len(good) + 1
    assert dl.length == len(huge) + 1
    assert "exceeds max_record_bytes" in dl.reason
    assert dl.excerpt is not None and len(dl.excerpt) <= 256


def test_json_nested_100000_deep_is_dead_lettered() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    out = BatchNormalizer().body(deep + b"\n" + orjson.dumps(_activity(1)[0]) + b"\n", "s")
    assert len(out.events) == 1
    assert "depth limit exceeded" in out.dead[0].reason or "invalid JSON" in out.dead[0].reason


def test_deep_but_parseable_record_does_not_crash() -> None:
    rec = _activity(1)[0]
    nested: object = "leaf"
    for _ in range(600):
        nested = {"n": nested}
    rec["properties"] = nested
    out = BatchNormalizer().body(msgspec.json.encode(rec), "s")
    assert len(out.events) == 1
    assert b'"n":{"n":' in encode_event(out.events[0])


def test_pretty_printed_document_is_one_record_set() -> None:
    body = orjson.dumps({"records": _activity(3)}, option=orjson.OPT_INDENT_2)
    assert body.count(b"\n") > 10
    out = BatchNormalizer().body(body, "doc.json")
    assert len(out.events) == 3 and not out.dead


def test_jsonl_with_broken_first_line_still_yields_the_rest() -> None:
    good = orjson.dumps(_activity(1)[0])
    out = BatchNormalizer().body(b'{"broken": \n' + good + b"\n" + good + b"\n", "s")
    assert len(out.events) == 2
    assert out.dead[0].line == 1 and "invalid JSON" in out.dead[0].reason


def test_document_over_the_cap_is_one_dead_letter() -> None:
    body = orjson.dumps({"records": _activity(50)}, option=orjson.OPT_INDENT_2)
    norm = BatchNormalizer(max_document_bytes=10_000)
    out = norm.body(body, "s")
    assert not out.events
    (dl,) = out.dead
    assert "exceeds max_document_bytes" in dl.reason and dl.length == len(body)


def test_blank_lines_are_skipped_and_line_numbers_kept() -> None:
    good = orjson.dumps(_activity(1)[0])
    out = BatchNormalizer().body(b"\n  \n" + good + b"\n\nnot json\n", "s")
    assert len(out.events) == 1
    assert out.dead[0].line == 5


def test_stream_yields_batches() -> None:
    data = b"".join(orjson.dumps(r) + b"\n" for r in _activity(50))
    batches = list(BatchNormalizer().stream(io.BytesIO(data), "s", batch_size=20))
    assert [len(b.events) for b in batches] == [20, 20, 10]


def test_forced_format_rejects_other_records() -> None:
    out = BatchNormalizer("activity").body(b'{"category": "AuditEvent"}', "s")
    assert not out.events and "resourceId" in out.dead[0].reason


def test_duplicate_delivery_gives_the_same_ids() -> None:
    recs = _activity(20)
    first = BatchNormalizer().body(orjson.dumps({"records": recs}), "a").events
    again = BatchNormalizer().body(b"\n".join(orjson.dumps(r) for r in recs), "b").events
    assert [e.id for e in first] == [e.id for e in again]
    assert len({e.id for e in first}) == 20


@pytest.mark.parametrize("value", [b'"text"', b"3", b"null", b"true"])
def test_scalar_lines_are_dead_lettered(value: bytes) -> None:
    out = BatchNormalizer().body(value + b"\n", "s")
    assert not out.events and "expected a JSON object" in out.dead[0].reason


def test_events_are_events() -> None:
    out = BatchNormalizer().body(orjson.dumps(_activity(1)[0]), "s")
    assert type(out.events[0]) is Event
