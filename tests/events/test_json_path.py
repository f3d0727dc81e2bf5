"""Reading one path of an undecoded raw record (``FrozenMap.path`` over ``_activity.json_path``).

The contract: for any JSON object bytes and any path of member names, the answer is what decoding the whole
object and walking the path gives (None where a member is missing or a value on the way is not an object);
where the compiled finder is unsure (a duplicate or escaped key on the path) it says so and the whole object
is decoded. So the tests compare the two on the same bytes, and check the finder does answer ordinary
records (a finder that always declined would pass the comparison and help nobody).
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vigil.events import model
from vigil.events.model import FrozenMap

pytestmark = pytest.mark.skipif(model._json_path is None, reason="the compiled module is not built")
json_path = model._json_path


def _walk(doc: bytes, keys: tuple[str, ...]) -> Any:
    value: Any = orjson.loads(doc)
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            return None
    return value


def _path(doc: bytes, keys: tuple[str, ...]) -> Any:
    """FrozenMap.path on undecoded bytes (what the rules' getters call)."""
    return FrozenMap.from_json(doc).path(keys)


RECORD = orjson.dumps(
    {
        "time": "2026-11-24T00:00:00Z",
        "properties": {"requestbody": '{"x": 1}', "statusCode": "OK", "nested": {"deep": [1, {"a": None}]}},
        "identity": {"claims": {"oid": "u1"}, "authorization": None},
        "level": 4,
        "tags": ["a", "b"],
        "empty": {},
    }
)


@pytest.mark.parametrize(
    "keys",
    [
        ("properties", "requestbody"),
        ("properties", "nested", "deep"),
        ("properties", "nested"),
        ("identity", "claims", "oid"),
        ("identity", "authorization"),
        ("identity", "authorization", "x"),  # through null
        ("tags", "a"),  # through an array
        ("level",),
        ("level", "x"),  # through a number
        ("missing",),
        ("properties", "missing"),
        ("empty", "x"),
        ("time",),
    ],
)
def test_ordinary_paths_are_answered_by_the_finder_and_match_a_full_decode(keys: tuple[str, ...]) -> None:
    found = json_path(RECORD, keys)
    assert found is not NotImplemented
    assert (None if found is None else orjson.loads(found)) == _walk(RECORD, keys)
    assert _path(RECORD, keys) == _walk(RECORD, keys)


@pytest.mark.parametrize(
    ("doc", "keys"),
    [
        (b'{"a": 1, "a": 2}', ("a",)),  # a duplicate on the path: which wins is the decoder's business
        (b'{"a": {"b": 1, "b": 2}}', ("a", "b")),
        (b'{"a": {"b": 1}, "a": {"b": 2}}', ("a", "b")),
        (b'{"\\u0061": 1}', ("a",)),  # an escaped key might spell the name
        (b'{"a": 1', ("a",)),  # not JSON
        (b"[1, 2]", ("a",)),  # not an object: the decoder's {} stands
        (b"", ("a",)),
    ],
)
def test_what_the_finder_declines_is_decoded_whole(doc: bytes, keys: tuple[str, ...]) -> None:
    assert json_path(doc, keys) is NotImplemented or doc == b"[1, 2]"
    if doc in (b'{"a": 1', b""):
        with pytest.raises(orjson.JSONDecodeError):
            _path(doc, keys)  # (as any full decode of broken bytes would)
    else:
        assert _path(doc, keys) == (_walk(doc, keys) if doc.startswith(b"{") else None)


def test_duplicates_and_escapes_off_the_path_do_not_matter() -> None:
    doc = b'{"x": 1, "x": 2, "y": {"\\u0061": 3}, "a": {"b": "v", "c": 1, "c": 2}}'
    assert json_path(doc, ("a", "b")) == b'"v"'


def test_a_decoded_map_and_a_plain_one_walk_the_same_way() -> None:
    frozen = FrozenMap.from_json(RECORD)
    frozen.get("level")  # decodes it
    assert frozen.path(("properties", "nested", "deep")) == [1, {"a": None}]
    assert FrozenMap({"a": {"b": [1]}}).path(("a", "b")) == [1] and FrozenMap({}).path(("a",)) is None


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
_names = st.sampled_from(["a", "b", "c", "é", 'k"q', "", "a\\b", "\u2028"])
_json = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_names, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=st.dictionaries(_names, _json, max_size=5),
    keys=st.lists(_names, min_size=1, max_size=4).map(tuple),
    ascii_only=st.booleans(),
    indent=st.sampled_from([None, 1]),
)
def test_any_object_and_path_give_what_a_full_decode_gives(
    doc: dict[str, Any], keys: tuple[str, ...], ascii_only: bool, indent: int | None
) -> None:
    data = json.dumps(doc, ensure_ascii=ascii_only, indent=indent).encode()
    assert _path(data, keys) == _walk(data, keys)
    found = json_path(data, keys)
    if found is not NotImplemented:
        assert (None if found is None else orjson.loads(found)) == _walk(data, keys)
