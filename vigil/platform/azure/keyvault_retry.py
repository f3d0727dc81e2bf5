"""Retries that are safe for Key Vault calls, and Azure errors as :mod:`vigil.platform.errors`.

Why the SDK's own retries are off (``retry_total=0`` on every client built here) and this loop runs
instead: azure-core's ``RetryPolicy`` re-sends any request, ``POST`` included, when the answer is
500/502/503/504 or carries ``Retry-After`` (``../shared/reference/azure.md`` §5.0). ``POST
/keys/{name}/rotate`` is not idempotent: when the vault made the new version and the answer got lost (a 503
from a gateway, a reset connection), a blind resend makes a second version. So each call here says whether
it is idempotent:

* **idempotent** (every GET, a PATCH of attributes, a PUT of a rotation policy, and the POSTs that change
  nothing: wrap, unwrap, release): retried on 408/429/5xx and on transport errors, up to ``attempts``.
* **not idempotent** (rotate, create): retried *only* on 429 (a throttled request was refused before it
  ran) and on a request that never left (``ServiceRequestError``). Any other failure is ambiguous, so the
  caller's ``reconcile`` reads the state (the key's versions) and returns the result when the change
  happened; only when it did not is the call sent again.

``Retry-After`` (seconds or an HTTP date; also ``retry-after-ms`` / ``x-ms-retry-after-ms``) is honoured
as the wait before the next attempt; a wait longer than ``max_retry_after`` is not slept through: the call
fails with :class:`~vigil.platform.errors.UnavailableError` and the executor retries the step later.
Without the header the wait is exponential from ``backoff``.

:func:`platform_error` maps 400 → InvalidError, 401/403 → ForbiddenError (403 on a disabled version →
DisabledError), 404 → NotFoundError, 409 → ConflictError, 429 and 5xx → UnavailableError. Messages name
the operation, the status and Azure's error code; Azure's message is kept (it names keys and callers,
never a token) but cut to 200 characters.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
)

from vigil.platform.errors import (
    ConflictError,
    DisabledError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
    PlatformError,
    UnavailableError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
#: statuses worth another attempt of an idempotent call
RETRYABLE: Final = frozenset({408, 429, 500, 502, 503, 504})
_MAX_MESSAGE: Final = 200


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """How hard to try. ``sleep`` is injectable so a test can observe waits without taking them."""

    attempts: int = 4
    backoff: float = 0.5
    max_backoff: float = 8.0
    max_retry_after: float = 60.0
    sleep: Callable[[float], Awaitable[None]] = field(default=asyncio.sleep, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff < 0 or self.max_backoff < 0 or self.max_retry_after < 0:
            raise ValueError("attempts must be at least 1 and the waits must not be negative")


def status_of(exc: BaseException) -> int | None:
    return exc.status_code if isinstance(exc, HttpResponseError) else None


def error_code(exc: BaseException) -> str:
    """Azure's error code (``KeyNotFound``, ``Forbidden``), or the exception class when there is none."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    return str(code) if code else type(exc).__name__


def retry_after(exc: BaseException) -> float | None:
    """The wait a response asks for, in seconds, or None when it asks for none."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1000.0), ("x-ms-retry-after-ms", 1000.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) / scale)
            except ValueError:
                pass
    value = headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def platform_error(exc: AzureError, what: str) -> PlatformError:
    """The platform error for an SDK exception (module docstring)."""
    status = status_of(exc)
    code = error_code(exc)
    message = str(getattr(getattr(exc, "error", None), "message", "") or "")[:_MAX_MESSAGE]
    text = f"{what}: " + (f"HTTP {status} {code}" if status else code) + (f": {message}" if message else "")
    if status is None and isinstance(exc, ClientAuthenticationError):
        return ForbiddenError(f"{what}: could not get an Azure token ({code})")
    if status is None:
        return UnavailableError(f"{what}: Azure unreachable ({code})")
    if status == 403 and "disabled" in message.lower():
        return DisabledError(text)
    cls: type[PlatformError] = {
        400: InvalidError,
        401: ForbiddenError,
        403: ForbiddenError,
        404: NotFoundError,
        409: ConflictError,
    }.get(status, UnavailableError if status == 429 or status >= 500 else PlatformError)
    return cls(text)


async def call(
    what: str,
    send: Callable[[], Awaitable[T]],
    settings: RetrySettings,
    *,
    reconcile: Callable[[], Awaitable[T | None]] | None = None,
) -> T:
    """``send()`` with the retries of the module docstring; ``reconcile`` given means not idempotent.

    Raises a :class:`PlatformError` (from :func:`platform_error`) when the attempts are spent or the error
    is not worth another one.
    """
    for attempt in range(1, settings.attempts + 1):
        try:
            return await send()
        except AzureError as exc:
            status = status_of(exc)
            last = attempt == settings.attempts
            if isinstance(exc, HttpResponseError) and status not in RETRYABLE:
                raise platform_error(exc, what) from None
            ambiguous = status != 429 and not isinstance(exc, ServiceRequestError)
            if reconcile is not None and ambiguous:
                done = await reconcile()
                if done is not None:
                    log.warning(
                        "%s: %s after the change was made; reconciled from state", what, error_code(exc)
                    )
                    return done
            if last:
                raise platform_error(exc, what) from None
            wait = retry_after(exc)
            if wait is None:
                wait = min(settings.max_backoff, settings.backoff * 2 ** (attempt - 1))
            elif wait > settings.max_retry_after:
                limit = settings.max_retry_after
                raise UnavailableError(
                    f"{what}: Azure asks to retry after {wait:.0f}s (more than {limit:g}s)"
                ) from None
            kind = f"HTTP {status}" if status else type(exc).__name__
            log.info("%s: %s, attempt %d/%d, retrying in %.2fs", what, kind, attempt, settings.attempts, wait)
            await settings.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover
