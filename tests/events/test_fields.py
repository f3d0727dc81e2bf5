from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from vigil.errors import NormalizeError
from vigil.events.fields import (
    CLAIM_OID,
    actor_from_claims,
    content_id,
    hash_id,
    json_in_string,
    outcome_from_http,
    outcome_from_result,
    parse_time,
    stable_id,
    strip_port,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-24T09:41:07.5123344Z", datetime(2026, 11, 24, 9, 41, 7, 512334, tzinfo=UTC)),
        ("2026-11-24T09:41:07Z", datetime(2026, 11, 24, 9, 41, 7, tzinfo=UTC)),
        ("2026-11-24T10:41:07+01:00", datetime(2026, 11, 24, 9, 41, 7, tzinfo=UTC)),
        ("2026-11-24T09:41:07", datetime(2026, 11, 24, 9, 41, 7, tzinfo=UTC)),
        (1795513200, datetime.fromtimestamp(1795513200, UTC)),
        (1795513200123, datetime.fromtimestamp(1795513200.123, UTC)),
    ],
)
def test_parse_time(value: object, expected: datetime) -> None:
    got = parse_time(value)
    assert got == expected
    assert got.utcoffset() is not None and got.utcoffset().total_seconds() == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("soon", "not an ISO 8601"),
        (None, "missing"),
        ([1], "expected a timestamp"),
        (True, "expected"),
        (1e300, "range"),
    ],
)
def test_parse_time_errors(value: object, reason: str) -> None:
    with pytest.raises(NormalizeError, match=reason):
        parse_time(value, "time")


def test_outcomes() -> None:
    assert outcome_from_result("Succeeded") == "success"
    assert outcome_from_result("FAILURE") == "failure"
    assert outcome_from_result("Start") == "unknown"
    assert outcome_from_result(None) == "unknown"
    assert outcome_from_http(200) == "success"
    assert outcome_from_http("403") == "failure"
    assert outcome_from_http("OK") is None
    assert outcome_from_http(True) is None


def test_strip_port() -> None:
    assert strip_port("198.51.100.23:52144") == "198.51.100.23"
    assert strip_port("[2001:db8::1]:443") == "2001:db8::1"
    assert strip_port("2001:db8::1") == "2001:db8::1"
    assert strip_port("198.51.100.23") == "198.51.100.23"
    assert strip_port("") is None and strip_port(None) is None


def test_ids_are_stable_and_distinct() -> None:
    assert stable_id("p:", "a", None, 3) == stable_id("p:", "a", None, 3)
    assert stable_id("p:", "a", "b") != stable_id("p:", "ab")
    assert content_id("c:", {"a": 1, "b": [1, 2]}) == content_id("c:", {"b": [1, 2], "a": 1})
    assert content_id("c:", {"a": 1}) != content_id("c:", {"a": 2})


def test_time_ordered_ids_sort_by_time_and_keep_their_identity() -> None:
    """With the record's time, an id starts with that time (12 hex digits of milliseconds), so ids of a log
    in time order go in at the edge of the event log's unique index; same length, same identity."""
    t0 = datetime(2026, 11, 24, 9, 41, 7, 512334, tzinfo=UTC)
    ids = [hash_id("act:", f"key-{n}", t0 + timedelta(milliseconds=n)) for n in range(0, 5000, 7)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == len(hash_id("act:", "key")) == 4 + 32 for i in ids)
    assert hash_id("act:", "key-0", t0) == ids[0]  # the same record, the same id
    assert hash_id("act:", "other", t0) != ids[0]  # another record in the same millisecond
    assert ids[0].startswith(f"act:{int(t0.timestamp() * 1000):012x}")
    assert hash_id("x:", "k", datetime(1960, 1, 1, tzinfo=UTC)).startswith("x:" + "0" * 12)  # clamped


def test_json_in_string() -> None:
    assert json_in_string('["T1552"]', "Techniques") == ["T1552"]
    assert json_in_string("", "Techniques") is None
    assert json_in_string([1], "Techniques") == [1]
    with pytest.raises(NormalizeError, match="Entities: not valid JSON"):
        json_in_string("[{", "Entities")


def test_actor_from_claims_variants() -> None:
    user = actor_from_claims({CLAIM_OID: "o1", "upn": "a@example.com", "tid": "t"}, ip="203.0.113.1")
    assert (user.id, user.name, user.type, user.tenant, user.ip) == (
        "o1",
        "a@example.com",
        "user",
        "t",
        "203.0.113.1",
    )
    mi = actor_from_claims({"oid": "o2", "appid": "app", "xms_mirid": "/subscriptions/s/..."})
    assert mi.type == "managedidentity" and mi.app_id == "app"
    sp = actor_from_claims({"appid": "app", "ipaddr": "198.51.100.1"})
    assert sp.type == "serviceprincipal" and sp.ip == "198.51.100.1"
    typed = actor_from_claims(None, principal_id="p", principal_type="ServicePrincipal")
    assert (typed.id, typed.type) == ("p", "serviceprincipal")
    assert actor_from_claims("not a dict").id is None
