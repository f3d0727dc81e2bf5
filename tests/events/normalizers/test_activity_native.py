"""The compiled Activity fast path (``_activity.c``) against the typed Python path it replaces.

The contract: wherever the compiled path answers, it answers exactly what ``from_json_typed`` answers (the
same event, id and raw bytes included); otherwise it says None and the typed path decides. So every test
here compares the two on the same bytes, and checks that ordinary records are not simply declined (a
compiled path that always said None would pass the comparison and help nobody).
"""

from __future__ import annotations

import json
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import EVENT_FIXTURES
from vigil.events.model import Event
from vigil.events.normalizers import activity
from vigil.events.normalizers.activity import ActivityLogNormalizer

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "bench"))
from gen_activity import records

TYPED = ActivityLogNormalizer().from_json_typed
OID = "http://schemas.microsoft.com/identity/claims/objectidentifier"
UPN = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn"
NAME = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name"
TENANT = "http://schemas.microsoft.com/identity/claims/tenantid"
#: every claim the actor is built from, in the order of preference of each or-chain
CLAIMS = [
    OID,
    "oid",
    UPN,
    "upn",
    "unique_name",
    "name",
    NAME,
    "appid",
    "azp",
    TENANT,
    "tid",
    "ipaddr",
    "xms_mirid",
]


@pytest.fixture(scope="module")
def native() -> Callable[[bytes], Any]:
    if activity._native is None:
        pytest.skip("the compiled Activity path is not built or VIGIL_PURE_PYTHON is set")
    return activity._native


def _same(native: Callable[[bytes], Any], data: bytes) -> Any:
    """Compare both paths on ``data``; return the compiled path's answer."""
    typed = TYPED(data)
    fast = native(data)
    if fast is not None:
        assert type(fast) is Event, data
        assert type(typed) is Event, (data, typed)
        assert fast == typed, data
        assert fast.id == typed.id and fast.raw == typed.raw
        assert bytes(fast.raw.to_json_value()) == bytes(typed.raw.to_json_value())  # type: ignore[attr-defined]
    return fast


def _records(n: int, seed: int = 5) -> list[dict[str, Any]]:
    return list(records(n, seed))


def test_generated_records_are_all_taken_and_agree(native: Callable[[bytes], Any]) -> None:
    for rec in _records(400):
        assert _same(native, orjson.dumps(rec)) is not None


def test_fixture_records_agree(native: Callable[[bytes], Any]) -> None:
    taken = 0
    for path in sorted((EVENT_FIXTURES / "activity").iterdir()):
        text = path.read_bytes()
        docs = [text] if path.suffix == ".json" else text.splitlines()
        for doc in docs:
            try:
                value = orjson.loads(doc)
            except orjson.JSONDecodeError:
                assert native(doc) is None
                continue
            items = value.get("records", [value]) if isinstance(value, dict) else [value]
            for item in items if isinstance(items, list) else [items]:
                taken += _same(native, orjson.dumps(item)) is not None
    assert taken >= 3


