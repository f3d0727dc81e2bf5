"""Small, fast helpers shared by the normalizers: time, ids, outcomes, IPs, claims, JSON-in-strings.

They exist once here so that every source format applies the same rule to the same trap (upper-case ids,
``durationMs`` as a string, ``IP:port`` callers, claims under long URI names).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from hashlib import blake2b as _blake2b
from typing import Any, Final

import msgspec
import orjson

from vigil.errors import NormalizeError
from vigil.events.model import NO_ACTOR, Actor, Outcome
from vigil.runtime import PURE_PYTHON

try:
    from vigil.events import _ids
except ImportError:  # built without a C compiler: the Python versions below run instead
    _ids = None  # type: ignore[assignment]
if PURE_PYTHON:
    _ids = None  # type: ignore[assignment]
#: whether ids and event times are computed by the compiled module
NATIVE_IDS: Final = _ids is not None

_fromisoformat = datetime.fromisoformat
_NO_CLAIMS: Final[dict[str, Any]] = {}

_EPOCH_MS_THRESHOLD: Final = 100_000_000_000  # numbers above this are epoch milliseconds

CLAIM_OID: Final = "http://schemas.microsoft.com/identity/claims/objectidentifier"
CLAIM_TENANT: Final = "http://schemas.microsoft.com/identity/claims/tenantid"
CLAIM_UPN: Final = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn"
CLAIM_NAME: Final = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name"


def parse_time(value: Any, field: str = "time") -> datetime:
    """Parse an ISO 8601 string (any fraction length, ``Z`` or offset) or epoch number into aware UTC.

    A timestamp without a zone is taken as UTC, which is what every Azure source means by it.
    """
    if type(value) is str:
        try:
            dt = _fromisoformat(value)
        except ValueError:
            raise NormalizeError(f"{field}: not an ISO 8601 timestamp: {value[:64]!r}") from None
        if dt.tzinfo is UTC:
            return dt
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if value > _EPOCH_MS_THRESHOLD else value
        try:
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise NormalizeError(f"{field}: epoch value out of range: {value!r}") from None
    elif value is None:
        raise NormalizeError(f"{field}: missing")
    else:
        raise NormalizeError(f"{field}: expected a timestamp string, got {type(value).__name__}")
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def stable_id(prefix: str, *parts: object) -> str:
    """A short, stable id from the fields that identify a record (for sources without their own id).

    The same record re-delivered gives the same id, which is what idempotency keys need; hashing a handful
    of identifying fields is an order of magnitude cheaper than hashing the whole record.
    """
    return hash_id(
        prefix, "\x1f".join([p if type(p) is str else ("" if p is None else str(p)) for p in parts])
    )


def hash_id(prefix: str, key: str, when: datetime | None = None) -> str:
    """``prefix`` + the 128-bit BLAKE2b of ``key`` in hex: the id of a record identified by ``key``.

    With ``when`` (the record's own time, which ``key`` must already contain, so identity is unchanged) the
    id is time-ordered instead: ``prefix`` + the time in milliseconds as 12 hex digits + an 80-bit BLAKE2b
    of ``key`` in hex (same length). Why: the event log keeps a unique index on ids for re-delivery, and
    with random ids every batch of new events dirtied that many pages all over a growing index (64 KiB
    each), so durable ingestion slowed in proportion to the log's size (``bench/eventlog.py``: 31 -> 102
    us/event over the first 400,000 events, against 24 -> 24 with time-ordered ids). Logs arrive roughly
    in time order, so time-ordered ids go in at the index's edge and the cost stays flat. Two records of
    the same millisecond collide only on an 80-bit hash."""
    if when is None:
        return prefix + _blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
    return time_id(prefix, key, to_ms(when))


def _time_id(prefix: str, key: str, ms: int) -> str:
    if not 0 <= ms <= _MAX_MS:  # (a comparison chain: min(max()) cost more than the rest of the prefix)
        ms = 0 if ms < 0 else _MAX_MS
    return f"{prefix}{ms:012x}{_blake2b(key.encode('utf-8', 'surrogatepass'), digest_size=10).hexdigest()}"


def _to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


#: ``time_id(prefix, key, ms)``: the time-ordered id of :func:`hash_id` from a time already in milliseconds
#: (findings and incidents keep theirs so): ``prefix`` + 12 hex digits of ``ms`` (clamped to 0 ... 2**48 - 1)
#: + an 80-bit BLAKE2b of ``key``. Compiled (``_ids.c``: one call instead of about 1.4 us of Python per
#: event) unless not built or ``VIGIL_PURE_PYTHON`` is set; both give the same ids.
time_id: Final[Callable[[str, str, int], str]] = _time_id if _ids is None else _ids.time_id
#: ``to_ms(moment)``: milliseconds since the epoch of an aware datetime, ``int(moment.timestamp() * 1000)``
#: (the same numbers, compiled as ``time_id``)
to_ms: Final[Callable[[datetime], int]] = _to_ms if _ids is None else _ids.to_ms

#: the largest millisecond time a time-ordered id holds (12 hex digits; the year 10889)
_MAX_MS: Final = (1 << 48) - 1


def content_id(prefix: str, record: Any) -> str:
    """A stable id from the whole record's content (key order and whitespace do not matter)."""
    try:
        data = msgspec.json.encode(record, order="sorted")
    except (TypeError, msgspec.EncodeError) as exc:
        raise NormalizeError(f"record cannot be hashed for an id: {exc}") from None
    return prefix + _blake2b(data, digest_size=16).hexdigest()


