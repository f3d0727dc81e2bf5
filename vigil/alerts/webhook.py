"""The generic signed webhook, and the one HTTP attempt that every HTTP sink shares.

**One attempt, classified the same way everywhere.** :class:`HttpSink` POSTs one orjson body with the
caller's ``httpx.AsyncClient`` (whose timeouts are the caller's) and turns the answer into a
:class:`~vigil.alerts.model.Delivery`: any 2xx is ``sent``; 408, 425, 429 and every 5xx are ``retry`` (with
the server's ``Retry-After``, as delta-seconds or an HTTP-date, or a JSON body's ``retry_after``); every other
status is ``dead``, because the same payload cannot succeed later. A network failure is ``retry`` too, also
when the connection dropped after the server may have processed the request: PagerDuty's ``dedup_key`` and
the ``id`` below make the repeat harmless. A URL that cannot be used (no http/https) is ``dead``.

**Secrets stay inside.** A webhook URL carries its credential (Slack's last path segment, the Teams
Workflows ``sig`` query, a token in a generic URL). Reasons never name the URL, and exception texts are
scrubbed of every part of it before they become a reason; ``repr`` shows only the sink's name.

Generic webhook format
----------------------
``POST`` the JSON of :meth:`Alert.to_json` plus ``"version": 1`` and ``"id"``, a content hash that is the
same on every retry of one notification (receivers dedupe on it). Two headers sign it::

    X-Vigil-Timestamp: 1767225600
    X-Vigil-Signature: v1=<hex HMAC-SHA256(secret, f"{timestamp}.{body}")>

The signed message is the timestamp's digits, a full stop and the raw body bytes exactly as received (never
re-serialised JSON). A receiver verifies it like this (the same check as :func:`verify_signature`)::

    import hashlib, hmac, time

    def verify(secret: bytes, timestamp: str, body: bytes, header: str, tolerance: int = 300) -> bool:
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
            return False  # stale or replayed: reject
        expected = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        return any(
            hmac.compare_digest(part.strip().removeprefix("v1="), expected)
            for part in header.split(",") if part.strip().startswith("v1=")
        )

Several ``v1=`` values separated by commas may appear while a secret is being rotated; one match suffices.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import math
import time
from collections.abc import Callable, Iterable
from datetime import UTC
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

import httpx
import orjson

from vigil.alerts.model import Alert, Delivery, Sink
from vigil.errors import ConfigError

#: statuses worth repeating (besides every 5xx): timeout, too early, too many requests
RETRY_STATUSES = frozenset({408, 425, 429})
REASON_LIMIT = 300
SIGNATURE_VERSION = "v1"


def truncate(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in an ellipsis when cut."""
    return text if len(text) <= limit else text[: max(0, limit - 1)] + "…"


def notification_id(alert: Alert) -> str:
    """A hash of the alert's content: equal for retries of one notification, different for updates."""
    body = orjson.dumps(alert.to_json(), option=orjson.OPT_SORT_KEYS)
    return hashlib.blake2b(body, digest_size=8).hexdigest()


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP-date); None if unusable."""
    text = (value or "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" parses naive; HTTP-dates are GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def retry_after_of(response: httpx.Response) -> float | None:
    """The server's wait hint: ``Retry-After``, else a JSON body's ``retry_after`` or ``retryAfter``."""
    header = parse_retry_after(response.headers.get("retry-after"))
    if header is not None:
        return header
    try:
        data = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    for holder in (data, data.get("error") if isinstance(data, dict) else None):
        if isinstance(holder, dict):
            for key in ("retry_after", "retryAfter"):
                if isinstance(holder.get(key), int | float | str):
                    return parse_retry_after(str(holder[key]))
    return None


def secret_parts(*values: str) -> tuple[str, ...]:
    """Every substring of these URLs or keys that could reveal a credential, longest first."""
    parts: set[str] = set()
    for value in values:
        if not value:
            continue
        parts.add(value)
        split = urlsplit(value)
        if split.query:
            parts.add(split.query)
            raw = (pair.partition("=")[2] for pair in split.query.split("&"))  # as sent, %-encoded
            parts.update(v for v in (*raw, *(v for _, v in parse_qsl(split.query))) if len(v) >= 6)
        parts.update(seg for seg in split.path.split("/") if len(seg) >= 8)
    return tuple(sorted(parts, key=len, reverse=True))


def scrub(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret part replaced by ``***``, on one line, cut to :data:`REASON_LIMIT`."""
    for part in secrets:
        text = text.replace(part, "***")
    return truncate(" ".join(text.split()), REASON_LIMIT)