def test_other_serialisers_agree(native: Callable[[bytes], Any]) -> None:
    """Escaped non-ASCII (json.dumps' default), escaped slashes, pretty-printing, leading blanks."""
    rec = _records(1)[0]
    rec["identity"]["claims"]["name"] = "Zoë 🚀 Ünal"
    for claim in ("upn", "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn", "unique_name"):
        rec["identity"]["claims"].pop(claim, None)
    rec["properties"]["message"] = 'tab\there "quoted" back\\slash é \u2028'
    variants = [
        json.dumps(rec).encode(),
        json.dumps(rec, ensure_ascii=False).encode(),
        json.dumps(rec, indent=2).encode(),
        b" \r\n\t" + orjson.dumps(rec),
        json.dumps(rec).replace("/", "\\/").encode(),  # every slash escaped, keys included: declined
    ]
    answers = [_same(native, v) for v in variants]
    assert all(a is not None for a in answers[:4])
    assert answers[0].actor.name == "Zoë 🚀 Ünal"
    assert answers[4] is None  # an escaped key might name a field: the typed path reads it


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b'{"records": [], "time": "2024-01-01T00:00:00Z"}', "an envelope"),
        (b'{"time": "a", "time": "b"}', "a duplicate field"),
        (b'{"x": "\\ud800"}', "a lone surrogate"),
        (b'{"x": "\xff"}', "invalid UTF-8 where msgspec would not look"),
        (b'{"x": "\xed\xa0\x80"}', "an encoded surrogate"),
        (b'{"x": "\xc0\xaf"}', "an overlong form"),
        (b'{"x": 01}', "a leading zero"),
        (b'{"x": [1,]}', "a trailing comma"),
        (b'{"x": "a\tb"}', "a raw control character"),
        (b'{"x": nul}', "a broken literal"),
        (b'{"x": 1} x', "trailing bytes"),
        (b'[{"x": 1}]', "not an object"),
        (b'{"x": ' + b"[" * 70 + b"]" * 70 + b"}", "deeper than the scanner goes"),
        (b'{"time": 5}', "a field of another type"),
        (b'{"identity": "me"}', "an object field of another type"),
        (b"{", "truncated"),
        (b"", "empty"),
    ],
)
def test_unusual_input_is_declined(native: Callable[[bytes], Any], data: bytes, why: str) -> None:
    assert native(data) is None, why


def test_raw_control_characters_are_declined(native: Callable[[bytes], Any]) -> None:
    good = _records(1)[0]
    for c in range(0x20):
        rec = dict(good, unrelated="a?b")
        data = orjson.dumps(rec).replace(b"a?b", b"a" + bytes([c]) + b"b")
        assert native(data) is None, c
    assert _same(native, orjson.dumps(dict(good, unrelated="a\x7fb"))) is not None  # DEL may stand raw


@pytest.mark.parametrize("present", [[a, b] for i, a in enumerate(CLAIMS) for b in CLAIMS[i + 1 :]][::3])
def test_each_pair_of_claims_picks_as_the_typed_path(
    native: Callable[[bytes], Any], present: list[str]
) -> None:
    rec = _records(1)[0]
    rec["identity"]["claims"] = {name: f"value-of-{name}" for name in present}
    rec["callerIpAddress"] = None
    rec["identity"]["authorization"]["evidence"] = {"principalId": "pid"}
    assert _same(native, orjson.dumps(rec)) is not None


