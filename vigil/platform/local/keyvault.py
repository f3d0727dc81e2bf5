"""The local key vault: :class:`~vigil.platform.keyvault.KeyVault` over one SQLite database.

The vault decides and records; two modules beside it do the rest. :mod:`.keystore` owns the database:
its schema (``keys``, ``versions``, ``meta``), the row types, and reads and writes that check and compute
each row's master-key tag, so a release policy relaxed or a disabled version re-enabled by writing to the
file is an IntegrityError, not a release; a wrong master key fails when the vault opens. :mod:`.releaser`
owns Secure Key Release (token verification, policy evaluation, recipient check, wrap) and the data-key
wrap format a released key is used with. Grants and suspensions are :mod:`.access`'s. This module keeps
the access checks, the events and the transactions, and re-exports the names callers import from it.

Keys: ``aes256`` versions hold 32 random bytes, ``ed25519`` versions a private key (the public key is
published). Version ids are 32 random hex digits; versions are ordered by a per-key sequence, and *current*
is the newest enabled one. ``wrap`` is AES-256-GCM under the current version (:func:`wrap_with_material`);
``unwrap`` uses the version the :class:`WrappedKey` names, so data wrapped before a rotation stays
readable until that version is disabled. ``hmac`` uses a subkey derived from the version (HKDF, label
``vigil.keyvault.hmac.v1``) so that one key never serves two algorithms.

Events: every change (create, rotate, enable/disable, set_policy, delete, recover, purge, grant, revoke,
suspend/restore) and every release, granted or refused, awaits ``observer.record`` before the change is
committed; when the audit log cannot be written, nothing changes. A change that the access policy refuses
is recorded with ``outcome="denied"``, as is a refused purge. ``wrap``, ``unwrap``, ``sign`` and ``hmac``
are not events: a training job unwraps a data key per shard and the audit log signs each checkpoint, so
they would drown the record, and they change nothing.

Concurrency: SQLite and the crypto here take microseconds (no key derivation, no network), so they run
directly on the event loop, without threads. A change holds an asyncio lock and a ``BEGIN IMMEDIATE``
transaction across the observer's await, and writes only after the event is recorded, so checking,
recording and writing are atomic against other coroutines and other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vigil.platform.attestation import TokenVerifier
from vigil.platform.errors import (
    AlreadyExistsError,
    ConflictError,
    DisabledError,
    ForbiddenError,
    InvalidError,
    PlatformError,
    ReleaseDeniedError,
)
from vigil.platform.events import NullObserver, PlatformEvent, PlatformObserver
from vigil.platform.keyvault import KeyInfo, KeyKind, KeyOp, KeyVersion, ReleasedKey, Signature, WrappedKey
from vigil.platform.local.access import ALL_KEYS, AccessPolicy, check_principal
from vigil.platform.local.keystore import (
    KEY_NAME,
    SCHEMA_VERSION,
    KeyRow,
    KeyStore,
    check_kind,
    check_name,
    check_policy,
    check_tags,
    connect,
    current_or_none,
)
from vigil.platform.local.masterkey import MasterKey
from vigil.platform.local.policy import policy_hash
from vigil.platform.local.releaser import NONCE_SIZE, release_key, unwrap_with_material, wrap_with_material

__all__ = [
    "KEY_NAME",
    "MAX_DATA_KEY",
    "NONCE_SIZE",
    "SCHEMA_VERSION",
    "LocalKeyVault",
    "unwrap_with_material",
    "wrap_with_material",
]

log = logging.getLogger(__name__)

MAX_DATA_KEY: Final = 1024


class _Change:
    """One change in progress: the event it records, and whether the observer has been asked yet."""

    def __init__(self, observer: PlatformObserver, kind: str, principal: str, subject: str) -> None:
        self.observer, self.kind, self.principal, self.subject = observer, kind, principal, subject
        self.details: dict[str, Any] = {}
        self.recorded = False

    async def record(self, outcome: str = "success", **details: Any) -> None:
        self.details.update(details)
        self.recorded = True
        kind = f"platform.key.{self.kind}"
        event = PlatformEvent(kind, self.principal, self.subject, dict(self.details), outcome)
        await self.observer.record(event)


class LocalKeyVault:
    """The local key vault (see module docstring); one instance per database file and event loop."""

    def __init__(
        self,
        path: Path,
        master: MasterKey,
        *,
        verifier: TokenVerifier | None = None,
        observer: PlatformObserver | None = None,
        admins: Iterable[str] = ("vigil",),
        soft_delete_days: float = 90.0,
        purge_protection: bool = True,
    ) -> None:
        if soft_delete_days < 0:
            raise ValueError("soft_delete_days must not be negative")
        self._path = Path(path)
        self._master = master
        self._verifier = verifier
        self._observer: PlatformObserver = observer or NullObserver()
        self._retention = soft_delete_days * 86400.0
        self._purge_protection = purge_protection
        self._lock = asyncio.Lock()
        self._db = connect(self._path)
        try:
            self._store = KeyStore(self._db, master, self._path)
            self._access = AccessPolicy(self._db, master, admins)
            self._store.check_master()
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def __repr__(self) -> str:
        return f"LocalKeyVault(path={str(self._path)!r}, admins={sorted(self._access.admins)!r})"

    # --- keys ---------------------------------------------------------------------------------------------

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
        store = self._store
        async with self._change("create", principal, name) as change:
            self._access.check(principal, KeyOp.CREATE, name)
            kind = check_kind(kind)
            check_name(name)
            policy = check_policy(release_policy)
            if exportable and kind is not KeyKind.AES256:
                raise InvalidError("only aes256 keys can be exportable: a signing key never leaves the vault")
            existing = store.key(name)
            if existing is not None:
                if existing.deleted is not None:
                    raise AlreadyExistsError(f"key {name!r} is soft-deleted: recover or purge it first")
                raise AlreadyExistsError(f"key {name!r} already exists")
            key = KeyRow(name, kind, exportable, policy, check_tags(tags), time.time())
            version = store.new_version(key, seq=1)
            await change.record(
                version=version.version,
                kind=kind.value,
                exportable=exportable,
                policy_hash=policy and policy_hash(policy),
            )
            store.put_key(key)
            store.put_version(version)
        return store.info(store.existing(name))

    async def get_key(self, principal: str, name: str) -> KeyInfo:
        self._access.check(principal, KeyOp.READ, name)
        return self._store.info(self._store.existing(name))

    async def list_keys(self, principal: str, *, include_deleted: bool = False) -> list[KeyInfo]:
        """The keys ``principal`` may read (a filter, not a refusal); ForbiddenError only when suspended."""
        self._access.refuse_suspended(principal)
        keys = [key for key in self._store.all_keys() if include_deleted or key.deleted is None]
        return [self._store.info(k) for k in keys if self._access.allows(principal, KeyOp.READ, k.name)]

    async def rotate_key(self, principal: str, name: str) -> KeyVersion:
        store = self._store
        async with self._change("rotate", principal, name) as change:
            self._access.check(principal, KeyOp.ROTATE, name)
            key = store.changeable(name)
            versions = store.versions(name)
            new = store.new_version(key, seq=versions[-1].seq + 1 if versions else 1)
            previous = current_or_none(versions)
            await change.record(version=new.version, previous=previous and previous.version)
            store.put_version(new)
        return new.public(key.kind)

    async def set_version_enabled(self, principal: str, name: str, version: str, enabled: bool) -> KeyVersion:
        async with self._change("enable" if enabled else "disable", principal, name) as change:
            self._access.check(principal, KeyOp.UPDATE, name)
            key = self._store.changeable(name)
            row = self._store.version(name, version)
            updated = dataclasses.replace(row, enabled=bool(enabled))
            if row.enabled != updated.enabled:
                await change.record(version=version)
                self._store.put_version(updated)
        return updated.public(key.kind)

    async def set_release_policy(self, principal: str, name: str, policy: dict[str, Any] | None) -> KeyInfo:
        async with self._change("set_policy", principal, name) as change:
            self._access.check(principal, KeyOp.UPDATE, name)
            key = self._store.changeable(name)
            checked = check_policy(policy)
            await change.record(
                policy_hash=checked and policy_hash(checked),
                previous_policy_hash=key.policy and policy_hash(key.policy),
            )
            self._store.put_key(dataclasses.replace(key, policy=checked))
        return self._store.info(self._store.existing(name))

    async def delete_key(self, principal: str, name: str) -> KeyInfo:
        async with self._change("delete", principal, name) as change:
            self._access.check(principal, KeyOp.DELETE, name)
            key = self._store.changeable(name)
            current = current_or_none(self._store.versions(name))
            await change.record(version=current and current.version)
            self._store.put_key(dataclasses.replace(key, deleted=time.time()))
        return self._store.info(self._store.existing(name))

    async def recover_key(self, principal: str, name: str) -> KeyInfo:
        async with self._change("recover", principal, name) as change:
            self._access.check(principal, KeyOp.DELETE, name)
            key = self._store.existing(name)
            if key.deleted is None:
                raise ConflictError(f"key {name!r} is not deleted")
            current = current_or_none(self._store.versions(name))
            await change.record(version=current and current.version, deleted=key.deleted)
            self._store.put_key(dataclasses.replace(key, deleted=None))
        return self._store.info(self._store.existing(name))

    async def purge_key(self, principal: str, name: str) -> None:
        async with self._change("purge", principal, name, denied=(ForbiddenError, ConflictError)) as change:
            self._access.check(principal, KeyOp.PURGE, name)
            key = self._store.existing(name)
            if key.deleted is None:
                raise ConflictError(f"key {name!r} is not deleted: delete it before purging it")
            allowed_from = key.deleted + self._retention
            if self._purge_protection and time.time() < allowed_from:
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(allowed_from))
                raise ConflictError(f"purge protection is on: key {name!r} cannot be purged before {when}")
            versions = self._store.versions(name)
            await change.record(versions=[v.version for v in versions], deleted=key.deleted)
            self._store.delete_key(name)
            self._access.drop_key(name)

    # --- cryptography (not events: see module docstring) -----------------------------------------------

    async def wrap(self, principal: str, name: str, data_key: bytes) -> WrappedKey:
        self._access.check(principal, KeyOp.WRAP, name)
        if not 1 <= len(data_key) <= MAX_DATA_KEY:
            raise InvalidError(f"a data key is 1 to {MAX_DATA_KEY} bytes")
        _, current = self._store.current(name, KeyKind.AES256, "wrap")
        return wrap_with_material(self._store.material(current), name, current.version, data_key)

    async def unwrap(self, principal: str, wrapped: WrappedKey) -> bytes:
        name = wrapped.key_name
        self._access.check(principal, KeyOp.UNWRAP, name)
        key = self._store.usable(name)
        if key.kind is not KeyKind.AES256:
            raise ConflictError(f"key {name!r} is {key.kind.value}: unwrap needs an aes256 key")
        row = self._store.version(name, wrapped.version)
        if not row.enabled:
            raise DisabledError(f"key {name!r} version {row.version} is disabled")
        return unwrap_with_material(self._store.material(row), wrapped)

    async def sign(self, principal: str, name: str, data: bytes) -> Signature:
        self._access.check(principal, KeyOp.SIGN, name)
        _, current = self._store.current(name, KeyKind.ED25519, "sign")
        value = Ed25519PrivateKey.from_private_bytes(self._store.material(current)).sign(data)
        return Signature(name, current.version, "Ed25519", value)

    async def hmac(self, principal: str, name: str, data: bytes, version: str | None = None) -> bytes:
        self._access.check(principal, KeyOp.SIGN, name)
        _, row = self._store.current(name, KeyKind.AES256, "hmac")
        if version is not None and version != row.version:
            row = self._store.version(name, version)
            if not row.enabled:
                raise DisabledError(f"key {name!r} version {row.version} is disabled")
        subkey = HKDF(hashes.SHA256(), 32, salt=None, info=b"vigil.keyvault.hmac.v1").derive(
            self._store.material(row)
        )
        mac = crypto_hmac.HMAC(subkey, hashes.SHA256())
        mac.update(data)
        return mac.finalize()

    async def release(
        self, principal: str, name: str, attestation_token: str, recipient_public_key: bytes
    ) -> ReleasedKey:
        """Secure Key Release (see :mod:`.releaser`); every outcome is an event, refusals included."""
        async with self._change("release", principal, name, denied=(PlatformError,)) as change:
            self._access.check(principal, KeyOp.RELEASE, name)
            granted = release_key(
                self._store, self._verifier, name, attestation_token, recipient_public_key, change.details
            )
            await change.record(recipient=granted.recipient)
        return granted.key

    # --- access policy ------------------------------------------------------------------------------------

    async def grant(self, principal: str, grantee: str, key_name: str, ops: set[KeyOp]) -> None:
        async with self._change("grant", principal, key_name) as change:
            self._access.check(principal, KeyOp.ADMIN, key_name)
            check_principal(grantee, "grantee")
            if key_name != ALL_KEYS:
                check_name(key_name)
            new = _ops(ops) - self._access.ops(grantee, key_name)
            if new:
                await change.record(grantee=grantee, ops=sorted(op.value for op in new))
                self._access.insert(grantee, key_name, new)

    async def revoke(
        self, principal: str, grantee: str, key_name: str, ops: set[KeyOp] | None = None
    ) -> None:
        async with self._change("revoke", principal, key_name) as change:
            self._access.check(principal, KeyOp.ADMIN, key_name)
            held = self._access.ops(grantee, key_name)
            gone = held if ops is None else held & _ops(ops)
            if gone:
                await change.record(grantee=grantee, ops=sorted(op.value for op in gone))
                self._access.delete(grantee, key_name, gone)

    async def set_suspended(self, principal: str, grantee: str, suspended: bool, *, reason: str = "") -> None:
        async with self._change("suspend" if suspended else "restore", principal, grantee) as change:
            self._access.check(principal, KeyOp.ADMIN, ALL_KEYS)
            check_principal(grantee, "grantee")
            if suspended and grantee == principal:
                raise ConflictError(f"principal {principal!r} cannot suspend itself")
            if (self._access.suspension(grantee) is not None) != suspended:
                await change.record(reason=reason)
                if suspended:
                    self._access.suspend(grantee, reason, time.time())
                else:
                    self._access.restore(grantee)

    # --- transactions -------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _change(
        self,
        kind: str,
        principal: str,
        subject: str,
        denied: tuple[type[PlatformError], ...] = (ForbiddenError,),
    ) -> AsyncIterator[_Change]:
        """Lock, ``BEGIN IMMEDIATE``, run the body (which records its event before writing), commit;
        roll back on any exception. A refusal of type ``denied`` is recorded as a denied event first."""
        change = _Change(self._observer, kind, principal, subject)
        async with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                try:
                    yield change
                except denied as exc:
                    if not change.recorded:
                        reason = exc.reason if isinstance(exc, ReleaseDeniedError) else str(exc)
                        log.warning("refused %s of %r for %r: %s", kind, subject, principal, reason)
                        await change.record("denied", reason=reason)
                    raise
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        if change.recorded:
            log.info("%s of %r by %r: %s", kind, subject, principal, change.details)


def _ops(ops: Iterable[KeyOp | str]) -> set[KeyOp]:
    try:
        found = {KeyOp(op) for op in ops}
    except ValueError:
        raise InvalidError(f"operations are {', '.join(op.value for op in KeyOp)}") from None
    if not found:
        raise InvalidError("name at least one operation")
    return found
