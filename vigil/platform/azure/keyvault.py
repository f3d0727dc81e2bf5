"""Azure Key Vault (or Managed HSM) as the platform's :class:`~vigil.platform.keyvault.KeyVault`.

Over the asynchronous ``azure-keyvault-keys`` ``KeyClient`` (``../shared/reference/azure.md`` §5.1, §4.5),
with the SDK's retries off and :mod:`.keyvault_retry` deciding what may be sent twice. What maps how:

* **Keys and versions.** :meth:`get_key` lists the versions (``GET /keys/{n}/versions``: the list works
  for disabled versions, a GET of one does not) and reads the newest enabled one (``GET /keys/{n}/{v}``)
  for its type, exportability and release policy. Versions are ordered by creation time, then as the
  service lists them; *current* is the newest enabled one, as in the local vault. Key types: ``oct`` and
  ``oct-HSM`` are ``aes256``; RSA and EC keys (the usual Secure Key Release keys on Key Vault Premium) are
  also reported as ``aes256`` because :class:`~vigil.platform.keyvault.KeyKind` has no member for them:
  the remediators only read versions and policies. Ed25519 does not exist in Key Vault.
* **Rotate** (``POST /keys/{n}/rotate``) is not idempotent. The versions are read first; when the answer
  is lost (503 after the vault made the version, a reset connection), the versions are read again and a
  version that was not there before *is* the rotation: exactly one new version, never two.
* **Disable/enable a version**, **release policy**, **rotation policy**: PATCH/PUT, idempotent, retried.
  Azure keeps a release policy per version; :meth:`set_release_policy` sets it on the current version.
  Azure cannot remove the release policy of an exportable key, so ``policy=None`` ("release to nobody")
  writes a policy no token can satisfy (every alternative requires the claim ``x-vigil-release`` to equal
  ``"disabled"``, which no attestation service issues), and :meth:`get_key` reports that policy as None,
  so :mod:`vigil.remediators.revoke_release` sees what it set.
* **Release** (``POST /keys/{n}/{v}/release``, ``RSA_AES_KEY_WRAP_256``): Azure evaluates the policy; before
  asking, the token is checked by the configured :class:`~vigil.platform.attestation.TokenVerifier` (when
  one is given) and the recipient key must be the token's runtime encryption key, because Azure wraps to
  that key whatever the caller passes. The answer is a JWS signed by the vault; its payload's
  ``response.key.key.key_hsm`` is base64url JSON whose ``ciphertext`` is the wrapped material (shape
  observed in Microsoft's SKR samples, not checked against a live vault). The JWS signature is not
  verified here: the wrapped bytes only open with the recipient's private key.
* **Wrap/unwrap**: ``A256KW`` in the vault (``oct-HSM`` keys, i.e. Managed HSM); data keys are 16 to 1024
  bytes, multiples of 8. Not through ``CryptographyClient``, which would wrap locally with a random key
  (see :meth:`AzureKeyVault._key_operation`).
* **Not on Azure** (:class:`~vigil.platform.errors.InvalidError` naming the alternative): ``sign`` and
  ``hmac`` (no Ed25519 keys, no HMAC), ``grant``/``revoke``/``set_suspended`` (access is RBAC role
  assignments or vault access policies: :mod:`.keyvault_lockdown`), ``purge_key`` (irreversible: done by
  a person), ``list_keys(include_deleted=True)``.

``principal`` is accepted for the interface and logged; Azure acts as the credential's identity, and the
vault's RBAC or access policies decide (403 → ForbiddenError).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import AzureError
from azure.keyvault.keys import KeyExportEncryptionAlgorithm, KeyProperties, KeyVaultKey
from azure.keyvault.keys.aio import KeyClient
from azure.keyvault.keys.crypto import KeyWrapAlgorithm

from vigil.platform.attestation import TokenVerifier
from vigil.platform.azure.keyvault_models import (
    RBAC_ACTIONS,
    b64u,
    build_rotation_policy,
    checked_policy,
    current_version,
    decode_policy,
    encode_policy,
    key_info,
    key_name,
    no_release_policy,
    released_material,
    rotation_policy_json,
    sort_key,
    token_claims,
    unsupported,
    version_of,
)
from vigil.platform.azure.keyvault_retry import RetrySettings, call
from vigil.platform.errors import (
    AlreadyExistsError,
    ConflictError,
    DisabledError,
    ForbiddenError,
    IntegrityError,
    InvalidError,
    NotFoundError,
    ReleaseDeniedError,
)
from vigil.platform.keyvault import KeyInfo, KeyKind, KeyOp, KeyVersion, ReleasedKey, Signature, WrappedKey
from vigil.platform.local.release import ALGORITHM as RELEASE_ALGORITHM
from vigil.platform.local.release import attested_recipient

log = logging.getLogger(__name__)
T = TypeVar("T")


class AzureKeyVault:
    """The Key Vault provider (module docstring). One instance per vault URL and event loop."""

    #: the data actions each operation needs (declared in :mod:`.keyvault_models`)
    RBAC_ACTIONS: Final = RBAC_ACTIONS

    def __init__(
        self,
        client: KeyClient,
        *,
        verifier: TokenVerifier | None = None,
        retry: RetrySettings | None = None,
    ) -> None:
        self._client = client
        self._verifier = verifier
        self._retry = retry or RetrySettings()

    @classmethod
    def connect(
        cls,
        vault_url: str,
        credential: AsyncTokenCredential,
        *,
        verifier: TokenVerifier | None = None,
        retry: RetrySettings | None = None,
        connection_verify: str | None = None,
        verify_challenge_resource: bool = True,
    ) -> AzureKeyVault:
        """A provider for ``vault_url`` (``https://<name>.vault.azure.net``); the SDK's retries are off
        (``retry_total=0``) because :mod:`.keyvault_retry` owns them. ``connection_verify`` names a CA
        bundle for a private CA; ``verify_challenge_resource=False`` only for a vault that is not under
        a Key Vault domain (a test fake)."""
        options: dict[str, Any] = {"retry_total": 0, "verify_challenge_resource": verify_challenge_resource}
        if connection_verify is not None:
            options["connection_verify"] = connection_verify
        return cls(KeyClient(vault_url, credential, **options), verifier=verifier, retry=retry)

    async def close(self) -> None:
        await self._client.close()

    def __repr__(self) -> str:
        return f"AzureKeyVault(vault_url={self._client.vault_url!r})"

    # --- reading ------------------------------------------------------------------------------------------

    async def get_key(self, principal: str, name: str) -> KeyInfo:
        name = key_name(name)
        versions = await self._versions(name)
        current = current_version(versions)
        bundle = None
        if current is not None:
            bundle = await self._call(
                f"get key {name!r}", lambda: self._client.get_key(name, current.version)
            )
        return key_info(name, versions, bundle)

    async def list_keys(self, principal: str, *, include_deleted: bool = False) -> list[KeyInfo]:
        if include_deleted:
            raise InvalidError(
                "list_keys(include_deleted=True) is not supported by the Azure Key Vault adapter"
            )

        async def names() -> list[str]:
            return [p.name async for p in self._client.list_properties_of_keys()]

        found = []
        for name in sorted(await self._call("list keys", names)):
            try:
                found.append(await self.get_key(principal, name))
            except NotFoundError:
                continue  # deleted between the listing and the read
        return found

    async def get_rotation_policy(self, principal: str, name: str) -> dict[str, Any]:
        """The key's rotation policy in Key Vault's wire form (``lifetimeActions``, ``attributes``)."""
        name = key_name(name)
        policy = await self._call(
            f"get rotation policy of {name!r}", lambda: self._client.get_key_rotation_policy(name)
        )
        return rotation_policy_json(policy)

    # --- changing -----------------------------------------------------------------------------------------

    async def create_key(
        self,
        principal: str,
        name: str,
        kind: KeyKind = KeyKind.AES256,
        *,
        exportable: bool = False,
        release_policy: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> KeyInfo:
        """An ``oct-HSM`` AES-256 key (Managed HSM). AlreadyExistsError when the name exists: Key Vault's
        create would silently add a version instead."""
        if kind is not KeyKind.AES256:
            raise InvalidError(f"Azure Key Vault has no {kind.value} keys; create aes256 (oct-HSM) keys only")
        if exportable and release_policy is None:
            raise InvalidError("an exportable key needs a release policy in Azure Key Vault")
        policy = encode_policy(checked_policy(release_policy)) if release_policy is not None else None
        try:
            await self._versions(name)
        except NotFoundError:
            pass
        else:
            raise AlreadyExistsError(f"key {name!r} already exists")

        async def reconcile() -> KeyVaultKey | None:
            try:
                return await self._client.get_key(name)
            except AzureError:  # not there (or unreadable): the create is sent again
                return None

        await self._call(
            f"create key {name!r}",
            lambda: self._client.create_oct_key(
                name,
                size=256,
                hardware_protected=True,
                exportable=exportable or None,
                release_policy=policy,
                tags=tags,
            ),
            reconcile=reconcile,
        )
        log.info("created key %r for %r", name, principal)
        return await self.get_key(principal, name)

    async def rotate_key(self, principal: str, name: str) -> KeyVersion:
        name = key_name(name)
        before = await self._versions(name)
        known = {v.version for v in before}

        async def reconcile() -> KeyVersion | None:
            new = [v for v in await self._versions(name) if v.version not in known]
            if len(new) > 1:
                log.warning("rotate %r: %d new versions appeared (another rotation ran too)", name, len(new))
            return new[-1] if new else None

        async def rotate() -> KeyVersion:
            key = await self._client.rotate_key(name)
            return version_of(name, key.properties)

        new = await self._call(f"rotate key {name!r}", rotate, reconcile=reconcile)
        log.info("rotated key %r for %r: new version %s", name, principal, new.version)
        return new

    async def set_version_enabled(self, principal: str, name: str, version: str, enabled: bool) -> KeyVersion:
        name = key_name(name)
        if not version:
            raise InvalidError("name the version to enable or disable")
        key = await self._call(
            f"{'enable' if enabled else 'disable'} version {version} of {name!r}",
            lambda: self._client.update_key_properties(name, version, enabled=bool(enabled)),
        )
        log.info("key %r version %s %s by %r", name, version, "enabled" if enabled else "disabled", principal)
        return version_of(name, key.properties)

    async def set_release_policy(self, principal: str, name: str, policy: dict[str, Any] | None) -> KeyInfo:
        name = key_name(name)
        info = await self.get_key(principal, name)
        if info.current is None:
            raise DisabledError(f"key {name!r} has no enabled version to set a release policy on")
        current = info.current
        if policy is None:
            raw = await self._raw_policy(name, current)
            if raw is None:
                return info  # no policy: released to nobody already
            policy = no_release_policy(raw)
        encoded = encode_policy(checked_policy(policy))
        await self._call(
            f"set release policy of {name!r}",
            lambda: self._client.update_key_properties(name, current, release_policy=encoded),
        )
        log.info("release policy of key %r version %s set by %r", name, current, principal)
        return await self.get_key(principal, name)

    async def set_rotation_policy(
        self,
        principal: str,
        name: str,
        *,
        rotate_after_create: str | None = None,
        notify_before_expiry: str | None = None,
        expires_in: str | None = None,
    ) -> dict[str, Any]:
        """Set auto-rotation (ISO 8601 durations, e.g. ``P30D``); ``expires_in`` must be ≥ 28 days (Azure)."""
        name = key_name(name)
        policy = build_rotation_policy(rotate_after_create, notify_before_expiry, expires_in)
        result = await self._call(
            f"set rotation policy of {name!r}", lambda: self._client.update_key_rotation_policy(name, policy)
        )
        log.info("rotation policy of key %r set by %r", name, principal)
        return rotation_policy_json(result)

    async def delete_key(self, principal: str, name: str) -> KeyInfo:
        raise unsupported("delete_key", "disable the versions instead")

    async def recover_key(self, principal: str, name: str) -> KeyInfo:
        raise unsupported("recover_key", "use az keyvault key recover")

    async def purge_key(self, principal: str, name: str) -> None:
        raise unsupported("purge_key", "it is irreversible and left to a person (az keyvault key purge)")

    # --- cryptography ---------------------------------------------------------------------------------------

    async def wrap(self, principal: str, name: str, data_key: bytes) -> WrappedKey:
        name = key_name(name)
        if not 16 <= len(data_key) <= 1024 or len(data_key) % 8:
            raise InvalidError("A256KW wraps data keys of 16 to 1024 bytes, a multiple of 8")
        info = await self.get_key(principal, name)
        if info.current is None:
            raise DisabledError(f"key {name!r} has no enabled version to wrap with")
        wrapped = await self._key_operation("wrap", name, info.current, data_key)
        return WrappedKey(name, info.current, wrapped)

    async def unwrap(self, principal: str, wrapped: WrappedKey) -> bytes:
        return await self._key_operation("unwrap", wrapped.key_name, wrapped.version, wrapped.ciphertext)

    async def sign(self, principal: str, name: str, data: bytes) -> Signature:
        raise InvalidError("Azure Key Vault has no Ed25519 keys: sign with the local vault")

    async def hmac(self, principal: str, name: str, data: bytes, version: str | None = None) -> bytes:
        raise InvalidError("Azure Key Vault has no HMAC operation: use the local vault")

    async def release(
        self, principal: str, name: str, attestation_token: str, recipient_public_key: bytes
    ) -> ReleasedKey:
        name = key_name(name)
        attested_recipient(token_claims(self._verifier, attestation_token), recipient_public_key)
        info = await self.get_key(principal, name)
        if info.current is None:
            raise DisabledError(f"key {name!r} has no enabled version to release")
        current = info.current
        result = await self._call(
            f"release {name!r}",
            lambda: self._client.release_key(
                name,
                attestation_token,
                version=current,
                algorithm=KeyExportEncryptionAlgorithm.rsa_aes_key_wrap_256,
            ),
            denied=True,
        )
        wrapped = released_material(result.value or "")
        log.info("released key %r version %s for %r", name, current, principal)
        return ReleasedKey(name, current, RELEASE_ALGORITHM, wrapped)

    # --- access (not on Azure) ----------------------------------------------------------------------------

    async def grant(self, principal: str, grantee: str, key_name: str, ops: set[KeyOp]) -> None:
        raise unsupported("grant", "Azure access is RBAC role assignments or vault access policies")

    async def revoke(
        self, principal: str, grantee: str, key_name: str, ops: set[KeyOp] | None = None
    ) -> None:
        raise unsupported("revoke", "use AzureVaultLockdown.remove_access_policy or the role assignment")

    async def set_suspended(self, principal: str, grantee: str, suspended: bool, *, reason: str = "") -> None:
        raise unsupported("set_suspended", "use AzureVaultLockdown.remove_access_policy and restore")

    # --- helpers --------------------------------------------------------------------------------------------

    async def _call(
        self,
        what: str,
        send: Callable[[], Awaitable[T]],
        *,
        reconcile: Callable[[], Awaitable[T | None]] | None = None,
        denied: bool = False,
    ) -> T:
        try:
            return await call(what, send, self._retry, reconcile=reconcile)
        except (InvalidError, ForbiddenError, ConflictError) as exc:
            if denied:
                raise ReleaseDeniedError(f"Key Vault refused the release ({exc})") from None
            raise

    async def _key_operation(self, op: str, name: str, version: str, value: bytes) -> bytes:
        """``POST /keys/{name}/{version}/wrapkey|unwrapkey`` (A256KW), always in the vault.

        Not through ``CryptographyClient``: it first GETs the key to work locally when it can, and for an
        ``oct-HSM`` key, whose GET never returns the material, azure-keyvault-keys 4.11.3 then builds a
        local symmetric key from *random bytes* and wraps with it, silently: the result could never be
        unwrapped (seen against the fake, which answers as Key Vault does, without ``k``). So the call
        goes to the generated operation the KeyClient itself uses."""
        generated = self._client._client
        send = generated.wrap_key if op == "wrap" else generated.unwrap_key
        body = {"alg": KeyWrapAlgorithm.aes_256.value, "value": b64u(value)}
        result = await self._call(f"{op} with {name!r} version {version}", lambda: send(name, version, body))
        if result.result is None:
            raise IntegrityError(f"{op} with {name!r}: Key Vault returned no value")
        return bytes(result.result)

    async def _versions(self, name: str) -> list[KeyVersion]:
        async def listing() -> list[KeyProperties]:
            return [p async for p in self._client.list_properties_of_key_versions(name)]

        props = await self._call(f"list versions of {name!r}", listing)
        if not props:
            raise NotFoundError(f"key {name!r} has no versions")
        ordered = sorted(enumerate(props), key=lambda item: (sort_key(item[1]), item[0]))
        return [version_of(name, p) for _, p in ordered]

    async def _raw_policy(self, name: str, version: str) -> dict[str, Any] | None:
        key = await self._call(f"get key {name!r}", lambda: self._client.get_key(name, version))
        return decode_policy(key.properties.release_policy)
