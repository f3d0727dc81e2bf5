"""One audit record: its fields, its canonical bytes, its place in the hash chain, and the secrets guard.

Canonical encoding (format ``v1``): the record without ``prev_hash`` and ``hash`` as compact JSON with
sorted keys (``orjson`` with ``OPT_SORT_KEYS``)::

    {"actor":{"id":"alice","kind":"user"},"details":{...},"kind":"action_intent","mono_us":1234,
     "seq":7,"subject":"vm/web-1","time_us":1767225600123456,"v":1}

and ``hash = SHA-256(0x00 ‖ prev_hash ‖ canonical)``. The leading 0x00 separates record hashes from every
other message this log hashes or signs (RFC 6962 hashes leaves the same way; checkpoints carry their own
text prefix), and ``seq`` inside the hashed bytes makes a moved record detectable even when its content is
intact. The first record's ``prev_hash`` is :func:`genesis_hash` of the log's random id, which binds the
chain to one log: a chain grown by another log instance never links into this one.

Times are integers (microseconds) so the canonical bytes do not depend on how a float prints: ``time_us``
is the wall clock as observed (it may step back; nothing relies on it), ``mono_us`` the monotonic clock
since the writing process opened the log (it resets when the log is reopened, and a wall-clock step shows
as a disagreement between the two). ``details`` is normalised through one JSON round trip when the record
is built, so what is hashed, stored and read back are the same value (tuples become lists, NaN null).

Secrets never enter the log (reference/reliability.md §1.1 (c), G5). :func:`check_no_secrets` refuses
details whose keys name a secret (``password``, ``token``, ``private_key``...) and strings that look like
one (a PEM private key, a JWT, a SAS signature) with ValueError naming the key path, never the value. A
value an investigator must match later goes through ``AuditLog.append(secrets=...)``, which stores only
``hmac-sha256:<hex>`` of it under the vault's HMAC key.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import orjson

FORMAT_VERSION: Final = 1
HASH_SIZE: Final = 32
#: prefix of every record hash input (RFC 6962 leaf prefix)
RECORD_PREFIX: Final = b"\x00"
GENESIS_PREFIX: Final = b"vigil-audit-genesis/v1\n"
#: how an HMAC of a secret appears in details
HMAC_PREFIX: Final = "hmac-sha256:"


class ActorKind(enum.StrEnum):
    USER = "user"
    RULE = "rule"
    SYSTEM = "system"


class AuditKind(enum.StrEnum):
    """What a record is about."""

    RULES_LOADED = "rules_loaded"  # details carry the rule set's content hash
    FINDING = "finding"
    INCIDENT_CHANGE = "incident_change"
    ACTION_INTENT = "action_intent"  # written before an action runs; the action runs only if it was written
    ACTION_RESULT = "action_result"
    APPROVAL = "approval"
    ROLLBACK = "rollback"
    CONFIG_CHANGE = "config_change"
    KEY_RELEASE = "key_release"
    LOGIN = "login"
    PLATFORM_CHANGE = "platform_change"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who caused a record: a user (principal), a rule (its id) or the system itself."""

    kind: ActorKind
    id: str

    @classmethod
    def user(cls, principal: str) -> Actor:
        return cls(ActorKind.USER, principal)

    @classmethod
    def rule(cls, rule_id: str) -> Actor:
        return cls(ActorKind.RULE, rule_id)

    @classmethod
    def system(cls, name: str = "vigil") -> Actor:
        return cls(ActorKind.SYSTEM, name)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What a caller asks to append (the log assigns seq, times and hashes). ``secrets`` maps a details
    key to a secret value whose HMAC, not the value, is stored under that key; it is hidden from repr."""

    actor: Actor
    kind: AuditKind
    subject: str
    details: Mapping[str, Any] = field(default_factory=dict)
    secrets: Mapping[str, str] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """One committed (or about to be committed) record of the chain."""

    seq: int
    time_us: int
    mono_us: int
    actor: Actor
    kind: AuditKind
    subject: str
    details: dict[str, Any]
    prev_hash: bytes
    hash: bytes

    @property
    def time(self) -> float:
        """Wall-clock time in seconds since the epoch, as observed when the record was written."""
        return self.time_us / 1e6

    def canonical(self) -> bytes:
        return canonical_bytes(
            self.seq, self.time_us, self.mono_us, self.actor, self.kind, self.subject, self.details
        )

    def computed_hash(self) -> bytes:
        """The hash the record's own content and ``prev_hash`` give (differs from ``hash`` when edited)."""
        return chain_hash(self.prev_hash, self.canonical())

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready data (hashes in hex), as ``vigil audit show --json`` prints it."""
        return {
            "seq": self.seq,
            "time_us": self.time_us,
            "mono_us": self.mono_us,
            "actor": {"kind": self.actor.kind.value, "id": self.actor.id},
            "kind": self.kind.value,
            "subject": self.subject,
            "details": self.details,
            "prev_hash": self.prev_hash.hex(),
            "hash": self.hash.hex(),
        }


def normalise_details(details: Mapping[str, Any]) -> dict[str, Any]:
    """``details`` as the plain JSON object it will be stored as (ValueError if it is not one)."""
    try:
        value = orjson.loads(orjson.dumps(details, option=orjson.OPT_SORT_KEYS))
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise ValueError(f"audit details must be a JSON object with string keys: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("audit details must be a JSON object")
    return value


def canonical_bytes(
    seq: int,
    time_us: int,
    mono_us: int,
    actor: Actor,
    kind: AuditKind,
    subject: str,
    details: Mapping[str, Any],
) -> bytes:
    return orjson.dumps(
        {
            "v": FORMAT_VERSION,
            "seq": seq,
            "time_us": time_us,
            "mono_us": mono_us,
            "actor": {"kind": actor.kind.value, "id": actor.id},
            "kind": kind.value,
            "subject": subject,
            "details": details,
        },
        option=orjson.OPT_SORT_KEYS,
    )


def chain_hash(prev_hash: bytes, canonical: bytes) -> bytes:
    return hashlib.sha256(RECORD_PREFIX + prev_hash + canonical).digest()


def genesis_hash(log_id: str) -> bytes:
    """The ``prev_hash`` of record 1 of the log whose random id is ``log_id``."""
    return hashlib.sha256(GENESIS_PREFIX + log_id.encode()).digest()


def build_record(
    seq: int,
    time_us: int,
    mono_us: int,
    actor: Actor,
    kind: AuditKind,
    subject: str,
    details: dict[str, Any],
    prev_hash: bytes,
) -> AuditRecord:
    """A record with its hash; ``details`` must already be normalised (:func:`normalise_details`)."""
    canonical = canonical_bytes(seq, time_us, mono_us, actor, kind, subject, details)
    digest = chain_hash(prev_hash, canonical)
    return AuditRecord(seq, time_us, mono_us, actor, kind, subject, details, prev_hash, digest)


# -- the secrets guard ------------------------------------------------------------------------------------

#: a key is refused when one of its words (split at _ - . space and camelCase) is one of these ...
_SECRET_WORDS: Final = frozenset(
    {
        "secret", "secrets", "token", "tokens", "password", "passwords", "passwd", "pwd", "passphrase",
        "credential", "credentials", "authorization", "bearer", "cookie", "sas", "apikey", "privatekey",
        "connectionstring", "plaintext",
    }
)  # fmt: skip
#: ... or two adjacent words are one of these
_SECRET_PAIRS: Final = frozenset(
    {
        ("private", "key"), ("key", "material"), ("api", "key"), ("access", "key"), ("secret", "key"),
        ("signing", "key"), ("master", "key"), ("session", "key"), ("client", "secret"),
        ("connection", "string"), ("account", "key"), ("shared", "key"),
    }
)  # fmt: skip
_WORDS: Final = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
#: string values that are secrets whatever their key is called
_SECRET_VALUES: Final = (
    ("a PEM private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("a JWT", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")),
    ("a SAS signature", re.compile(r"[?&]sig=[A-Za-z0-9%+/=]{16,}")),
    ("a bearer credential", re.compile(r"\b(?i:bearer)\s+[A-Za-z0-9._~+/-]{16,}")),
)
#: all of them at once: one search per string in the common case that nothing matches
_ANY_SECRET_VALUE: Final = re.compile("|".join(f"(?:{p.pattern})" for _, p in _SECRET_VALUES))


@functools.lru_cache(maxsize=4096)  # the same few key names come back with every record
def secret_key_name(name: str) -> bool:
    """Whether a details key names a secret (``webhook_secret``, ``sasToken``, ``private-key``...)."""
    words = [w.lower() for w in _WORDS.findall(name)]
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(words))


def check_no_secrets(details: Mapping[str, Any], subject: str = "") -> None:
    """ValueError when ``details`` (at any depth) or ``subject`` carries a secret; the message names
    where, never the value. Secrets an investigator must match go through the HMAC path instead."""
    for what, pattern in _SECRET_VALUES:
        if pattern.search(subject):
            raise ValueError(f"audit subject looks like {what}: secrets never enter the audit log")
    _check(details, "details")


def _check(value: Any, where: str) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            path = f"{where}.{key}"
            if isinstance(key, str) and secret_key_name(key):
                raise ValueError(
                    f"audit {path} names a secret: secrets never enter the audit log (pass it in "
                    "secrets= to store its HMAC)"
                )
            _check(item, path)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check(item, f"{where}[{index}]")
    elif isinstance(value, str) and _ANY_SECRET_VALUE.search(value):
        for what, pattern in _SECRET_VALUES:
            if pattern.search(value):
                raise ValueError(f"audit {where} looks like {what}: secrets never enter the audit log")
