"""The JSON shapes of the platform's public dataclasses on the wire, written once for service and client.

The service (:mod:`vigil.platform.service`) encodes what a provider returns with the ``*_json``
functions and the client (:mod:`vigil.platform.client`) decodes it with the matching ``*_from``
functions, so the two cannot drift apart field by field; ``tests/platform`` round-trips every shape.

Conventions: binary values (public keys, wrapped keys, signatures, MACs) are base64url without padding
(:func:`b64e`/:func:`b64d`), as in JWTs and :meth:`~vigil.platform.keyvault.WrappedKey.to_json`; enums are
their string values; times are float Unix seconds; sets are sorted lists. None of these shapes can carry
key material: they are built from the public dataclasses only, and the ones that carry secrets on purpose
(unwrapped data keys, released keys) are encoded by their own routes.

A malformed document from the server raises :class:`~vigil.platform.errors.PlatformError` (a version
mismatch or a proxy's error page), never a bare KeyError.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, TypeVar

from vigil.platform.compute import Node, NodeState
from vigil.platform.errors import PlatformError
from vigil.platform.keyvault import KeyInfo, KeyKind, KeyVersion, ReleasedKey, Signature, WrappedKey
from vigil.platform.storage import ContainerInfo, Lock, ObjectInfo, StorageOp

T = TypeVar("T")


def b64e(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64d(text: str) -> bytes:
    """Decode base64url with or without padding; ValueError (without the input) when it is not."""
    if not isinstance(text, str):
        raise ValueError("expected base64url text")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64url") from None


# -- key vault ---------------------------------------------------------------------------------------------


def key_version_json(v: KeyVersion) -> dict[str, Any]:
    return {
        "name": v.name,
        "version": v.version,
        "kind": v.kind.value,
        "enabled": v.enabled,
        "created": v.created,
        "public_key": None if v.public_key is None else b64e(v.public_key),
    }


def key_info_json(k: KeyInfo) -> dict[str, Any]:
    return {
        "name": k.name,
        "kind": k.kind.value,
        "current": k.current,
        "versions": [key_version_json(v) for v in k.versions],
        "exportable": k.exportable,
        "release_policy": k.release_policy,
        "deleted": k.deleted,
        "tags": dict(k.tags),
    }


def signature_json(s: Signature) -> dict[str, Any]:
    return {"key": s.key_name, "version": s.version, "algorithm": s.algorithm, "value": b64e(s.value)}


def released_key_json(r: ReleasedKey) -> dict[str, Any]:
    return {"key": r.key_name, "version": r.version, "algorithm": r.algorithm, "wrapped": b64e(r.wrapped)}


def key_version_from(d: Any) -> KeyVersion:
    return _decode(
        d,
        lambda: KeyVersion(
            name=str(d["name"]),
            version=str(d["version"]),
            kind=KeyKind(d["kind"]),
            enabled=bool(d["enabled"]),
            created=float(d["created"]),
            public_key=None if d.get("public_key") is None else b64d(d["public_key"]),
        ),
    )


def key_info_from(d: Any) -> KeyInfo:
    return _decode(
        d,
        lambda: KeyInfo(
            name=str(d["name"]),
            kind=KeyKind(d["kind"]),
            current=None if d["current"] is None else str(d["current"]),
            versions=tuple(key_version_from(v) for v in d["versions"]),
            exportable=bool(d["exportable"]),
            release_policy=_dict_or_none(d["release_policy"]),
            deleted=None if d.get("deleted") is None else float(d["deleted"]),
            tags=_str_map(d.get("tags") or {}),
        ),
    )


def wrapped_key_from(d: Any) -> WrappedKey:
    return _decode(d, lambda: WrappedKey.from_json(d))


def signature_from(d: Any) -> Signature:
    return _decode(
        d, lambda: Signature(str(d["key"]), str(d["version"]), str(d["algorithm"]), b64d(d["value"]))
    )


def released_key_from(d: Any) -> ReleasedKey:
    return _decode(
        d, lambda: ReleasedKey(str(d["key"]), str(d["version"]), str(d["algorithm"]), b64d(d["wrapped"]))
    )


# -- storage -----------------------------------------------------------------------------------------------


def container_json(c: ContainerInfo) -> dict[str, Any]:
    return {
        "name": c.name,
        "key_name": c.key_name,
        "lock": c.lock.value,
        "public_read": c.public_read,
        "access": {p: sorted(op.value for op in ops) for p, ops in sorted(c.access.items())},
        "created": c.created,
    }


def object_json(o: ObjectInfo) -> dict[str, Any]:
    return {
        "container": o.container,
        "name": o.name,
        "size": o.size,
        "chunk_size": o.chunk_size,
        "key_version": o.key_version,
        "created": o.created,
        "metadata": dict(o.metadata),
    }


def container_from(d: Any) -> ContainerInfo:
    return _decode(
        d,
        lambda: ContainerInfo(
            name=str(d["name"]),
            key_name=str(d["key_name"]),
            lock=Lock(d["lock"]),
            public_read=bool(d["public_read"]),
            access={str(p): frozenset(StorageOp(op) for op in ops) for p, ops in d["access"].items()},
            created=float(d["created"]),
        ),
    )


def object_from(d: Any) -> ObjectInfo:
    return _decode(
        d,
        lambda: ObjectInfo(
            container=str(d["container"]),
            name=str(d["name"]),
            size=int(d["size"]),
            chunk_size=int(d["chunk_size"]),
            key_version=str(d["key_version"]),
            created=float(d["created"]),
            metadata=_str_map(d.get("metadata") or {}),
        ),
    )


# -- compute -----------------------------------------------------------------------------------------------


def node_json(n: Node) -> dict[str, Any]:
    return {
        "id": n.id,
        "principal": n.principal,
        "measurement": n.measurement,
        "state": n.state.value,
        "updated": n.updated,
        "control_url": n.control_url,
        "quarantine": dict(n.quarantine),
        "labels": dict(n.labels),
    }


def node_from(d: Any) -> Node:
    return _decode(
        d,
        lambda: Node(
            id=str(d["id"]),
            principal=str(d["principal"]),
            measurement=str(d["measurement"]),
            state=NodeState(d["state"]),
            updated=float(d["updated"]),
            control_url=str(d.get("control_url", "")),
            quarantine=_dict_or_none(d.get("quarantine")) or {},
            labels=_str_map(d.get("labels") or {}),
        ),
    )


# -- helpers -----------------------------------------------------------------------------------------------


def _decode(d: Any, build: Callable[[], T]) -> T:
    """``build()``, with any shape error turned into a PlatformError that names no value."""
    if not isinstance(d, dict):
        raise PlatformError("malformed answer from the platform service: expected an object")
    try:
        return build()
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        what = f"missing field {exc}" if isinstance(exc, KeyError) else type(exc).__name__
        raise PlatformError(f"malformed answer from the platform service: {what}") from None


def _str_map(d: Any) -> dict[str, str]:
    if not isinstance(d, dict):
        raise TypeError("expected an object")
    return {str(k): str(v) for k, v in d.items()}


def _dict_or_none(d: Any) -> dict[str, Any] | None:
    if d is None:
        return None
    if not isinstance(d, dict):
        raise TypeError("expected an object")
    return d
