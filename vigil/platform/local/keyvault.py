"""The local key vault: :class:`~vigil.platform.keyvault.KeyVault` over one SQLite database.

Storage: one SQLite file (WAL, ``synchronous=FULL``: a change the caller saw succeed survives power loss),
created with mode 0600. ``keys`` holds name, kind, exportable, release policy, tags and soft-delete time;
``versions`` one row per version, its material sealed by the :class:`MasterKey` with associated data
``"<name>/<version>"`` (a sealed blob moved onto another row does not open); ``grants`` and
``suspensions`` belong to :mod:`.access`; ``meta`` holds the schema version and a sealed check value, so a
wrong master key or passphrase fails when the vault opens rather than at the first unwrap. Every row a
decision depends on carries a master-key tag: a release policy relaxed or a disabled version re-enabled by
writing to the file is an IntegrityError, not a release.

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
import json
import logging
import os
import re
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vigil.platform.attestation import TokenVerifier
from vigil.platform.errors import (
    AlreadyExistsError,
    ConflictError,
    DisabledError,
    ForbiddenError,
    IntegrityError,
    InvalidError,
    NotFoundError,
    PlatformError,
    ReleaseDeniedError,
)
from vigil.platform.events import NullObserver, PlatformEvent, PlatformObserver
from vigil.platform.keyvault import KeyInfo, KeyKind, KeyOp, KeyVersion, ReleasedKey, Signature, WrappedKey
from vigil.platform.local import release as rel
from vigil.platform.local.access import ALL_KEYS, AccessPolicy, check_principal
from vigil.platform.local.masterkey import MasterKey
from vigil.platform.local.policy import evaluate, policy_hash, validate_policy

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
NONCE_SIZE: Final = 12
MAX_DATA_KEY: Final = 1024
KEY_NAME: Final = re.compile(r"[0-9A-Za-z-]{1,127}")  # Azure Key Vault's rule: no "/", never "*"
_CHECK_AAD: Final = b"vigil.keyvault.master-check.v1"
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    name TEXT PRIMARY KEY, kind TEXT NOT NULL, exportable INTEGER NOT NULL, policy TEXT,
    tags TEXT NOT NULL, created REAL NOT NULL, deleted REAL, tag BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL, version TEXT NOT NULL, seq INTEGER NOT NULL, created REAL NOT NULL,
    enabled INTEGER NOT NULL, public_key BLOB, sealed BLOB NOT NULL, tag BLOB NOT NULL,
    PRIMARY KEY (name, version), UNIQUE (name, seq));
"""


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


@dataclass(frozen=True, slots=True)
class _Key:
    name: str
    kind: KeyKind
    exportable: bool
    policy: dict[str, Any] | None
    tags: dict[str, str]
    created: float
    deleted: float | None = None


