"""The local key vault's persistence layer: its SQLite schema, its row types and tagged row reads and writes.

Why a module of its own: :class:`~vigil.platform.local.keyvault.LocalKeyVault` decides *whether* a change
may happen and records it; this module owns *how* a key is stored, so that every read of a row checks its
integrity tag and every write computes one, in one place, and no caller can touch a row without it.

Storage: one SQLite file (WAL, ``synchronous=FULL``: a change the caller saw succeed survives power loss),
created with mode 0600 before SQLite opens it, so it is never world-readable even for an instant.

* ``keys``: one row per key: name, kind, exportable, release policy and tags (canonical JSON, so the tag
  over them is reproducible), creation and soft-delete time.
* ``versions``: one row per version, ordered by a per-key sequence ``seq`` (``UNIQUE (name, seq)``); the
  material is sealed by the :class:`~vigil.platform.local.masterkey.MasterKey` with associated data
  ``"<name>/<version>"``, so a sealed blob copied onto another row does not open. An ``ed25519`` row also
  holds the public key in clear: it is published anyway.
* ``meta``: the schema version and a value sealed under a fixed label, so a wrong master key or passphrase
  fails when the vault opens rather than at the first unwrap.
* ``grants`` and ``suspensions`` belong to :mod:`.access`.

Invariants:

* every ``keys`` and ``versions`` row carries ``tag`` = :meth:`MasterKey.row_tag` over its table name and
  every other column, checked on every read: a release policy relaxed, a disabled version re-enabled or a
  deleted key revived by writing to the file is an IntegrityError, never a release;
* *current* is the newest (highest ``seq``) enabled version;
* :class:`KeyStore` never begins, commits or rolls back: the vault holds one ``BEGIN IMMEDIATE``
  transaction across a whole change, records its event, and only then writes here.

The validators at the end say what a key row may hold (names, kinds, tags, policies); they raise
InvalidError, which the vault passes on to the caller unchanged.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vigil.platform.errors import (
    ConflictError,
    DisabledError,
    IntegrityError,
    InvalidError,
    NotFoundError,
    PlatformError,
)
from vigil.platform.keyvault import KeyInfo, KeyKind, KeyVersion
from vigil.platform.local.masterkey import MasterKey
from vigil.platform.local.policy import validate_policy

SCHEMA_VERSION: Final = 1
KEY_NAME: Final = re.compile(r"[0-9A-Za-z-]{1,127}")  # Azure Key Vault's rule: no "/", never "*"
SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    name TEXT PRIMARY KEY, kind TEXT NOT NULL, exportable INTEGER NOT NULL, policy TEXT,
    tags TEXT NOT NULL, created REAL NOT NULL, deleted REAL, tag BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL, version TEXT NOT NULL, seq INTEGER NOT NULL, created REAL NOT NULL,
    enabled INTEGER NOT NULL, public_key BLOB, sealed BLOB NOT NULL, tag BLOB NOT NULL,
    PRIMARY KEY (name, version), UNIQUE (name, seq));
"""
_CHECK_AAD: Final = b"vigil.keyvault.master-check.v1"
_KEY_COLUMNS: Final = "name, kind, exportable, policy, tags, created, deleted, tag"
_VERSION_COLUMNS: Final = "name, version, seq, created, enabled, public_key, sealed, tag"
_EIGHT: Final = ", ".join("?" * 8)


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One ``keys`` row, its tag checked."""

    name: str
    kind: KeyKind
    exportable: bool
    policy: dict[str, Any] | None
    tags: dict[str, str]
    created: float
    deleted: float | None = None


@dataclass(frozen=True, slots=True)
class VersionRow:
    """One ``versions`` row, its tag checked; ``sealed`` is opened only by :meth:`KeyStore.material`."""

    name: str
    version: str
    seq: int
    created: float
    enabled: bool
    public_key: bytes | None
    sealed: bytes

    def public(self, kind: KeyKind) -> KeyVersion:
        return KeyVersion(self.name, self.version, kind, self.enabled, self.created, self.public_key)


def connect(path: Path) -> sqlite3.Connection:
    """The vault's database in autocommit mode (the vault issues ``BEGIN IMMEDIATE`` itself), created 0600."""
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


