"""Key Vault SDK models to and from the platform's key dataclasses, and the wire forms Vigil reads.

Kept apart from :mod:`.keyvault` so that the provider reads as the sequence of calls it makes, and so the
conversions (pure functions, no I/O) can be checked on their own. Three things here are decisions, not
plain copying:

* **Version order and current.** Key Vault timestamps have one-second resolution; versions are ordered by
  ``created`` and, within a second, as the service listed them. *Current* is the newest enabled version.
* **"Release to nobody".** Azure cannot remove the release policy of an exportable key, and the policy
  grammar has no "never" (``../shared/reference/azure.md`` §4.5). :func:`no_release_policy` builds a
  policy that keeps the current authorities but requires the claim ``x-vigil-release`` to equal
  ``"disabled"`` in every alternative, which no attestation service issues; :func:`key_info` reports such
  a policy as None, so a remediator that set None reads None back.
* **Released material.** ``release_key`` returns a JWS whose payload holds the exported key under
  ``response.key.key.key_hsm``: base64url JSON ``{"schema_version", "header": {"alg": "dir", "enc", "kid"},
  "ciphertext", "generator"}``, ``ciphertext`` being the ``RSA_AES_KEY_WRAP_256`` blob (shape observed in
  Microsoft's SKR samples; not checked against a live vault). A ``key_hsm`` that is not that JSON is taken
  as the blob itself.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from typing import Any, Final

import jwt
from azure.keyvault.keys import (
    KeyProperties,
    KeyReleasePolicy,
    KeyRotationLifetimeAction,
    KeyRotationPolicy,
    KeyRotationPolicyAction,
    KeyVaultKey,
)

from vigil.platform.attestation import TokenVerifier
from vigil.platform.errors import IntegrityError, InvalidError, ReleaseDeniedError
from vigil.platform.keyvault import KeyInfo, KeyKind, KeyVersion
from vigil.platform.local.keystore import check_policy

NO_RELEASE_CLAIM: Final = "x-vigil-release"
NO_RELEASE_VALUE: Final = "disabled"
#: the authority of a "release to nobody" policy when the key had none to keep
NO_RELEASE_AUTHORITY: Final = "https://release-disabled.vigil.invalid"
POLICY_CONTENT_TYPE: Final = "application/json; charset=utf-8"
_ED25519_TYPES: Final = frozenset({"OKP", "OKP-HSM"})

_KV: Final = "Microsoft.KeyVault/vaults/"
#: the Key Vault data actions each operation needs (RBAC-mode vault); for the docs' least-privilege roles
RBAC_ACTIONS: Final = {
    "get_key": (_KV + "keys/read",),
    "list_keys": (_KV + "keys/read",),
    "create_key": (_KV + "keys/read", _KV + "keys/create/action"),
    "rotate_key": (_KV + "keys/read", _KV + "keys/rotate/action"),
    "set_version_enabled": (_KV + "keys/update/action",),
    "set_release_policy": (_KV + "keys/read", _KV + "keys/update/action"),
    "get_rotation_policy": (_KV + "keyrotationpolicies/read",),
    "set_rotation_policy": (_KV + "keyrotationpolicies/write",),
    "wrap": (_KV + "keys/read", _KV + "keys/wrap/action"),
    "unwrap": (_KV + "keys/unwrap/action",),
    "release": (_KV + "keys/read", _KV + "keys/release/action"),
}


def sort_key(props: KeyProperties) -> float:
    created = props.created_on
    return created.timestamp() if created is not None else 0.0


def version_of(name: str, props: KeyProperties) -> KeyVersion:
    """The platform's view of one version (the key type is not in a version listing: see :func:`key_info`)."""
    return KeyVersion(
        name=name,
        version=props.version or "",
        kind=KeyKind.AES256,
        enabled=bool(props.enabled),
        created=sort_key(props),
    )


def current_version(versions: Sequence[KeyVersion]) -> KeyVersion | None:
    """The newest enabled version of ``versions`` (oldest first), or None when all are disabled."""
    return next((v for v in reversed(versions) if v.enabled), None)


def key_info(name: str, versions: Sequence[KeyVersion], bundle: KeyVaultKey | None) -> KeyInfo:
    """A :class:`KeyInfo` from the ordered versions and the current version's bundle (None when no version
    is enabled: the type, exportability and policy are then unknown and reported as aes256, False, None)."""
    kind = KeyKind.AES256
    exportable, policy, tags = False, None, {}
    if bundle is not None:
        key_type = str(getattr(bundle.key_type, "value", bundle.key_type))
        kind = KeyKind.ED25519 if key_type in _ED25519_TYPES else KeyKind.AES256
        versions = [KeyVersion(v.name, v.version, kind, v.enabled, v.created, v.public_key) for v in versions]
        exportable = bool(bundle.properties.exportable)
        policy = decode_policy(bundle.properties.release_policy)
        if policy is not None and is_no_release(policy):
            policy = None
        tags = dict(bundle.properties.tags or {})
    current = current_version(versions)
    return KeyInfo(
        name=name,
        kind=kind,
        current=current.version if current else None,
        versions=tuple(versions),
        exportable=exportable,
        release_policy=policy,
        tags=tags,
    )