@dataclass(frozen=True, slots=True)
class _Version:
    name: str
    version: str
    seq: int
    created: float
    enabled: bool
    public_key: bytes | None
    sealed: bytes

    def public(self, kind: KeyKind) -> KeyVersion:
        return KeyVersion(self.name, self.version, kind, self.enabled, self.created, self.public_key)


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
        self._db = _connect(self._path)
        try:
            self._db.executescript(_SCHEMA)
            self._access = AccessPolicy(self._db, master, admins)
            self._check_master()
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
        async with self._change("create", principal, name) as change:
            self._access.check(principal, KeyOp.CREATE, name)
            kind = _kind(kind)
            _check_name(name)
            policy = _policy(release_policy)
            if exportable and kind is not KeyKind.AES256:
                raise InvalidError("only aes256 keys can be exportable: a signing key never leaves the vault")
            existing = self._key(name)
            if existing is not None:
                if existing.deleted is not None:
                    raise AlreadyExistsError(f"key {name!r} is soft-deleted: recover or purge it first")
                raise AlreadyExistsError(f"key {name!r} already exists")
            key = _Key(name, kind, exportable, policy, _check_tags(tags), time.time())
            version = _new_version(self._master, key, seq=1)
            await change.record(
                version=version.version,
                kind=kind.value,
                exportable=exportable,
                policy_hash=policy and policy_hash(policy),
            )
            self._put_key(key)
            self._put_version(version)
        return self._info(self._existing(name))

    async def get_key(self, principal: str, name: str) -> KeyInfo:
        self._access.check(principal, KeyOp.READ, name)
        return self._info(self._existing(name))

    async def list_keys(self, principal: str, *, include_deleted: bool = False) -> list[KeyInfo]:
        """The keys ``principal`` may read (a filter, not a refusal); ForbiddenError only when suspended."""
        self._access.refuse_suspended(principal)
        rows = self._db.execute(f"SELECT {_KEY_COLUMNS} FROM keys ORDER BY name").fetchall()
        keys = [self._key_from(row) for row in rows]
        keys = [key for key in keys if include_deleted or key.deleted is None]
        return [self._info(key) for key in keys if self._access.allows(principal, KeyOp.READ, key.name)]

    async def rotate_key(self, principal: str, name: str) -> KeyVersion:
        async with self._change("rotate", principal, name) as change:
            self._access.check(principal, KeyOp.ROTATE, name)
            key = self._changeable(name)
            versions = self._versions(name)
            new = _new_version(self._master, key, seq=versions[-1].seq + 1 if versions else 1)
            previous = self._current_or_none(versions)
            await change.record(version=new.version, previous=previous and previous.version)
            self._put_version(new)
        return new.public(key.kind)

    async def set_version_enabled(self, principal: str, name: str, version: str, enabled: bool) -> KeyVersion:
        async with self._change("enable" if enabled else "disable", principal, name) as change:
            self._access.check(principal, KeyOp.UPDATE, name)
            key = self._changeable(name)
            row = self._version(name, version)
            updated = dataclasses.replace(row, enabled=bool(enabled))
            if row.enabled != updated.enabled:
                await change.record(version=version)
                self._put_version(updated)
        return updated.public(key.kind)

    async def set_release_policy(self, principal: str, name: str, policy: dict[str, Any] | None) -> KeyInfo:
        async with self._change("set_policy", principal, name) as change:
            self._access.check(principal, KeyOp.UPDATE, name)
            key = self._changeable(name)
            checked = _policy(policy)
            await change.record(
                policy_hash=checked and policy_hash(checked),
                previous_policy_hash=key.policy and policy_hash(key.policy),
            )
            self._put_key(dataclasses.replace(key, policy=checked))
        return self._info(self._existing(name))

    async def delete_key(self, principal: str, name: str) -> KeyInfo:
        async with self._change("delete", principal, name) as change:
            self._access.check(principal, KeyOp.DELETE, name)
            key = self._changeable(name)
            current = self._current_or_none(self._versions(name))
            await change.record(version=current and current.version)
            self._put_key(dataclasses.replace(key, deleted=time.time()))
        return self._info(self._existing(name))

    async def recover_key(self, principal: str, name: str) -> KeyInfo:
        async with self._change("recover", principal, name) as change:
            self._access.check(principal, KeyOp.DELETE, name)
            key = self._existing(name)
            if key.deleted is None:
                raise ConflictError(f"key {name!r} is not deleted")
            current = self._current_or_none(self._versions(name))
            await change.record(version=current and current.version, deleted=key.deleted)
            self._put_key(dataclasses.replace(key, deleted=None))
        return self._info(self._existing(name))

    async def purge_key(self, principal: str, name: str) -> None:
        async with self._change("purge", principal, name, denied=(ForbiddenError, ConflictError)) as change:
            self._access.check(principal, KeyOp.PURGE, name)
            key = self._existing(name)
            if key.deleted is None:
                raise ConflictError(f"key {name!r} is not deleted: delete it before purging it")
            allowed_from = key.deleted + self._retention
            if self._purge_protection and time.time() < allowed_from:
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(allowed_from))
                raise ConflictError(f"purge protection is on: key {name!r} cannot be purged before {when}")
            versions = self._versions(name)
            await change.record(versions=[v.version for v in versions], deleted=key.deleted)
            self._db.execute("DELETE FROM versions WHERE name = ?", (name,))
            self._db.execute("DELETE FROM keys WHERE name = ?", (name,))
            self._access.drop_key(name)

    # --- cryptography (not events: see module docstring) -----------------------------------------------

    async def wrap(self, principal: str, name: str, data_key: bytes) -> WrappedKey:
        self._access.check(principal, KeyOp.WRAP, name)
        if not 1 <= len(data_key) <= MAX_DATA_KEY:
            raise InvalidError(f"a data key is 1 to {MAX_DATA_KEY} bytes")
        _, current = self._current(name, KeyKind.AES256, "wrap")
        return wrap_with_material(self._material(current), name, current.version, data_key)

    async def unwrap(self, principal: str, wrapped: WrappedKey) -> bytes:
        name = wrapped.key_name
        self._access.check(principal, KeyOp.UNWRAP, name)
        key = self._usable(name)
        if key.kind is not KeyKind.AES256:
            raise ConflictError(f"key {name!r} is {key.kind.value}: unwrap needs an aes256 key")
        row = self._version(name, wrapped.version)
        if not row.enabled:
            raise DisabledError(f"key {name!r} version {row.version} is disabled")
        return unwrap_with_material(self._material(row), wrapped)

    async def sign(self, principal: str, name: str, data: bytes) -> Signature:
        self._access.check(principal, KeyOp.SIGN, name)
        _, current = self._current(name, KeyKind.ED25519, "sign")
        value = Ed25519PrivateKey.from_private_bytes(self._material(current)).sign(data)
        return Signature(name, current.version, "Ed25519", value)

    async def hmac(self, principal: str, name: str, data: bytes) -> bytes:
        self._access.check(principal, KeyOp.SIGN, name)
        _, current = self._current(name, KeyKind.AES256, "hmac")
        subkey = HKDF(hashes.SHA256(), 32, salt=None, info=b"vigil.keyvault.hmac.v1").derive(
            self._material(current)
        )
        mac = crypto_hmac.HMAC(subkey, hashes.SHA256())
        mac.update(data)
        return mac.finalize()

    async def release(
        self, principal: str, name: str, attestation_token: str, recipient_public_key: bytes
    ) -> ReleasedKey:
        async with self._change("release", principal, name, denied=(PlatformError,)) as change:
            self._access.check(principal, KeyOp.RELEASE, name)
            key = self._usable(name)
            if not key.exportable:
                raise ConflictError(f"key {name!r} is not exportable")
            if key.policy is None:
                raise ConflictError(f"key {name!r} has no release policy")
            _, current = self._current(name, KeyKind.AES256, "release")
            change.details.update(version=current.version, policy_hash=policy_hash(key.policy))
            if self._verifier is None:
                raise ReleaseDeniedError("no attestation verifier is configured")
            verified = self._verifier.verify(attestation_token)
            jti = verified.claims.get("jti")
            change.details.update(issuer=verified.issuer, jti=jti if isinstance(jti, str) else None)
            reason = evaluate(key.policy, verified.issuer, verified.claims)
            if reason is not None:
                raise ReleaseDeniedError(reason)
            recipient = rel.attested_recipient(verified.claims, recipient_public_key)
            wrapped = rel.wrap_for_recipient(self._material(current), recipient_public_key)
            await change.record(recipient=rel.key_fingerprint(recipient))
        return ReleasedKey(name, current.version, rel.ALGORITHM, wrapped)

    # --- access policy ------------------------------------------------------------------------------------

    async def grant(self, principal: str, grantee: str, key_name: str, ops: set[KeyOp]) -> None:
        async with self._change("grant", principal, key_name) as change:
            self._access.check(principal, KeyOp.ADMIN, key_name)
            check_principal(grantee, "grantee")
            _check_scope(key_name)
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

    # --- transactions and rows ----------------------------------------------------------------------------

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

    def _check_master(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'check'").fetchone()
        if row is None:
            # one statement, so atomic; when two processes create the vault at once, the first one's stays
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?), ('check', ?)",
                (str(SCHEMA_VERSION).encode(), self._master.seal(b"vigil key vault", _CHECK_AAD)),
            )
            row = self._db.execute("SELECT value FROM meta WHERE key = 'check'").fetchone()
        try:
            self._master.open(row[0], _CHECK_AAD)
        except IntegrityError:
            raise IntegrityError(
                f"the master key does not open the key vault {self._path} (wrong key file or passphrase?)"
            ) from None
        schema = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if int(bytes(schema[0])) > SCHEMA_VERSION:
            raise PlatformError(f"key vault {self._path} has a newer schema; upgrade Vigil")

    def _key(self, name: str) -> _Key | None:
        row = self._db.execute(f"SELECT {_KEY_COLUMNS} FROM keys WHERE name = ?", (name,)).fetchone()
        return None if row is None else self._key_from(row)

    def _key_from(self, row: tuple[Any, ...]) -> _Key:
        *fields, tag = row
        if not self._master.row_tag_ok(tag, "keys", *fields):
            raise IntegrityError(f"key {fields[0]!r}: its stored metadata failed its integrity check")
        name, kind, exportable, policy, tags, created, deleted = fields
        loaded = None if policy is None else json.loads(policy)
        return _Key(name, KeyKind(kind), bool(exportable), loaded, json.loads(tags), created, deleted)

    def _put_key(self, key: _Key) -> None:
        fields = (
            key.name,
            key.kind.value,
            int(key.exportable),
            None if key.policy is None else _canonical(key.policy),
            _canonical(key.tags),
            key.created,
            key.deleted,
        )
        tag = self._master.row_tag("keys", *fields)
        self._db.execute(f"INSERT OR REPLACE INTO keys ({_KEY_COLUMNS}) VALUES ({_EIGHT})", (*fields, tag))

    def _versions(self, name: str) -> list[_Version]:
        sql = f"SELECT {_VERSION_COLUMNS} FROM versions WHERE name = ? ORDER BY seq"
        found = []
        for *fields, tag in self._db.execute(sql, (name,)).fetchall():
            if not self._master.row_tag_ok(tag, "versions", *fields):
                raise IntegrityError(f"key {name!r} version {fields[1]}: its row failed its integrity check")
            row_name, version, seq, created, enabled, public, sealed = fields
            found.append(_Version(row_name, version, seq, created, bool(enabled), public, sealed))
        return found

    def _put_version(self, row: _Version) -> None:
        fields = (row.name, row.version, row.seq, row.created, int(row.enabled), row.public_key, row.sealed)
        tag = self._master.row_tag("versions", *fields)
        sql = f"INSERT OR REPLACE INTO versions ({_VERSION_COLUMNS}) VALUES ({_EIGHT})"
        self._db.execute(sql, (*fields, tag))

    def _version(self, name: str, version: str) -> _Version:
        for row in self._versions(name):
            if row.version == version:
                return row
        raise NotFoundError(f"key {name!r} has no version {version!r}")

    def _existing(self, name: str) -> _Key:
        key = self._key(name)
        if key is None:
            raise NotFoundError(f"no key named {name!r}")
        return key

    def _usable(self, name: str) -> _Key:
        """A key that crypto may use: DisabledError when it is soft-deleted."""
        key = self._existing(name)
        if key.deleted is not None:
            raise DisabledError(f"key {name!r} is deleted")
        return key

    def _changeable(self, name: str) -> _Key:
        """A key whose settings may change: ConflictError when it is soft-deleted."""
        key = self._existing(name)
        if key.deleted is not None:
            raise ConflictError(f"key {name!r} is deleted: recover it first")
        return key

    def _current(self, name: str, kind: KeyKind, use: str) -> tuple[_Key, _Version]:
        key = self._usable(name)
        if key.kind is not kind:
            raise ConflictError(f"key {name!r} is {key.kind.value}: {use} needs an {kind.value} key")
        current = self._current_or_none(self._versions(name))
        if current is None:
            raise DisabledError(f"key {name!r} has no enabled version")
        return key, current

    @staticmethod
    def _current_or_none(versions: list[_Version]) -> _Version | None:
        return next((v for v in reversed(versions) if v.enabled), None)

    def _material(self, row: _Version) -> bytes:
        try:
            return self._master.open(row.sealed, f"{row.name}/{row.version}".encode())
        except IntegrityError:
            raise IntegrityError(
                f"key {row.name!r} version {row.version}: sealed material failed its integrity check"
            ) from None

    def _info(self, key: _Key) -> KeyInfo:
        versions = self._versions(key.name)
        current = self._current_or_none(versions)
        return KeyInfo(
            name=key.name,
            kind=key.kind,
            current=None if current is None else current.version,
            versions=tuple(v.public(key.kind) for v in versions),
            exportable=key.exportable,
            release_policy=key.policy,
            deleted=key.deleted,
            tags=dict(key.tags),
        )