class KeyStore:
    """Keys and versions in the vault's database (see module docstring). Writes, never commits."""

    def __init__(self, db: sqlite3.Connection, master: MasterKey, path: Path) -> None:
        self._db, self._master, self._path = db, master, path
        db.executescript(SCHEMA)

    def __repr__(self) -> str:
        return f"KeyStore(path={str(self._path)!r})"

    def check_master(self) -> None:
        """Write the check value on first open; IntegrityError when this master key does not open it."""
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

    # --- rows ---------------------------------------------------------------------------------------------

    def key(self, name: str) -> KeyRow | None:
        row = self._db.execute(f"SELECT {_KEY_COLUMNS} FROM keys WHERE name = ?", (name,)).fetchone()
        return None if row is None else self._key_from(row)

    def all_keys(self) -> list[KeyRow]:
        """Every key, soft-deleted ones included, by name."""
        rows = self._db.execute(f"SELECT {_KEY_COLUMNS} FROM keys ORDER BY name").fetchall()
        return [self._key_from(row) for row in rows]

    def put_key(self, key: KeyRow) -> None:
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

    def versions(self, name: str) -> list[VersionRow]:
        """The versions of ``name``, oldest first."""
        sql = f"SELECT {_VERSION_COLUMNS} FROM versions WHERE name = ? ORDER BY seq"
        found = []
        for *fields, tag in self._db.execute(sql, (name,)).fetchall():
            if not self._master.row_tag_ok(tag, "versions", *fields):
                raise IntegrityError(f"key {name!r} version {fields[1]}: its row failed its integrity check")
            row_name, version, seq, created, enabled, public, sealed = fields
            found.append(VersionRow(row_name, version, seq, created, bool(enabled), public, sealed))
        return found

    def put_version(self, row: VersionRow) -> None:
        fields = (row.name, row.version, row.seq, row.created, int(row.enabled), row.public_key, row.sealed)
        tag = self._master.row_tag("versions", *fields)
        sql = f"INSERT OR REPLACE INTO versions ({_VERSION_COLUMNS}) VALUES ({_EIGHT})"
        self._db.execute(sql, (*fields, tag))

    def delete_key(self, name: str) -> None:
        """Remove the key row and all its versions (a purge); grants are :mod:`.access`'s to drop."""
        self._db.execute("DELETE FROM versions WHERE name = ?", (name,))
        self._db.execute("DELETE FROM keys WHERE name = ?", (name,))

    def new_version(self, key: KeyRow, *, seq: int) -> VersionRow:
        """A fresh version of ``key``, not yet written: new material, sealed to ``"<name>/<version>"``."""
        version = secrets.token_hex(16)
        public: bytes | None = None
        if key.kind is KeyKind.AES256:
            material = os.urandom(32)
        else:
            private = Ed25519PrivateKey.generate()
            material, public = private.private_bytes_raw(), private.public_key().public_bytes_raw()
        sealed = self._master.seal(material, f"{key.name}/{version}".encode())
        return VersionRow(key.name, version, seq, time.time(), True, public, sealed)

    def material(self, row: VersionRow) -> bytes:
        """The version's key material, unsealed; IntegrityError when the sealed blob is not this row's."""
        try:
            return self._master.open(row.sealed, f"{row.name}/{row.version}".encode())
        except IntegrityError:
            raise IntegrityError(
                f"key {row.name!r} version {row.version}: sealed material failed its integrity check"
            ) from None

    # --- lookups that refuse --------------------------------------------------------------------------------

    def version(self, name: str, version: str) -> VersionRow:
        for row in self.versions(name):
            if row.version == version:
                return row
        raise NotFoundError(f"key {name!r} has no version {version!r}")

    def existing(self, name: str) -> KeyRow:
        key = self.key(name)
        if key is None:
            raise NotFoundError(f"no key named {name!r}")
        return key

    def usable(self, name: str) -> KeyRow:
        """A key that crypto may use: DisabledError when it is soft-deleted."""
        key = self.existing(name)
        if key.deleted is not None:
            raise DisabledError(f"key {name!r} is deleted")
        return key

    def changeable(self, name: str) -> KeyRow:
        """A key whose settings may change: ConflictError when it is soft-deleted."""
        key = self.existing(name)
        if key.deleted is not None:
            raise ConflictError(f"key {name!r} is deleted: recover it first")
        return key

    def current(self, name: str, kind: KeyKind, use: str) -> tuple[KeyRow, VersionRow]:
        """A usable key of ``kind`` and its current version, for ``use`` (named in the refusal)."""
        key = self.usable(name)
        if key.kind is not kind:
            raise ConflictError(f"key {name!r} is {key.kind.value}: {use} needs an {kind.value} key")
        current = current_or_none(self.versions(name))
        if current is None:
            raise DisabledError(f"key {name!r} has no enabled version")
        return key, current

    def info(self, key: KeyRow) -> KeyInfo:
        """The public description of ``key``: no material, ever."""
        versions = self.versions(key.name)
        current = current_or_none(versions)
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

    def _key_from(self, row: tuple[Any, ...]) -> KeyRow:
        *fields, tag = row
        if not self._master.row_tag_ok(tag, "keys", *fields):
            raise IntegrityError(f"key {fields[0]!r}: its stored metadata failed its integrity check")
        name, kind, exportable, policy, tags, created, deleted = fields
        loaded = None if policy is None else json.loads(policy)
        return KeyRow(name, KeyKind(kind), bool(exportable), loaded, json.loads(tags), created, deleted)


def current_or_none(versions: list[VersionRow]) -> VersionRow | None:
    """The newest enabled version of ``versions`` (oldest first), or None."""
    return next((v for v in reversed(versions) if v.enabled), None)


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# --- what a key row may hold ------------------------------------------------------------------------------


def check_name(name: object) -> None:
    if not isinstance(name, str) or not KEY_NAME.fullmatch(name):
        raise InvalidError("a key name is 1 to 127 letters, digits and dashes")


def check_tags(tags: dict[str, str] | None) -> dict[str, str]:
    tags = dict(tags or {})
    for k, v in tags.items():
        if not isinstance(k, str) or not isinstance(v, str) or not 0 < len(k) <= 256 or len(v) > 256:
            raise InvalidError("tags map names of 1 to 256 characters to strings of at most 256")
    return tags


def check_kind(kind: KeyKind | str) -> KeyKind:
    try:
        return KeyKind(kind)
    except ValueError:
        raise InvalidError(f"key kinds are {', '.join(k.value for k in KeyKind)}") from None


def check_policy(policy: dict[str, Any] | None) -> dict[str, Any] | None:
    try:
        return None if policy is None else validate_policy(policy)
    except ValueError as exc:
        raise InvalidError(f"release policy: {exc}") from None