def encode_policy(policy: dict[str, Any]) -> KeyReleasePolicy:
    """The SDK form of a (validated) release policy; never immutable: Vigil must be able to tighten it."""
    data = json.dumps(policy, separators=(",", ":"), sort_keys=True).encode()
    return KeyReleasePolicy(data, content_type=POLICY_CONTENT_TYPE, immutable=False)


def decode_policy(policy: KeyReleasePolicy | None) -> dict[str, Any] | None:
    if policy is None or not policy.encoded_policy:
        return None
    try:
        value = json.loads(policy.encoded_policy)
    except (ValueError, UnicodeDecodeError):
        raise IntegrityError("the key's release policy is not JSON") from None
    if not isinstance(value, dict):
        raise IntegrityError("the key's release policy is not a JSON object")
    return value


def no_release_policy(current: dict[str, Any] | None) -> dict[str, Any]:
    """A policy no token satisfies, keeping the authorities of ``current`` (module docstring)."""
    found = [
        a["authority"]
        for a in (current or {}).get("anyOf", [])
        if isinstance(a, dict) and isinstance(a.get("authority"), str)
    ]
    authorities = list(dict.fromkeys(found)) or [NO_RELEASE_AUTHORITY]
    never = {"claim": NO_RELEASE_CLAIM, "equals": NO_RELEASE_VALUE}
    return {"version": "1.0.0", "anyOf": [{"authority": a, "allOf": [never]} for a in authorities]}


def is_no_release(policy: dict[str, Any]) -> bool:
    """Whether every alternative of ``policy`` requires the ``x-vigil-release`` claim (released to nobody)."""
    alternatives = policy.get("anyOf")
    if not isinstance(alternatives, list) or not alternatives:
        return False
    never = {"claim": NO_RELEASE_CLAIM, "equals": NO_RELEASE_VALUE}
    return all(isinstance(a, dict) and never in (a.get("allOf") or []) for a in alternatives)


def released_material(jws: str) -> bytes:
    """The wrapped key material in a release result (module docstring); IntegrityError when absent."""
    try:
        payload = json.loads(_unb64u(jws.split(".")[1]))
        key_hsm = payload["response"]["key"]["key"]["key_hsm"]
        raw = _unb64u(key_hsm)
    except (IndexError, KeyError, TypeError, ValueError, binascii.Error):
        raise IntegrityError("the release result carries no key_hsm") from None
    try:
        inner = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return raw
    if isinstance(inner, dict) and isinstance(inner.get("ciphertext"), str):
        try:
            return _unb64u(inner["ciphertext"])
        except (ValueError, binascii.Error):
            raise IntegrityError("the release result's ciphertext is not base64url") from None
    raise IntegrityError("the release result's key_hsm has no ciphertext")


def rotation_policy_json(policy: KeyRotationPolicy) -> dict[str, Any]:
    """Key Vault's wire form of a rotation policy (``lifetimeActions``, ``attributes.expiryTime``)."""
    actions = []
    for action in policy.lifetime_actions:
        trigger = {
            k: v
            for k, v in (
                ("timeAfterCreate", action.time_after_create),
                ("timeBeforeExpiry", action.time_before_expiry),
            )
            if v
        }
        kind = str(getattr(action.action, "value", action.action))
        actions.append({"trigger": trigger, "action": {"type": kind}})
    attributes = {"expiryTime": policy.expires_in} if policy.expires_in else {}
    return {"lifetimeActions": actions, "attributes": attributes}


def build_rotation_policy(
    rotate_after_create: str | None, notify_before_expiry: str | None, expires_in: str | None
) -> KeyRotationPolicy:
    """An SDK rotation policy: rotate ``rotate_after_create`` after a version is made, notify (Event
    Grid ``KeyNearExpiry``) ``notify_before_expiry`` before expiry; versions expire after ``expires_in``."""
    actions = []
    if rotate_after_create:
        rotate = KeyRotationPolicyAction.rotate
        actions.append(KeyRotationLifetimeAction(rotate, time_after_create=rotate_after_create))
    if notify_before_expiry:
        notify = KeyRotationPolicyAction.notify
        actions.append(KeyRotationLifetimeAction(notify, time_before_expiry=notify_before_expiry))
    return KeyRotationPolicy(lifetime_actions=actions, expires_in=expires_in)


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64u(text: str) -> bytes:
    if not isinstance(text, str):
        raise TypeError("not a string")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def checked_policy(policy: dict[str, Any]) -> dict[str, Any]:
    """A release policy as the local vault would accept it (same checks, same error)."""
    checked = check_policy(policy)
    assert checked is not None
    return checked


def unsupported(what: str, instead: str) -> InvalidError:
    return InvalidError(f"{what} is not supported by the Azure Key Vault adapter: {instead}")


def token_claims(verifier: TokenVerifier | None, token: str) -> dict[str, Any]:
    """The claims of a release's attestation token: verified when a verifier is configured, else only
    decoded (Azure evaluates the release policy against the token itself)."""
    if verifier is not None:
        return dict(verifier.verify(token).claims)
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except (jwt.InvalidTokenError, TypeError):
        raise ReleaseDeniedError("malformed token") from None
    return claims


def key_name(target: str) -> str:
    """A key's name from its name or its identifier URI (``https://VAULT.vault.azure.net/keys/NAME[/VERSION]``,
    what Key Vault logs carry): the rules' targets may be either."""
    if target.startswith("https://") and "/keys/" in target:
        return target.split("/keys/", 1)[1].split("/", 1)[0]
    return target
