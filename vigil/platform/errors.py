"""Errors of the platform providers (key vault, storage, compute, attestation).

Every provider, local or Azure, raises these and nothing else on purpose, so a remediator or a training node
handles "the key version is disabled" the same way on both. The HTTP service maps each to one status code
(:data:`HTTP_STATUS`), so a remote caller gets the same class back::

    PlatformError
    ├── InvalidError        a malformed argument: a bad name, measurement or policy (400)
    ├── NotFoundError       no such key, version, container, object or node (404)
    ├── AlreadyExistsError  create of a name that exists, or is soft-deleted and not purged (409)
    ├── ConflictError       contradicts the current state: purge protection, a node's state (409)
    ├── ForbiddenError      the principal's access policy does not allow the operation (403)
    ├── DisabledError       the key version is disabled or the key deleted: no wrap, unwrap, sign (409)
    ├── LockedError         a storage lock denies the operation (423)
    ├── IntegrityError      stored ciphertext or metadata failed its authentication check (500)
    ├── UnavailableError    the change cannot be audited or recorded now: nothing changed (503)
    ├── AttestationError    evidence or a token failed a check of the attestation service (403)
    └── ReleaseDeniedError  the attestation token does not verify or does not satisfy the policy (403)

Messages never contain key material, tokens or secrets; they name the key, version, object or claim.
"""

from __future__ import annotations

from vigil.errors import VigilError


class PlatformError(VigilError):
    """Root of the platform providers' errors."""

    #: a short stable code for APIs and metrics
    code = "platform_error"


class InvalidError(PlatformError):
    code = "invalid"


class NotFoundError(PlatformError):
    code = "not_found"


class AlreadyExistsError(PlatformError):
    code = "already_exists"


class ConflictError(PlatformError):
    code = "conflict"


class ForbiddenError(PlatformError):
    code = "forbidden"


class DisabledError(PlatformError):
    code = "disabled"


class LockedError(PlatformError):
    code = "locked"


class IntegrityError(PlatformError):
    code = "integrity"


class UnavailableError(PlatformError):
    """The platform refused a change it could not put on record (audit log or event store failing)."""

    code = "unavailable"


class AttestationError(PlatformError):
    """Evidence or a token failed a check; ``reason`` names it (never a secret, never the token)."""

    code = "attestation_failed"

    def __init__(self, reason: str) -> None:
        self.reason = reason.removeprefix("attestation failed: ")  # rebuilt from its message by a client
        super().__init__(f"attestation failed: {self.reason}")


class ReleaseDeniedError(PlatformError):
    """Release refused; ``reason`` says which check failed (signature, expiry, issuer, claim, recipient)."""

    code = "release_denied"

    def __init__(self, reason: str) -> None:
        self.reason = reason.removeprefix("key release denied: ")  # rebuilt from its message by a client
        super().__init__(f"key release denied: {self.reason}")


#: HTTP status for each error class, used by the platform service and its client
HTTP_STATUS: dict[type[PlatformError], int] = {
    InvalidError: 400,
    NotFoundError: 404,
    AlreadyExistsError: 409,
    ConflictError: 409,
    ForbiddenError: 403,
    DisabledError: 409,
    LockedError: 423,
    IntegrityError: 500,
    ReleaseDeniedError: 403,
    AttestationError: 403,
    UnavailableError: 503,
    PlatformError: 500,
}

#: error class for each code, so a client re-raises what the service raised
BY_CODE: dict[str, type[PlatformError]] = {cls.code: cls for cls in HTTP_STATUS}
