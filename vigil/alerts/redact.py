"""Secrets never leave Vigil in an alert or a log line: redaction by field name and by pattern.

Events carry secrets by accident: a SAS URL in a storage log, a bearer token in a captured header, a
connection string in a deployment's settings, a private key pasted into a ticket. Anything that reaches an
alert is stored in the outbox and sent to third parties (PagerDuty, Teams, Slack), so the router redacts the
alert content and the outbox redacts it once more before it is written (:meth:`Outbox.enqueue`): nothing
unredacted is written to disk or leaves the process, whichever path built the alert.

Two mechanisms, applied together by :func:`redact` to JSON-like data (dicts, lists, tuples, strings):

* **By field name** (:func:`is_secret_name`): the string value of ``password``, ``client_secret``,
  ``access_token``, ``authorization``, ``AccountKey``, ``connection_string``, ``sig``, ``sas`` ... is
  replaced whole, and everything below such a key is. Fields named like a key (``key``, ``primaryKey``,
  ``wrapped_key``; not ``key_id``, ``key_name``, ``key_version``, ``public_key``, ``dedup_key``) are
  replaced when the value *looks* like key material: a hex string of 32+ characters, or base64 of 16+
  bytes (a key name such as ``training-data-key`` survives).
* **By pattern** (:func:`redact_text`, on every string): PEM private key blocks (even cut off), JWTs,
  ``Bearer`` credentials and ``Authorization`` header values, ``name=value`` secrets in query strings and
  connection strings (``sig=``, ``AccountKey=``, ``SharedAccessKey=``, ``password=``, ``token=`` ...,
  also URL-encoded), quoted JSON ``"password": "..."``, credentials in URLs (``https://user:pw@host``),
  Slack webhook paths, GitHub/Slack/AWS token formats, and bare base64 of exactly 64 bytes (the shape of
  a storage or Cosmos DB account key; longer blobs such as signatures and reports are evidence).

What is deliberately kept, because it is evidence and not a secret: hex strings of any length outside
key-named fields (SHA-256/384 hashes, SNP measurements, report data, idempotency keys), SAS parameters other
than ``sig`` (``sv``, ``se``, ``sp``, ``sr``: what the token allowed and until when), ids and names, numbers
and booleans (``max_tokens: 512`` is not a token), signatures and public keys. The cost of that choice: a
hex-encoded key pasted into free text is indistinguishable from a hash and is kept; in a key-named field it
is redacted.

The replacement is the fixed string ``[REDACTED]``, with no prefix or fingerprint of the secret: a prefix
leaks entropy, and a hash of a low-entropy password can be brute-forced. Correlation uses the alert's dedup
key and the event ids, never the secret. ``name=`` and ``Bearer`` stay in place so a reader sees *what*
was removed.
"""

from __future__ import annotations

import base64
import binascii
import functools
import logging
import re
from collections.abc import Callable
from typing import Any, Final, TypeVar

from vigil.alerts.model import Alert
from vigil.runtime import PURE_PYTHON

try:
    from vigil.alerts import _screen
except ImportError:  # built without a C compiler: the screen runs in Python
    _screen = None  # type: ignore[assignment]
if PURE_PYTHON:
    _screen = None  # type: ignore[assignment]

T = TypeVar("T")

REDACTED: Final = "[REDACTED]"

#: a name whose normalised form (lower case, letters and digits only) contains one of these is secret
_SECRET_PARTS: Final = (
    "password", "passwd", "passphrase", "secret", "authorization", "cookie", "credential", "apikey",
    "privatekey", "accountkey", "accesskey", "sharedaccesskey", "sharedaccesssignature", "connectionstring",
    "connstr", "sastoken", "sasurl", "routingkey", "integrationkey", "signingkey", "masterkey", "keymaterial",
    "encryptionkey", "sessionkey", "webhookurl",
)  # fmt: skip
#: names made of words, any one of which makes it secret
_SECRET_WORDS: Final = frozenset({"pwd", "sas", "sig", "dek", "kek", "psk", "token", "jwt", "pat"})
#: words that make a key-named field evidence rather than key material
_EVIDENCE_WORDS: Final = frozenset(
    {
        "id", "ids", "name", "names", "version", "versions", "hash", "digest", "thumbprint", "fingerprint",
        "kid", "uri", "url", "type", "kind", "size", "ops", "alg", "algorithm", "count", "state", "status",
        "public", "pub", "dedup", "idem", "group", "vault", "policy", "rotation", "expiry", "expires",
        "created", "updated", "enabled", "length", "bits", "curve", "label", "path", "ref",
    }
)  # fmt: skip
_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z]|\b|[^A-Za-z])|[A-Z]?[a-z]+|[0-9]+")
_HEX_KEY = re.compile(r"[0-9a-fA-F]{32,}")
_B64_KEY = re.compile(r"[A-Za-z0-9+/_-]{22,}={0,2}")

#: names whose ``name=value`` (query string, connection string) is always a secret
_KV_NAMES: Final = (
    r"sig|signature|accountkey|sharedaccesskey|sharedaccesssignature|password|passwd|pwd|client_secret|"
    r"clientsecret|secret|access_token|refresh_token|id_token|token|api[_-]?key|x-api-key|private_key|"
    r"primarykey|secondarykey"
)
_PATTERNS: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    # PEM private keys, also when the END line was cut off by a length limit
    (
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?"
            r"(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)",
            re.S,
        ),
        REDACTED,
    ),
    # JWTs (MAA tokens, Entra access tokens): header.payload.signature, both JSON objects
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), REDACTED),
    # the value of an Authorization header, whatever the scheme
    (
        re.compile(r"(?i)(\bauthorization[\"']?\s*[:=]\s*[\"']?)(?!\[REDACTED\])[^\"'\r\n,;}]+"),
        rf"\1{REDACTED}",
    ),
    # a bearer credential is long; "missing bearer token" is prose
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/-]{16,}=*"), rf"\1{REDACTED}"),
    # an Azure Functions key in a URL (?code=...); "exit code=1" in prose is not one
    (re.compile(r"([?&]code=)[^\s\"'&#<>]+"), rf"\1{REDACTED}"),
    # credentials in a URL: scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/:@]+:)[^\s/@]+@"), rf"\1{REDACTED}@"),
    # query strings and connection strings: name=value, also URL-encoded (name%3Dvalue)
    (
        re.compile(
            rf"(?i)(?:(?<![A-Za-z0-9_])|(?<=%26)|(?<=%3F))((?:{_KV_NAMES})\s*(?:=|%3D))(?!\[REDACTED\])[^\s\"'&;,#<>]+"
        ),
        rf"\1{REDACTED}",
    ),
    # JSON or YAML written as text: "password": "...", client_secret: ...
    (
        re.compile(
            rf"(?i)([\"'](?:{_KV_NAMES}|connection_?string|authorization)[\"']\s*:\s*[\"'])(?!\[REDACTED\])[^\"']+"
        ),
        rf"\1{REDACTED}",
    ),
    (
        re.compile(
            r"(?i)(?<![A-Za-z0-9_])((?:password|passwd|client_secret|secret_key|access_key|api_key|apikey|"
            r"accountkey|sharedaccesskey|connection_string)\s*:\s+)(?![\"'\[])\S+"
        ),
        rf"\1{REDACTED}",
    ),
    # token formats with a recognisable prefix
    (
        re.compile(r"(https://hooks\.slack\.com/(?:services|workflows|triggers)/)[^\s\"'<>]+"),
        rf"\1{REDACTED}",
    ),
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"), REDACTED),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), REDACTED),
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), REDACTED),
)
#: base64 of exactly 64 bytes in free text: the shape of a storage or Cosmos DB account key. Longer blobs
#: (a P-384 signature, an attestation report, a certificate) are evidence; pure hex is never matched
_LONG_B64 = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/]{86,}={0,2}(?![A-Za-z0-9+/=_-])")


#: Literals without which each pattern above cannot match, in the same order: (case-sensitive ones, ones
#: looked for in the lower-cased text). A pattern runs only when one of its literals occurs in the text as
#: it stands (a replacement, ``[REDACTED]``, adds none), so nearly every string of an alert (ids, names,
#: times, ``field=value`` summaries) costs a few substring searches instead of every pattern. A pattern
#: added above needs its literals here; a test checks the result equals every pattern applied in turn.
_NAME_NEEDLES: Final = ("sig", "passw", "pwd", "secret", "token", "api", "accountkey", "sharedaccesskey")
_NEEDLES: Final[tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]] = (
    (("-----BEGIN ",), ()),
    ((".eyJ",), ()),
    ((), ("authorization",)),
    ((), ("bearer",)),
    (("code=",), ()),
    (("://",), ()),
    ((), (*_NAME_NEEDLES, "private_key", "primarykey", "secondarykey")),
    ((), (*_NAME_NEEDLES, "private_key", "primarykey", "secondarykey", "connection", "authorization")),
    ((), ("passw", "secret", "access_key", "api", "accountkey", "sharedaccesskey", "connection")),
    (("https://hooks.slack.com/",), ()),
    (("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"), ()),
    (("xoxa-", "xoxb-", "xoxp-", "xoxo-", "xoxs-", "xoxr-"), ()),
    (("AKIA", "ASIA"), ()),
)


def _after_word(low: str, seps: tuple[str, ...], endings: tuple[str, ...]) -> bool:
    """Whether a separator in ``low`` comes right after (whitespace aside) a word ending in one of
    ``endings``: what a ``name = value`` pattern needs besides its name somewhere in the text. ``sig``
    occurs in "assignment" and a finding's summary is full of ``field=value``; this tells them apart with
    a few ``find`` calls instead of a regular expression over the whole text. It looks at most 64
    characters back; where a run of whitespace leaves fewer than the longest ending's length of text in
    that view, it answers yes (it never says no where the pattern could match)."""
    longest = max(map(len, endings))
    for sep in seps:
        i = low.find(sep)
        while i >= 0:
            head = low[max(0, i - 64) : i].rstrip()
            if head.endswith(endings) or (i > 64 and len(head) < longest):
                return True
            i = low.find(sep, i + 1)
    return False


def _no_guard(text: str, low: str) -> bool:
    return True


#: A second screen per pattern, in the same order, run after its literals were found: another condition
#: without which it cannot match (a separator after a name, an ``@`` in a URL with credentials). The test
#: of the literals covers these too.
_GUARDS: Final[tuple[Callable[[str, str], bool], ...]] = (
    _no_guard,
    _no_guard,
    _no_guard,
    _no_guard,
    _no_guard,
    lambda text, low: "@" in text,
    lambda text, low: _after_word(
        low, ("=", "%3d"), ("sig", "signature", "key", "password", "passwd", "pwd", "secret", "token")
    ),
    lambda text, low: _after_word(low, (":",), ('"', "'")),
    lambda text, low: _after_word(low, (":",), ("password", "passwd", "secret", "key", "string")),
    _no_guard,
    _no_guard,
    _no_guard,
    _no_guard,
)

if not len(_PATTERNS) == len(_NEEDLES) == len(_GUARDS):  # a pattern added without its screens
    raise RuntimeError("vigil.alerts.redact: _PATTERNS, _NEEDLES and _GUARDS must have one entry each")


def _bits(lower: bool) -> tuple[tuple[str, int], ...]:
    """Each literal with the patterns that need it (bit ``i`` for pattern ``i``)."""
    out: dict[str, int] = {}
    for i, (cased, low) in enumerate(_NEEDLES):
        for n in low if lower else cased:
            out[n] = out.get(n, 0) | 1 << i
    return tuple(out.items())


#: every literal of every pattern, flat, with the patterns it lets run: one pass of substring tests
#: decides for most strings, and names the few patterns to try for the rest
_CASED_BITS: Final = _bits(lower=False)
_LOWER_BITS: Final = _bits(lower=True)
#: the shortest text :data:`_LONG_B64` can match
_LONG_B64_MIN: Final = 86
#: the screen's bit for :data:`_LONG_B64` (after one bit per pattern)
_LONG_BIT: Final = 1 << len(_PATTERNS)
#: strings up to this long are memoised (titles, rule ids and group values repeat in every alert)
_CACHED_LEN: Final = 512


if _screen is not None:
    _screen.configure(_CASED_BITS, _LOWER_BITS, _LONG_B64_MIN, _LONG_BIT)


def _words(name: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(name)]


@functools.lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """Whether any string under a field of this name is a secret (``clientSecret``, ``sas_token``)."""
    flat = re.sub(r"[^a-z0-9]", "", name.lower())
    if any(part in flat for part in _SECRET_PARTS) or flat.endswith("token"):
        return True
    return any(word in _SECRET_WORDS for word in _words(name))


@functools.lru_cache(maxsize=4096)
def is_key_name(name: str) -> bool:
    """Whether a field may hold raw key material (``key``, ``wrappedKey``; not ``key_id``, ``public_key``)."""
    words = _words(name)
    keyish = any(w in ("key", "keys") or w.endswith("key") for w in words)
    return keyish and not any(w in _EVIDENCE_WORDS for w in words)