_KEY_COLUMNS: Final = "name, kind, exportable, policy, tags, created, deleted, tag"
_VERSION_COLUMNS: Final = "name, version, seq, created, enabled, public_key, sealed, tag"
_EIGHT: Final = ", ".join("?" * 8)


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # before SQLite creates it 0644
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
    except BaseException:
        db.close()
        raise
    return db


def _new_version(master: MasterKey, key: _Key, *, seq: int) -> _Version:
    """A fresh version of ``key``: new material, sealed to the row ``"<name>/<version>"``."""
    version = secrets.token_hex(16)
    public: bytes | None = None
    if key.kind is KeyKind.AES256:
        material = os.urandom(32)
    else:
        private = Ed25519PrivateKey.generate()
        material, public = private.private_bytes_raw(), private.public_key().public_bytes_raw()
    sealed = master.seal(material, f"{key.name}/{version}".encode())
    return _Version(key.name, version, seq, time.time(), True, public, sealed)


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not KEY_NAME.fullmatch(name):
        raise InvalidError("a key name is 1 to 127 letters, digits and dashes")


def _check_scope(key_name: str) -> None:
    if key_name != ALL_KEYS:
        _check_name(key_name)


def _check_tags(tags: dict[str, str] | None) -> dict[str, str]:
    tags = dict(tags or {})
    for k, v in tags.items():
        if not isinstance(k, str) or not isinstance(v, str) or not 0 < len(k) <= 256 or len(v) > 256:
            raise InvalidError("tags map names of 1 to 256 characters to strings of at most 256")
    return tags


def _ops(ops: Iterable[KeyOp | str]) -> set[KeyOp]:
    try:
        found = {KeyOp(op) for op in ops}
    except ValueError:
        raise InvalidError(f"operations are {', '.join(op.value for op in KeyOp)}") from None
    if not found:
        raise InvalidError("name at least one operation")
    return found


def _kind(kind: KeyKind | str) -> KeyKind:
    try:
        return KeyKind(kind)
    except ValueError:
        raise InvalidError(f"key kinds are {', '.join(k.value for k in KeyKind)}") from None


def _policy(policy: dict[str, Any] | None) -> dict[str, Any] | None:
    try:
        return None if policy is None else validate_policy(policy)
    except ValueError as exc:
        raise InvalidError(f"release policy: {exc}") from None
