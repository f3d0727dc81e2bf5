"""Azure Resource Manager clients, built one way: credential, endpoint, and a retry policy that is safe.

Why a module for this. Every provider here talks to ARM through the asynchronous ``azure-mgmt-*`` clients,
and three things must be the same for all of them:

* **Credentials** come from azure-identity (:func:`.credentials.build_credential`):
  ``DefaultAzureCredential`` in production, or a named managed identity / workload identity. Nothing
  secret is read from configuration; tests pass any object with ``async get_token``. :class:`ArmConfig`
  never shows the credential in its repr.
* **Endpoints.** ``endpoint`` is the ARM base URL (public cloud by default); a sovereign cloud or a test fake
  sets it, and the token scope follows it (``<endpoint>/.default``) unless ``credential_scopes`` says
  otherwise. ``connection_verify`` names a CA bundle for a TLS endpoint with a private CA (the loopback fake
  in the tests). ARM clients insist on https for bearer tokens, so the fake serves TLS rather than the
  per-call ``enforce_https=False`` escape hatch, which LRO polling requests would not carry.
* **Retries** (:class:`SafeRetryPolicy`). azure-core's default policy re-sends a ``POST`` when the answer
  is 500/503/504 or carries ``Retry-After``. A ``POST`` on ARM is an action (deallocate, regenerateKey)
  that may already have run when the error came back, so a resend can act twice. The policy here retries
  ``GET``/``PUT``/``DELETE``/``PATCH`` as azure-core does (ARM defines them idempotent), and a ``POST`` only
  on ``429``: a throttled request was refused before it ran, and the wait it asks for is honoured. Any other
  failure of a ``POST`` surfaces, and the provider reconciles by reading state (a VM already deallocating,
  a key whose creation time moved) instead of guessing.

:func:`arm_errors` turns SDK exceptions into :mod:`vigil.platform.errors` with a message that names the
operation and ARM's error code, never a token or a key.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.core.pipeline import PipelineResponse
from azure.core.pipeline.policies import AsyncRetryPolicy

from vigil.platform.errors import (
    ConflictError,
    ForbiddenError,
    InvalidError,
    LockedError,
    NotFoundError,
    PlatformError,
    UnavailableError,
)

PUBLIC_CLOUD: Final = "https://management.azure.com"
#: methods that ARM defines as idempotent: a resend after an ambiguous failure changes nothing more
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"})

C = TypeVar("C")


class SafeRetryPolicy(AsyncRetryPolicy):  # type: ignore[type-arg]
    """azure-core's async retry policy, except that a ``POST`` is re-sent only after a ``429``.

    Throttling (``429``) means ARM refused the request before running it, so every method is retried after
    the advised ``Retry-After`` / ``retry-after-ms`` / ``x-ms-retry-after-ms`` wait. For idempotent methods
    the inherited rules apply unchanged (408, 429, 5xx; ``Retry-After`` on any error)."""

    def is_retry(self, settings: dict[str, Any], response: PipelineResponse[Any, Any]) -> bool:
        method = response.http_request.method.upper()
        if method in IDEMPOTENT:
            return bool(super().is_retry(settings, response))
        return response.http_response.status_code == 429 and bool(settings["total"])


@dataclass(frozen=True, slots=True)
class ArmConfig:
    """Where and as whom to reach ARM. ``polling_interval`` is the long-running-operation poll period used
    when ARM gives no ``Retry-After``; ``retry_total`` bounds the retries of one request (each honouring the
    advised wait, capped at ``retry_backoff_max`` seconds); ``operation_timeout`` bounds the wait for one
    long-running operation."""

    subscription_id: str
    credential: AsyncTokenCredential = field(repr=False)
    endpoint: str = PUBLIC_CLOUD
    credential_scopes: tuple[str, ...] = ()
    connection_verify: str | bool = True
    polling_interval: float = 15.0
    retry_total: int = 6
    retry_backoff_max: float = 60.0
    operation_timeout: float = 900.0

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[0-9A-Za-z-]{1,64}", self.subscription_id):
            raise InvalidError(f"not an Azure subscription id: {self.subscription_id!r}")
        if not self.endpoint.startswith("https://"):
            raise InvalidError(f"the ARM endpoint must be an https URL, not {self.endpoint!r}")

    @property
    def scopes(self) -> list[str]:
        return list(self.credential_scopes) or [self.endpoint.rstrip("/") + "/.default"]

    def client(self, cls: type[C]) -> C:
        """An async mgmt client of ``cls`` (``ComputeManagementClient`` ...) for this subscription."""
        retry = SafeRetryPolicy(retry_total=self.retry_total, retry_backoff_max=self.retry_backoff_max)
        return cls(  # type: ignore[call-arg]
            self.credential,
            self.subscription_id,
            base_url=self.endpoint,
            credential_scopes=self.scopes,
            retry_policy=retry,
            polling_interval=self.polling_interval,
            connection_verify=self.connection_verify,
        )

    def resource_id(self, group: str, provider: str, kind: str, name: str) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{group}/providers/{provider}/{kind}/{name}"
        )


_ID = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<group>[^/]+)/providers/(?P<provider>[^/]+)"
    r"/(?P<kind>[^/]+)/(?P<name>[^/]+)(?:/.*)?$",
    re.IGNORECASE,
)


def parse_id(resource_id: str) -> tuple[str, str, str, str, str]:
    """``(subscription, group, provider, kind, name)`` of the top-level resource an ARM id names (else
    InvalidError). A sub-resource's id names its parent: ``.../storageAccounts/acct/blobServices/default``
    (what storage resource logs carry) is the account ``acct``."""
    match = _ID.match(resource_id.rstrip("/"))
    if match is None:
        raise InvalidError(f"not an ARM resource id: {resource_id!r}")
    return match["sub"], match["group"], match["provider"], match["kind"], match["name"]


def status_of(exc: BaseException) -> int | None:
    return exc.status_code if isinstance(exc, HttpResponseError) else None


def error_code(exc: BaseException) -> str:
    """ARM's error code (``ScopeLocked``, ``OperationNotAllowed``) of a failed request, or ``""``."""
    if isinstance(exc, HttpResponseError):
        code = exc.error.code if exc.error is not None else None
        return str(code or "")
    return ""


@contextlib.contextmanager
def arm_errors(what: str) -> Iterator[None]:
    """Translate an SDK exception raised inside into the platform error tree, naming ``what`` failed."""
    try:
        yield
    except PlatformError:
        raise
    except ResourceNotFoundError:
        raise NotFoundError(f"{what}: not found") from None
    except HttpResponseError as exc:
        raise _translate(what, exc) from None
    except AzureError as exc:
        raise UnavailableError(f"{what}: ARM unreachable ({type(exc).__name__})") from None


def _translate(what: str, exc: HttpResponseError) -> PlatformError:
    status, code = exc.status_code or 0, error_code(exc)
    text = f"{what}: ARM answered {status}{f' {code}' if code else ''}"
    if code == "ScopeLocked":
        return LockedError(f"{text} (a management lock forbids it)")
    if status == 404:
        return NotFoundError(text)
    if status in (401, 403):
        return ForbiddenError(f"{text} (check the identity's role assignments)")
    if status == 409:
        return ConflictError(text)
    if status == 400:
        return InvalidError(text)
    return UnavailableError(text)