class HttpSink(Sink):
    """A sink that POSTs one JSON body per alert to one URL from its config (``url`` or ``webhook_url``)."""

    #: what appears in ``User-Agent``
    user_agent: ClassVar[str] = "vigil-alerts/1"

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        self.url = self._require_url(config.get("url") or config.get("webhook_url") or "")
        self._secrets: tuple[str, ...] = secret_parts(self.url)

    def _require_url(self, url: Any) -> str:
        if not isinstance(url, str) or not url:
            raise ConfigError(f"alert sink {self.name!r} ({self.kind}): no url configured")
        try:
            scheme = httpx.URL(url).scheme
        except httpx.InvalidURL:
            scheme = ""
        if scheme not in ("http", "https"):  # the message must not quote the URL: it is a secret
            raise ConfigError(f"alert sink {self.name!r} ({self.kind}): url must be an http(s) URL")
        return url

    @property
    def target(self) -> str:
        """Where this sink posts, without the secret parts: ``https://hooks.slack.com/…``."""
        split = urlsplit(self.url)
        return f"{split.scheme}://{split.netloc.rpartition('@')[2]}/…"

    def _add_secret(self, *values: str) -> None:
        self._secrets = secret_parts(*self._secrets, *values)

    def endpoint(self, alert: Alert) -> str:
        """The URL this alert goes to (PagerDuty sends notices elsewhere)."""
        return self.url

    def headers(self, body: bytes) -> dict[str, str]:
        return {"Content-Type": "application/json", "User-Agent": self.user_agent}

    def detail(self, response: httpx.Response) -> str:
        """What a failed answer says, for the reason (the body's text by default)."""
        return response.text

    async def send(self, client: httpx.AsyncClient, alert: Alert) -> Delivery:
        try:
            body = orjson.dumps(self.render(alert))
        except (TypeError, ValueError) as exc:  # not JSON-ready: sending it again cannot help
            return Delivery("dead", scrub(f"cannot encode the alert: {exc}", self._secrets))
        return await self.post(client, self.endpoint(alert), body, self.headers(body))

    async def post(
        self, client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]
    ) -> Delivery:
        """One POST, classified (never raises for HTTP or network failures)."""
        try:
            response = await client.post(url, content=body, headers=headers)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            return Delivery("dead", scrub(f"unusable URL ({type(exc).__name__})", self._secrets))
        except httpx.HTTPError as exc:  # connect/read/write errors, timeouts, resets: maybe not processed
            text = str(exc) or "connection lost, maybe after the request was processed"
            return Delivery("retry", scrub(f"{type(exc).__name__}: {text}", self._secrets))
        return classify(response, self.detail, self._secrets)


def classify(
    response: httpx.Response, detail: Callable[[httpx.Response], str], secrets: Iterable[str]
) -> Delivery:
    """2xx sent; 408/425/429/5xx retry (with the server's wait hint); any other status dead."""
    status = response.status_code
    if 200 <= status < 300:
        return Delivery("sent", status=status)
    try:
        said = detail(response)
    except (UnicodeDecodeError, ValueError):
        said = ""
    reason = scrub(f"HTTP {status}" + (f": {said}" if said.strip() else ""), secrets)
    if status in RETRY_STATUSES or status >= 500:
        return Delivery("retry", reason, retry_after_of(response), status)
    return Delivery("dead", reason, status=status)


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Vigil-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify_signature(
    secret: str | bytes,
    timestamp: str | int,
    body: bytes,
    header: str,
    *,
    tolerance: float = 300,
    now: float | None = None,
) -> bool:
    """True when ``header`` holds a valid ``v1=`` signature of ``body`` and ``timestamp`` is fresh."""
    key = secret.encode() if isinstance(secret, str) else secret
    stamp = str(timestamp)
    if (
        not (stamp.isascii() and stamp.isdigit())
        or abs((time.time() if now is None else now) - int(stamp)) > tolerance
    ):
        return False
    expected = sign(key, stamp, body)
    offered = [part.strip() for part in header.split(",") if part.strip().startswith("v1=")]
    return any(hmac.compare_digest(part, expected) for part in offered)


class WebhookSink(HttpSink):
    """Generic signed JSON webhook. Config: ``url``, ``secret``, optional ``header`` (signature's name)."""

    kind = "webhook"

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        #: the clock of the timestamp header (tests pin it)
        self.clock: Callable[[], float] = time.time
        secret = config.get("secret")
        if not isinstance(secret, str) or not secret:
            raise ConfigError(f"alert sink {name!r} (webhook): a signing secret is required")
        self._key = secret.encode()
        self._add_secret(secret)
        self.signature_header = str(config.get("header") or "X-Vigil-Signature")

    def render(self, alert: Alert) -> dict[str, Any]:
        return {**alert.to_json(), "version": 1, "id": notification_id(alert)}

    def headers(self, body: bytes) -> dict[str, str]:
        timestamp = str(int(self.clock()))
        return {
            **super().headers(body),
            "X-Vigil-Timestamp": timestamp,
            self.signature_header: sign(self._key, timestamp, body),
        }