def looks_like_key(value: str) -> bool:
    """Hex of 32+ characters, or base64 of 16+ bytes with letters of both cases or a ``+ / =`` (a
    lower-case name or dedup key such as ``vigil-rule-0f3a...`` is not key material; random base64 of 16
    bytes lacks both an upper and a lower case letter with a probability of about 1e-5)."""
    text = value.strip()
    if _HEX_KEY.fullmatch(text):
        return True
    mixed = any(c.isupper() for c in text) and any(c.islower() for c in text)
    marked = any(c in "+/=" for c in text)
    return bool((mixed or marked) and _B64_KEY.fullmatch(text) and len(_b64decode(text) or b"") >= 16)


def _b64decode(text: str) -> bytes | None:
    core = text.rstrip("=").replace("-", "+").replace("_", "/")
    if len(core) % 4 == 1:
        return None
    try:
        return base64.b64decode(core + "=" * (-len(core) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _long_blob(match: re.Match[str]) -> str:
    text = match.group(0)
    mixed = any(c.isupper() for c in text) and any(c.islower() for c in text)
    if mixed and len(_b64decode(text) or b"") == 64:
        return REDACTED
    return text


def redact_text(text: str) -> str:
    """``text`` with every secret pattern replaced by ``[REDACTED]`` (see the module docstring)."""
    todo = _todo(text)
    if not todo:
        return text  # (nearly every string: ids, names, times)
    if len(text) <= _CACHED_LEN:
        return _redact_short(text, todo)
    return _redact(text, todo)


def _todo_py(text: str) -> int:
    """The patterns whose literals occur in ``text``, and :data:`_LONG_BIT` when it is long enough for
    :data:`_LONG_B64` (the compiled screen looks for a run of base64 characters instead)."""
    low = text.lower()
    todo = _LONG_BIT if len(text) >= _LONG_B64_MIN else 0
    for n, bits in _CASED_BITS:
        if n in text:
            todo |= bits
    for n, bits in _LOWER_BITS:
        if n in low:
            todo |= bits
    return todo


def _todo(text: str) -> int:
    if _screen is not None:
        found: int | None = _screen.screen(text)
        if found is not None:  # (None: not ASCII, where str.lower() may make ASCII letters)
            return found
    return _todo_py(text)


@functools.lru_cache(maxsize=16384)
def _redact_short(text: str, todo: int) -> str:
    return _redact(text, todo)


def _redact(text: str, todo: int) -> str:
    if todo & ~_LONG_BIT:
        # The literals were looked for once, before any replacement; a replacement adds none (it keeps
        # what its pattern matched before the secret and writes ``[REDACTED]``), so ``todo`` can only name
        # a pattern too many, never one too few. The guards look at the text as it now stands.
        low = text.lower()
        for i, (pattern, replacement) in enumerate(_PATTERNS):
            if todo >> i & 1 and _GUARDS[i](text, low):
                changed = pattern.sub(replacement, text)
                if changed != text:
                    text, low = changed, changed.lower()
    # (a replacement only shortens a run of base64 characters: no run before, none after)
    return _LONG_B64.sub(_long_blob, text) if todo & _LONG_BIT else text


def redact_all(text: str) -> str:
    """:func:`redact_text` without the literal screens and the memo: every pattern, in turn."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return _LONG_B64.sub(_long_blob, text)


def _scrub(value: Any) -> Any:
    """Everything below a secret-named field: strings and bytes go, structure, numbers and None stay."""
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub(v) for v in value)
    if isinstance(value, str | bytes) and value:
        return REDACTED
    return value


def _key_material(value: Any) -> bool:
    if isinstance(value, str):
        return looks_like_key(value)
    return isinstance(value, bytes) and len(value) >= 16


def _walk(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            name = str(key)
            if is_secret_name(name):
                out[key] = _scrub(item)
            elif is_key_name(name) and _key_material(item):
                out[key] = REDACTED
            else:
                out[key] = _walk(item)
        return out
    if isinstance(value, list | tuple):
        return type(value)(_walk(v) for v in value)
    return value


def redact(value: T) -> T:
    """A copy of JSON-like ``value`` (a dict, list, tuple or string) with every secret replaced."""
    result: T = _walk(value)
    return result


def redact_alert(alert: Alert) -> Alert:
    """``alert`` with every free-form part redacted (title, summary, group, details, actions, links); the
    identity (kind, dedup key, rule, severity, time, ids, count) is kept as it is."""
    data = alert.to_json()
    for name in ("title", "summary", "group", "details", "actions", "links"):
        data[name] = redact(data[name])
    return Alert.from_json(data)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's formatted message (install it on the handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
