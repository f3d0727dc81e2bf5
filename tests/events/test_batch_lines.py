"""``BatchNormalizer.body``'s split-lines path for JSON Lines held in memory must give exactly what the stream
path gives: the same events, controls and dead letters, with the same line numbers and offsets, whatever
the lines are (other formats, envelopes, bad JSON, blank lines, CRLF, invalid UTF-8, no final newline)."""

from __future__ import annotations

import io
import random
import sys
from pathlib import Path

import msgspec
import orjson

from vigil.events.batch import BatchNormalizer, Result
from vigil.events.model import encode_event

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from gen_activity import records

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "events"


def _one_line(path: Path) -> bytes:
    return orjson.dumps(orjson.loads(path.read_bytes()))


def _others() -> list[bytes]:
    """Lines the fast path does not take, or takes differently: other formats, envelopes, junk."""
    lines = [
        _one_line(p)
        for kind in ("keyvault", "sentinel", "storage", "generic")
        for p in sorted((FIXTURES / kind).glob("good_*.json"))[:2]
    ]
    envelope = {"records": [dict(r) for r in records(3, seed=9)]}
    lines += [orjson.dumps(envelope), b"not json", b"{", b"42", b'"text"', b"[1, 2]", b"\xff\xfe{}", b"{}"]
    lines += [b"", b"   ", b"\t", orjson.dumps(next(records(1, seed=4))) + b"  "]
    return lines


def _stream(data: bytes) -> Result:
    out = Result()
    for part in BatchNormalizer().stream(io.BytesIO(data), "s", batch_size=1 << 30):
        out.events += part.events
        out.controls += part.controls
        out.dead += part.dead
    return out


def _same(a: Result, b: Result) -> None:
    assert [encode_event(e) for e in a.events] == [encode_event(e) for e in b.events]
    assert a.controls == b.controls
    assert [msgspec.structs.replace(d, at=None) for d in a.dead] == [
        msgspec.structs.replace(d, at=None) for d in b.dead
    ]


def test_the_split_path_gives_what_the_stream_path_gives() -> None:
    rng = random.Random(21)
    activity = [orjson.dumps(r) for r in records(200, seed=8)]
    others = _others()
    taken = 0
    for _ in range(300):
        lines = [rng.choice(activity)]  # (a first line the fast path takes: the split path's condition)
        for _ in range(rng.randrange(0, 40)):
            lines.append(rng.choice(activity) if rng.random() < 0.6 else rng.choice(others))
        ending = rng.choice([b"\n", b"\r\n"])
        data = ending.join(lines) + (ending if rng.random() < 0.7 else b"")
        normalizer = BatchNormalizer()
        split = normalizer._lines(data, "s")
        assert split is not None
        taken += 1
        _same(split, _stream(data))
    assert taken == 300


def test_the_split_path_steps_aside_for_other_input() -> None:
    normalizer = BatchNormalizer()
    record = orjson.dumps(next(records(1)))
    for data in (
        b"",
        b"\n" + record,
        b"not json\n" + record,
        orjson.dumps([orjson.loads(record)]),
        b"  " * 3,
    ):
        assert normalizer._lines(data, "s") is None, data
        _same(normalizer.body(data, "s"), _stream(data))


def test_input_longer_than_the_record_cap_takes_the_stream_path() -> None:
    """Over-long lines are dead-lettered by the stream path's reader; body() only splits input that cannot
    hold one."""
    record = orjson.dumps(next(records(1)))
    long_line = b'{"x": "' + b"a" * 3000 + b'"}'
    data = record + b"\n" + long_line + b"\n" + record + b"\n"
    out = BatchNormalizer(max_record_bytes=2048).body(data, "s")
    assert len(out.events) == 2
    assert [d.line for d in out.dead] == [2] and out.dead[0].length == len(long_line) + 1