def test_variants_of_the_fields_agree(native: Callable[[bytes], Any]) -> None:
    base = _records(1, seed=9)[0]
    claims = base["identity"]["claims"]
    cases: list[Callable[[dict[str, Any]], None]] = [
        lambda r: r.update(time="2024-03-01T10:00:00+02:00"),  # another zone: the Python helper converts
        lambda r: r.update(time="2024-03-01T10:00:00"),  # no zone: taken as UTC
        lambda r: r.update(time="yesterday"),  # both decline (the dict path dead-letters it)
        lambda r: r.update(callerIpAddress="[2001:db8::1]:443"),
        lambda r: r.update(callerIpAddress="198.51.100.7:5521"),
        lambda r: r.update(callerIpAddress=""),
        lambda r: r.update(callerIpAddress=":1"),
        lambda r: r.update(category="ADMINISTRATIVE"),
        lambda r: r.update(category="Kelvin \u212a"),
        lambda r: r.update(category="nope"),
        lambda r: (r.update(category="nope"), r["properties"].pop("eventCategory")),
        lambda r: r.update(level="CRITICAL"),
        lambda r: r.update(level="Warning"),
        lambda r: r.update(level=None),
        lambda r: r.update(resultType="In Progress"),
        lambda r: r.update(resultType=None, resultSignature=None, correlationId=None),
        lambda r: r.update(resourceId=""),
        lambda r: r.update(resourceId="/not/an/arm/id"),
        lambda r: r.update(operationName=""),
        lambda r: r.pop("identity"),
        lambda r: r.update(identity=None),
        lambda r: r["identity"].update(claims={}),
        lambda r: r["identity"].update(claims={"xms_mirid": "/subscriptions/x"}),
        lambda r: r["identity"].update(claims={"azp": "app-1"}),
        lambda r: r["identity"].update(claims={"tid": "t-1"}),
        lambda r: r["identity"].update(claims={OID: "", "oid": "", "ipaddr": ""}),
        lambda r: r["identity"]["authorization"]["evidence"].update(principalType="GROUP"),
        lambda r: r["identity"]["authorization"]["evidence"].update(principalType=""),
        lambda r: r["identity"].update(authorization={"evidence": None}),
        lambda r: claims.update(ipaddr="10.1.2.3") or r.update(callerIpAddress=None),
    ]
    answered = 0
    for change in cases:
        rec = json.loads(json.dumps(base))
        claims = rec["identity"]["claims"]
        change(rec)
        answered += _same(native, orjson.dumps(rec)) is not None
    assert answered >= len(cases) - 4


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_paths = st.sampled_from(
    [
        ("time",),
        ("resourceId",),
        ("operationName",),
        ("category",),
        ("resultType",),
        ("callerIpAddress",),
        ("level",),
        ("correlationId",),
        ("identity",),
        ("identity", "claims"),
        *(("identity", "claims", name) for name in CLAIMS),
        ("identity", "authorization", "evidence", "principalId"),
        ("identity", "authorization", "evidence", "principalType"),
        ("properties",),
        ("properties", "eventCategory"),
        ("properties", "anything"),
        ("unrelated",),
    ]
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    changes=st.lists(st.tuples(_paths, _json_values), max_size=3),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=2000)),
    flip=st.one_of(st.none(), st.tuples(st.integers(min_value=0, max_value=2000), st.integers(0, 255))),
    ascii_only=st.booleans(),
)
def test_mutated_records_agree(
    native: Callable[[bytes], Any],
    changes: list[tuple[tuple[str, ...], Any]],
    cut: int | None,
    flip: tuple[int, int] | None,
    ascii_only: bool,
) -> None:
    rec = _records(1, seed=2)[0]
    for path, value in changes:
        node: Any = rec
        for key in path[:-1]:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[path[-1]] = value
    data = bytearray(json.dumps(rec, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass"))
    if flip is not None and flip[0] < len(data):
        data[flip[0]] = flip[1]
    if cut is not None:
        del data[cut:]
    _same(native, bytes(data))


def test_repeated_values_are_shared_and_distinct_ones_never_confused(native: Callable[[bytes], Any]) -> None:
    """Short repeated values (operation, caller, claims) come from a bounded table of str objects: the same
    object each time, and a table slot taken over by another value never hands out the wrong one."""
    rec = _records(1)[0]
    first, second = native(orjson.dumps(rec)), native(orjson.dumps(rec))
    assert first.action is second.action and first.actor.app_id is second.actor.app_id
    claims = rec["identity"]["claims"]
    for i in range(6000):  # more distinct values than the table has slots, each seen twice
        claims["appid"] = f"app-{i % 3000:04d}"
        rec["operationName"] = f"Microsoft.Test/things/OP{i % 2500}/write"
        event = native(orjson.dumps(rec))
        assert event.actor.app_id == claims["appid"]
        assert event.action == rec["operationName"].lower()


def test_no_references_leak(native: Callable[[bytes], Any]) -> None:
    lines = [orjson.dumps(r) for r in _records(200)]
    odd = [b'{"time": 5}', b'{"x": "\\ud800"}', lines[0][:-3], b'{"records": [1]}']
    work = lines + odd * 10

    def run() -> None:
        for data in work:
            native(data)

    run()  # warm: caches filled, interned strings made
    tracemalloc.start()
    try:
        run()
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(20):
            run()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, f"{grown} bytes kept over 20 x {len(work)} calls"
