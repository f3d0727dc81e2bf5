"""The key vault interface: versioned keys, envelope wrapping, signing and attested release.

Two kinds of key:

* ``aes256`` (Azure: ``oct-HSM``): wraps and unwraps data keys with AES-256-GCM; the kind a storage container
  and a training node's dataset are protected by, and the kind ``release`` hands to an attested node.
* ``ed25519``: signs (the audit log's checkpoints); only the public key ever leaves the vault.

A key has versions; the newest enabled version is *current* and is what ``wrap``/``sign`` use. ``rotate``
makes a new current version; older versions keep unwrapping (so data written before a rotation stays
readable) until they are disabled. ``delete`` is a soft delete: the key is kept, unusable, for the retention
period and can be recovered; ``purge`` removes it for good and is refused while purge protection is on.

Every operation takes the calling ``principal``; the vault's access policy says which principal may do which
:class:`KeyOp`, per key name or for every key (``"*"``), and a refusal is
:class:`~vigil.platform.errors.ForbiddenError`.

Release policy: the JSON shape of Azure Secure Key Release policies (``../shared/reference/azure.md``
§4.5)::

    {"version": "1.0.0", "anyOf": [{"authority": "<issuer>", "allOf": [{"claim": "a.b", "equals": true}]}]}

``release`` verifies the attestation token (signature from a trusted issuer's key, ``exp``/``nbf``),
evaluates the policy against its claims, and returns the key material wrapped to ``recipient_public_key``
(RSA-OAEP-SHA256 of a one-time AES-256 key, which wraps the material with AES key wrap with padding, RFC
5649: Azure's ``RSA_AES_KEY_WRAP_256``). The recipient key must be the encryption key the token
carries in ``x-ms-runtime.keys``, so a token cannot be used to get a key wrapped to anyone but the attested
node.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass, field
from typing import Any, Protocol


class KeyKind(enum.StrEnum):
    AES256 = "aes256"
    ED25519 = "ed25519"


class KeyOp(enum.StrEnum):
    """Operations the access policy grants, one per method (``read`` covers get and list)."""

    CREATE = "create"
    READ = "read"
    ROTATE = "rotate"
    UPDATE = "update"  # enable/disable a version, set the release policy
    DELETE = "delete"  # soft delete and recover
    PURGE = "purge"
    WRAP = "wrap"
    UNWRAP = "unwrap"
    SIGN = "sign"  # sign and hmac
    RELEASE = "release"
    ADMIN = "admin"  # change the access policy


@dataclass(frozen=True, slots=True)
class KeyVersion:
    """Public facts about one version (never its material)."""

    name: str
    version: str
    kind: KeyKind
    enabled: bool
    created: float
    #: the raw public key (32 bytes) for ed25519 versions, None for aes256
    public_key: bytes | None = None


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """Public facts about a key: its versions (oldest first), current version and state."""

    name: str
    kind: KeyKind
    current: str | None
    versions: tuple[KeyVersion, ...]
    exportable: bool
    release_policy: dict[str, Any] | None
    deleted: float | None = None  # soft-delete time, None while live
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A data key wrapped by a vault key version; opaque ciphertext, safe to store beside the data."""

    key_name: str
    version: str
    ciphertext: bytes

    def to_json(self) -> dict[str, str]:
        return {
            "key": self.key_name,
            "version": self.version,
            "ciphertext": base64.urlsafe_b64encode(self.ciphertext).decode().rstrip("="),
        }

    @classmethod
    def from_json(cls, data: dict[str, str]) -> WrappedKey:
        text = data["ciphertext"]
        return cls(data["key"], data["version"], base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


@dataclass(frozen=True, slots=True)
class Signature:
    key_name: str
    version: str
    algorithm: str  # "Ed25519"
    value: bytes


@dataclass(frozen=True, slots=True)
class ReleasedKey:
    """The result of a release: the material wrapped to the recipient (``RSA_AES_KEY_WRAP_256`` layout:
    RSA-OAEP-SHA256 ciphertext of the one-time AES key, then the RFC 5649 wrap of the material)."""

    key_name: str
    version: str
    algorithm: str  # "RSA_AES_KEY_WRAP_256"
    wrapped: bytes


class KeyVault(Protocol):
    """A key vault (local or Azure Key Vault / Managed HSM). All methods are coroutines."""

    async def create_key(
        self,
        principal: str,
        name: str,
        kind: KeyKind = KeyKind.AES256,
        *,
        exportable: bool = False,
        release_policy: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> KeyInfo: ...

    async def get_key(self, principal: str, name: str) -> KeyInfo: ...

    async def list_keys(self, principal: str, *, include_deleted: bool = False) -> list[KeyInfo]: ...

    async def rotate_key(self, principal: str, name: str) -> KeyVersion: ...

    async def set_version_enabled(
        self, principal: str, name: str, version: str, enabled: bool
    ) -> KeyVersion: ...

    async def set_release_policy(
        self, principal: str, name: str, policy: dict[str, Any] | None
    ) -> KeyInfo: ...

    async def delete_key(self, principal: str, name: str) -> KeyInfo: ...

    async def recover_key(self, principal: str, name: str) -> KeyInfo: ...

    async def purge_key(self, principal: str, name: str) -> None: ...

    async def wrap(self, principal: str, name: str, data_key: bytes) -> WrappedKey: ...

    async def unwrap(self, principal: str, wrapped: WrappedKey) -> bytes: ...

    async def sign(self, principal: str, name: str, data: bytes) -> Signature: ...

    async def hmac(self, principal: str, name: str, data: bytes, version: str | None = None) -> bytes:
        """HMAC-SHA256 of ``data`` under the current version of an aes256 key, or the enabled ``version``
        given (``sign`` permission): how the audit log stores a value an investigator must match without
        storing the value (and, after the key was rotated, match against what older versions wrote)."""
        ...

    async def release(
        self, principal: str, name: str, attestation_token: str, recipient_public_key: bytes
    ) -> ReleasedKey: ...

    async def grant(self, principal: str, grantee: str, key_name: str, ops: set[KeyOp]) -> None: ...

    async def revoke(
        self, principal: str, grantee: str, key_name: str, ops: set[KeyOp] | None = None
    ) -> None: ...

    async def set_suspended(self, principal: str, grantee: str, suspended: bool, *, reason: str = "") -> None:
        """Suspend (or restore) every grant of ``grantee`` at once, keeping them: quarantine."""
        ...