_RESULT_OUTCOMES: Final[dict[str, Outcome]] = {
    "success": "success",
    "succeeded": "success",
    "failure": "failure",
    "failed": "failure",
    "start": "unknown",
    "started": "unknown",
    "accept": "unknown",
    "accepted": "unknown",
    "active": "unknown",
    "inprogress": "unknown",
    "in progress": "unknown",
    "resolved": "success",
}


# The spellings as sources write them, so the common case is one look-up without lower-casing.
RESULT_OUTCOMES_EXACT: Final[dict[str, Outcome]] = {
    **_RESULT_OUTCOMES,
    **{k.title(): v for k, v in _RESULT_OUTCOMES.items()},
    **{k.upper(): v for k, v in _RESULT_OUTCOMES.items()},
}


def outcome_from_result(value: Any) -> Outcome:
    """Map ``resultType``/``status`` spellings (Success/Succeeded, Failure/Failed, Start...) to an outcome."""
    if type(value) is not str:
        return "unknown"
    hit = RESULT_OUTCOMES_EXACT.get(value)
    if hit is not None:
        return hit
    return _RESULT_OUTCOMES.get(value.lower(), "unknown")


def outcome_from_http(status: Any) -> Outcome | None:
    """Map an HTTP status (int or numeric string) to an outcome; ``None`` if it is not a status."""
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
        return "success" if status < 400 else "failure"
    return None


def strip_port(address: Any) -> str | None:
    """``198.51.100.23:52144`` -> ``198.51.100.23``; ``[2001:db8::1]:443`` -> ``2001:db8::1``; IPv6 kept."""
    if not isinstance(address, str) or not address:
        return None
    if address.startswith("["):
        end = address.find("]")
        return address[1:end] if end > 0 else address
    if address.count(":") == 1:
        return address.split(":", 1)[0]
    return address


def json_type(value: Any) -> str:
    """The JSON type of a decoded value, for error messages ("object", "array", "number"...)."""
    if type(value) is dict:
        return "object"
    if type(value) is list:
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


def not_a_string(field: str, value: Any) -> str:
    """The dead-letter reason for a required string field that is missing, empty or of another type."""
    if value is None:
        return f"{field}: missing"
    if value == "":
        return f"{field}: empty"
    return f"{field}: expected a string, got {json_type(value)}"


def require_str(record: Mapping[str, Any], field: str) -> str:
    """``record[field]`` when it is a non-empty string; otherwise a :class:`NormalizeError` saying why not."""
    value = record.get(field)
    if type(value) is not str or not value:
        raise NormalizeError(not_a_string(field, value))
    return value


def lower(value: Any) -> str | None:
    """Lower-case a string; anything else (including empty) becomes ``None``."""
    if isinstance(value, str) and value:
        return value.lower()
    return None


def text(value: Any) -> str | None:
    """A non-empty string as is; numbers as their text; anything else ``None``."""
    if isinstance(value, str):
        return value or None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def json_in_string(value: Any, field: str) -> Any:
    """Decode a column holding JSON text (``Entities``, ``ExtendedProperties``); values pass through."""
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise NormalizeError(f"{field}: not valid JSON text: {exc}") from None
    return value


def actor_from_claims(
    claims: Any,
    *,
    ip: str | None = None,
    principal_id: str | None = None,
    principal_type: str | None = None,
) -> Actor:
    """Build an Actor from Entra token claims (``identity.claims`` / ``identity.claim``) and extras.

    The object id comes from ``oid`` or its long URI form; the name from ``upn``, ``unique_name`` or
    ``name``; a managed identity is recognised by ``xms_mirid``. Claim values are strings even when numeric.
    """
    if type(claims) is not dict:
        claims = _NO_CLAIMS
    get = claims.get
    return actor_from_parts(
        oid=get(CLAIM_OID) or get("oid") or principal_id,
        name=get(CLAIM_UPN) or get("upn") or get("unique_name") or get("name") or get(CLAIM_NAME),
        app_id=get("appid") or get("azp"),
        tenant=get(CLAIM_TENANT) or get("tid"),
        ip=ip or get("ipaddr"),
        managed_identity=bool(get("xms_mirid")),
        principal_type=principal_type,
    )


def actor_from_parts(
    *,
    oid: Any,
    name: Any,
    app_id: Any,
    tenant: Any,
    ip: Any,
    managed_identity: bool = False,
    principal_type: str | None = None,
) -> Actor:
    """Build an Actor from already-extracted identity parts; the actor type is inferred when not given.

    ``principal_type`` (``User``, ``ServicePrincipal``...) wins; otherwise a managed identity, then a named
    user, then an application. Non-string values (numbers) become their text.
    """
    if principal_type:
        atype: str | None = principal_type.lower()
    elif managed_identity:
        atype = "managedidentity"
    elif name:
        atype = "user"
    elif app_id:
        atype = "serviceprincipal"
    else:
        atype = None
    if not (oid or name or app_id or tenant or ip or atype):
        return NO_ACTOR
    return Actor(
        id=oid if type(oid) is str else text(oid),
        name=name if type(name) is str else text(name),
        type=atype,
        ip=ip if type(ip) is str else text(ip),
        app_id=app_id if type(app_id) is str else text(app_id),
        tenant=tenant if type(tenant) is str else text(tenant),
    )
