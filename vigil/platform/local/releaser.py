"""Secure Key Release's decision: may this attested node have this key, and if so, the key wrapped to it.

Why a module of its own: release is the one path by which key material leaves the vault, so its checks are
kept together, in one readable order, apart from the vault's bookkeeping. The vault checks the caller's
``release`` grant and holds the transaction; :func:`release_key` does the rest, in this order:

1. the key: usable (not soft-deleted), exportable, with a release policy and an enabled ``aes256``
   version. These are the vault's own settings, checked before the token so that a misconfigured key is
   reported as such (ConflictError/DisabledError), not as a failed attestation;
2. the token, by the configured :class:`~vigil.platform.attestation.TokenVerifier` (signature, issuer
   allow-list, ``exp``/``nbf``). No verifier configured means no release, ever: fail closed;
3. the release policy, evaluated against the verified issuer and claims (:func:`.policy.evaluate`);
4. the recipient: it must be the encryption key that the verified token carries
   (:func:`.release.attested_recipient`), so a stolen token cannot get the key wrapped to a thief's key;
5. the wrap: the current version's material, RSA-OAEP + AES key wrap to that recipient
   (:func:`.release.wrap_for_recipient`).

Refusals in steps 2–4 are ReleaseDeniedError. Whatever the outcome, ``details`` (the platform event's
details, filled in as each step learns something) says how far the decision got: the version and policy
hash after step 1, the token's issuer and ``jti`` after step 2, so a denied release is as traceable in the
audit log as a granted one. Nothing secret goes there: never the token itself, never material, only a
fingerprint of the recipient key, which the caller records once the key is wrapped.

The data-key wrap format lives here too (:func:`wrap_with_material`, :func:`unwrap_with_material`),
because it is what makes a released key useful: the vault's ``wrap`` seals a data key under a version's
material, and the node that was released that material unwraps the data key itself, offline, with
:func:`unwrap_with_material`. Both sides must agree byte for byte: ``nonce (12) ‖ AES-256-GCM
ciphertext+tag``, with associated data ``vigil.keyvault.wrap.v1/<key name>/<version>`` so that a
:class:`~vigil.platform.keyvault.WrappedKey` relabelled to another key or version fails to open.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vigil.platform.attestation import TokenVerifier
from vigil.platform.errors import ConflictError, IntegrityError, ReleaseDeniedError
from vigil.platform.keyvault import KeyKind, ReleasedKey, WrappedKey
from vigil.platform.local import release as rel
from vigil.platform.local.keystore import KeyStore
from vigil.platform.local.policy import evaluate, policy_hash

NONCE_SIZE: Final = 12


@dataclass(frozen=True, slots=True)
class Release:
    """A granted release: the wrapped key, and the fingerprint of the recipient it is wrapped to."""

    key: ReleasedKey
    recipient: str

    def __repr__(self) -> str:
        key, version = self.key.key_name, self.key.version
        return f"Release(key={key!r}, version={version!r}, recipient={self.recipient!r})"


def release_key(
    store: KeyStore,
    verifier: TokenVerifier | None,
    name: str,
    attestation_token: str,
    recipient_public_key: bytes,
    details: dict[str, Any],
) -> Release:
    """Key ``name`` wrapped to ``recipient_public_key`` when ``attestation_token`` satisfies its release
    policy (see module docstring); fills in ``details`` as it goes, and raises on any refusal."""
    key = store.usable(name)
    if not key.exportable:
        raise ConflictError(f"key {name!r} is not exportable")
    if key.policy is None:
        raise ConflictError(f"key {name!r} has no release policy")
    _, current = store.current(name, KeyKind.AES256, "release")
    details.update(version=current.version, policy_hash=policy_hash(key.policy))
    if verifier is None:
        raise ReleaseDeniedError("no attestation verifier is configured")
    verified = verifier.verify(attestation_token)
    jti = verified.claims.get("jti")
    details.update(issuer=verified.issuer, jti=jti if isinstance(jti, str) else None)
    reason = evaluate(key.policy, verified.issuer, verified.claims)
    if reason is not None:
        raise ReleaseDeniedError(reason)
    recipient = rel.attested_recipient(verified.claims, recipient_public_key)
    wrapped = rel.wrap_for_recipient(store.material(current), recipient_public_key)
    released = ReleasedKey(name, current.version, rel.ALGORITHM, wrapped)
    return Release(released, rel.key_fingerprint(recipient))


def wrap_with_material(material: bytes, key_name: str, version: str, data_key: bytes) -> WrappedKey:
    """``data_key`` wrapped with AES-256-GCM under a version's material: ``nonce ‖ ciphertext+tag``, the
    associated data binding key name and version, so a WrappedKey relabelled to another version fails."""
    nonce = os.urandom(NONCE_SIZE)
    body = AESGCM(material).encrypt(nonce, data_key, _wrap_aad(key_name, version))
    return WrappedKey(key_name, version, nonce + body)


def unwrap_with_material(material: bytes, wrapped: WrappedKey) -> bytes:
    """The data key inside ``wrapped``, given the version's material: what a training node does with a key
    the vault released to it. IntegrityError when the material is not that version's or the data changed."""
    blob = wrapped.ciphertext
    try:
        return AESGCM(material).decrypt(
            blob[:NONCE_SIZE], blob[NONCE_SIZE:], _wrap_aad(wrapped.key_name, wrapped.version)
        )
    except (InvalidTag, ValueError):
        raise IntegrityError(
            f"wrapped key for {wrapped.key_name!r} version {wrapped.version} failed its authentication check"
        ) from None


def _wrap_aad(key_name: str, version: str) -> bytes:
    return f"vigil.keyvault.wrap.v1/{key_name}/{version}".encode()
