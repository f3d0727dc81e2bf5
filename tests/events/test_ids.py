"""The compiled event ids and times (``vigil/events/_ids.c``) against what they replace: hashlib's BLAKE2b,
and the Python ``time_id`` and ``to_ms`` of ``fields.py``, on random input (the ids of stored events and
findings must not change with the build)."""

from __future__ import annotations

import hashlib
import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from vigil.events import fields

_ids = pytest.importorskip("vigil.events._ids")

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def test_digest_is_blake2b_at_every_length_and_size() -> None:
    rnd = random.Random(3)
    for n in [*range(0, 300), 383, 384, 385, 1024, 4096 + 7]:
        data = rnd.randbytes(n)
        for size in (1, 8, 10, 16, 33, 64):
            assert _ids.digest(data, size) == hashlib.blake2b(data, digest_size=size).digest(), (n, size)
    with pytest.raises(ValueError):
        _ids.digest(b"", 65)


def _text(rnd: random.Random) -> str:
    """ASCII, two- and four-byte UTF-8, and lone surrogates (which ids pass through, "surrogatepass")."""
    ranges = [(32, 127), (0x80, 0x800), (0xD800, 0xE000), (0x10000, 0x110000)]
    return "".join(chr(rnd.randrange(*rnd.choice(ranges))) for _ in range(rnd.randrange(0, 300)))


def test_time_id_is_the_python_one() -> None:
    rnd = random.Random(5)
    edges = [-(2**70), -1, 0, 1, (1 << 48) - 1, 1 << 48, 2**70]
    for _ in range(5000):
        ms = rnd.choice([rnd.randrange(-(10**6), 1 << 49), rnd.choice(edges)])
        prefix = rnd.choice(["act:", "", "kv:", "é-", "𝓿:"])
        key = _text(rnd)
        assert _ids.time_id(prefix, key, ms) == fields._time_id(prefix, key, ms), (prefix, key, ms)
    with pytest.raises(TypeError):
        _ids.time_id("act:", b"key", 1)


def test_to_ms_is_the_python_one_for_every_kind_of_datetime() -> None:
    rnd = random.Random(7)
    lo, hi = int((datetime(1, 1, 1, tzinfo=UTC) - EPOCH).total_seconds()), 253402300799
    for _ in range(100_000):
        us = rnd.randrange(lo * 10**6, hi * 10**6)
        if rnd.random() < 0.5:  # whole milliseconds: where a double product could round down
            us -= us % 1000
        moment = EPOCH + timedelta(microseconds=us)
        assert _ids.to_ms(moment) == fields._to_ms(moment), moment
    others = [
        datetime(2026, 11, 24, 1, 2, 3, 123000, tzinfo=UTC),
        datetime(2026, 11, 24, 1, 2, 3, 123000, tzinfo=timezone(timedelta(hours=-5))),  # another zone
        datetime(2026, 11, 24, 1, 2, 3),  # naive: local time, as timestamp() takes it
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ]
    for moment in others:
        assert _ids.to_ms(moment) == fields._to_ms(moment), moment
