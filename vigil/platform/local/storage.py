"""The local secure storage: envelope-encrypted objects in files, their metadata and rights in SQLite.

Layout under ``root``: ``storage.db`` (SQLite, WAL, ``synchronous=FULL``) holds containers (key name, lock,
public flag), access rules, suspended principals and one row per object (its object id, size, chunk size,
the data key wrapped by the vault as :class:`~vigil.platform.keyvault.WrappedKey` JSON, metadata);
``objects/<container>/<object-id>`` holds each object's envelope (:mod:`.envelope`). Every ``put`` writes a
new object id, so replacing an object never touches the bytes readers of the old one are using.

Crash behaviour of ``put``: the envelope is written to a temporary file, fsynced and renamed to its final
name (directory fsynced), the event is recorded, and only then the row commits. A crash before the commit
leaves a data file without a row, which is removed when the storage next opens; a crash after it, at worst
the replaced object's file, removed the same way. A row therefore always points at a complete file.

Keys: the storage generates each data key and has the vault wrap and unwrap it as ``service_principal``
(the vault grants that principal wrap/unwrap on the container keys); the data key never leaves the process.
The *calling* principal's rights are the storage's own business (:mod:`.storage_rights`: admins, grants,
suspensions and locks). ``public_read`` is a flag only (the local API has no anonymous access; it is there
so the lock-down remediator has the same state to turn off as on Azure), but a principal named
``anonymous`` may read then.

Events: every mutating operation awaits the observer *before* its commit (an exception aborts it, leaving no
row and no data file); a denial (forbidden or locked) is recorded with ``outcome="denied"`` on a best-effort
basis, because refused access is what Vigil watches for.

Concurrency: crypto and file I/O run in worker threads (:mod:`.sealed_files`; 8 MiB per hop, or a whole
object in one with :meth:`LocalStorage.read_into`). Metadata statements are short and run on the loop's
thread, which owns the connection; an asyncio lock makes check, record and commit of each change atomic
against other coroutines. Other processes may read (a loader's workers); one process changes a ``root``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, Final

from vigil.platform.errors import (
    AlreadyExistsError,
    ConflictError,
    ForbiddenError,
    IntegrityError,
    InvalidError,
    LockedError,
    NotFoundError,
)
from vigil.platform.events import NullObserver, PlatformEvent, PlatformObserver
from vigil.platform.keyvault import KeyVault, WrappedKey
from vigil.platform.local import envelope
from vigil.platform.local import storage_rights as rights
from vigil.platform.local.envelope import Decryptor, Encryptor, ObjectIdentity
from vigil.platform.local.sealed_files import read_file, read_file_into, remove_orphans, write_file
from vigil.platform.storage import ContainerInfo, Lock, ObjectInfo, StorageOp

log = logging.getLogger(__name__)

_CONTAINER_NAME: Final = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")  # Azure's rule
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS containers (name TEXT PRIMARY KEY, key_name TEXT NOT NULL, lock TEXT NOT NULL,
    public_read INTEGER NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS access (container TEXT NOT NULL REFERENCES containers(name) ON DELETE CASCADE,
    grantee TEXT NOT NULL, ops TEXT NOT NULL, PRIMARY KEY (container, grantee));
CREATE TABLE IF NOT EXISTS suspended (principal TEXT PRIMARY KEY, reason TEXT NOT NULL, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS objects (container TEXT NOT NULL REFERENCES containers(name) ON DELETE CASCADE,
    name TEXT NOT NULL, object_id TEXT NOT NULL UNIQUE, size INTEGER NOT NULL, chunk_size INTEGER NOT NULL,
    wrapped_key TEXT NOT NULL, key_version TEXT NOT NULL, metadata TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (container, name));
"""
_OBJECT_COLUMNS: Final = "container, name, size, chunk_size, key_version, created, metadata"
_OBJECT_ROW: Final = (
    f"SELECT {_OBJECT_COLUMNS}, object_id, wrapped_key FROM objects WHERE container = ? AND name = ?"
)


def _object_info(row: tuple[Any, ...]) -> ObjectInfo:
    return ObjectInfo(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]))


class LocalStorage:
    """The embedded :class:`~vigil.platform.storage.Storage` (see module docstring)."""

    def __init__(
        self,
        root: Path,
        vault: KeyVault,
        *,
        observer: PlatformObserver | None = None,
        admins: Iterable[str] = ("vigil",),
        chunk_size: int = 1 << 20,
        service_principal: str = "vigil",
    ) -> None:
        if not envelope.MIN_CHUNK <= chunk_size <= envelope.MAX_CHUNK:
            raise ValueError(f"chunk size out of range: {chunk_size}")
        self.root = Path(root)
        self._objects = self.root / "objects"
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)  # names and wrapped keys: owner only
        self._objects.mkdir(mode=0o700, exist_ok=True)
        self._vault = vault
        self._observer: PlatformObserver = observer or NullObserver()
        self._admins = frozenset(admins)
        self._chunk_size = chunk_size
        self._service = service_principal
        self._lock = asyncio.Lock()  # check, record and commit of one change, against other coroutines
        # the default isolation level: each ``with self._db`` is one transaction, committed or rolled back
        self._db = sqlite3.connect(self.root / "storage.db")
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.executescript(_SCHEMA)
        self._clean_orphans()

    def close(self) -> None:
        self._db.close()

    def _clean_orphans(self) -> None:
        """Remove data files without a row (a put or delete cut short by a crash); warn of the reverse."""
        known = {f"{c}/{o}" for c, o in self._db.execute("SELECT container, object_id FROM objects")}
        containers = {name for (name,) in self._db.execute("SELECT name FROM containers")}
        remove_orphans(self._objects, known, containers)

    # -- rights ------------------------------------------------------------------------------------------

    def _container(self, name: str) -> tuple[str, str, Lock, bool, float]:
        return rights.container(self._db, name)

    def _info(self, name: str) -> ContainerInfo:
        return rights.info(self._db, name)

    async def _allow(
        self, principal: str, op: str, subject: str, container: str | None, need: StorageOp | None
    ) -> None:
        """:func:`storage_rights.authorize`, recording a denial (best effort) before it is raised."""
        try:
            rights.authorize(self._db, self._admins, principal, op, container, need)
        except (ForbiddenError, LockedError) as exc:
            details = {"error": exc.code, "reason": str(exc)}
            event = PlatformEvent(f"platform.storage.{op}", principal, subject, details, outcome="denied")
            try:
                await self._observer.record(event)
            except Exception:
                log.warning("storage: could not record the denial of %s to %s", op, principal, exc_info=True)
            raise

    async def _record(self, op: str, principal: str, subject: str, **details: Any) -> None:
        await self._observer.record(PlatformEvent(f"platform.storage.{op}", principal, subject, details))

    # -- containers --------------------------------------------------------------------------------------

    async def create_container(self, principal: str, name: str, *, key_name: str) -> ContainerInfo:
        async with self._lock:
            await self._allow(principal, "create_container", name, None, StorageOp.ADMIN)
            if not _CONTAINER_NAME.fullmatch(name):
                raise InvalidError(f"invalid container name {name!r}: 3-63 of a-z, 0-9 and single hyphens")
            if self._db.execute("SELECT 1 FROM containers WHERE name = ?", (name,)).fetchone():
                raise AlreadyExistsError(f"container {name} exists")
            await self._record("create_container", principal, name, key_name=key_name)
            with self._db as db:
                db.execute(
                    "INSERT INTO containers VALUES (?, ?, 'none', 0, ?)", (name, key_name, time.time())
                )
            (self._objects / name).mkdir(exist_ok=True)
            return self._info(name)

    async def get_container(self, principal: str, name: str) -> ContainerInfo:
        await self._allow(principal, "get_container", name, name, None)
        return self._info(name)

    async def list_containers(self, principal: str) -> list[ContainerInfo]:
        await self._allow(principal, "list_containers", "", None, None)
        infos = [self._info(n) for (n,) in self._db.execute("SELECT name FROM containers ORDER BY name")]
        if principal in self._admins:
            return infos
        return [
            i for i in infos if principal in i.access or (i.public_read and principal == rights.ANONYMOUS)
        ]

    async def delete_container(self, principal: str, name: str) -> None:
        async with self._lock:
            await self._allow(principal, "delete_container", name, name, StorageOp.ADMIN)
            (count,) = self._db.execute(
                "SELECT count(*) FROM objects WHERE container = ?", (name,)
            ).fetchone()
            await self._record("delete_container", principal, name, objects=count)
            with self._db as db:
                db.execute("DELETE FROM containers WHERE name = ?", (name,))
        await asyncio.to_thread(shutil.rmtree, self._objects / name, True)

    async def _change(
        self, principal: str, op: str, subject: str, sql: str, args: tuple[Any, ...], **details: Any
    ) -> None:
        """One admin change of ``subject`` (a container, or the principal to suspend): check, record, commit
        one statement."""
        async with self._lock:
            suspend = op == "set_suspended"
            await self._allow(principal, op, subject, None if suspend else subject, StorageOp.ADMIN)
            if suspend and details["suspended"] and subject == principal:
                raise ConflictError(f"principal {principal} cannot suspend itself")
            await self._record(op, principal, subject, **details)
            with self._db as db:
                db.execute(sql, args)

    async def set_lock(self, principal: str, container: str, lock: Lock) -> ContainerInfo:
        sql, args = "UPDATE containers SET lock = ? WHERE name = ?", (Lock(lock).value, container)
        await self._change(principal, "set_lock", container, sql, args, lock=Lock(lock).value)
        return self._info(container)

    async def set_public_read(self, principal: str, container: str, public: bool) -> ContainerInfo:
        sql, args = "UPDATE containers SET public_read = ? WHERE name = ?", (int(public), container)
        await self._change(principal, "set_public_read", container, sql, args, public_read=public)
        return self._info(container)

    async def set_access(
        self, principal: str, container: str, grantee: str, ops: frozenset[StorageOp]
    ) -> ContainerInfo:
        names = sorted(StorageOp(op).value for op in ops)
        args: tuple[Any, ...]
        sql, args = "DELETE FROM access WHERE container = ? AND grantee = ?", (container, grantee)
        if names:
            sql, args = "INSERT OR REPLACE INTO access VALUES (?, ?, ?)", (*args, ",".join(names))
        await self._change(principal, "set_access", container, sql, args, grantee=grantee, ops=names)
        return self._info(container)

    async def set_suspended(self, principal: str, grantee: str, suspended: bool, *, reason: str = "") -> None:
        args: tuple[Any, ...]
        sql, args = "DELETE FROM suspended WHERE principal = ?", (grantee,)
        if suspended:
            sql, args = "INSERT OR REPLACE INTO suspended VALUES (?, ?, ?)", (grantee, reason, time.time())
        await self._change(principal, "set_suspended", grantee, sql, args, suspended=suspended, reason=reason)

    # -- objects -----------------------------------------------------------------------------------------

    def _object(self, container: str, name: str) -> tuple[Any, ...]:
        """The object's row: ObjectInfo's columns, then object id and wrapped key."""
        row = self._db.execute(_OBJECT_ROW, (container, name)).fetchone()
        if row is None:
            raise NotFoundError(f"no object {container}/{name}")
        return tuple(row)

    async def _data_key(self, key_name: str, label: str, text: str) -> bytes:
        """Unwrap an object's data key (as the service principal); IntegrityError for a damaged row."""
        try:
            wrapped = WrappedKey.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError):
            raise IntegrityError(f"object {label}: the wrapped data key is damaged") from None
        if wrapped.key_name != key_name:
            raise IntegrityError(f"object {label}: data key wrapped by {wrapped.key_name}, not {key_name}")
        return await self._vault.unwrap(self._service, wrapped)

    async def put(
        self,
        principal: str,
        container: str,
        name: str,
        data: bytes | AsyncIterator[bytes],
        *,
        metadata: dict[str, str] | None = None,
    ) -> ObjectInfo:
        """Encrypt ``data`` into a new data file, then record and commit its row (see module docstring)."""
        subject = f"{container}/{name}"
        await self._allow(principal, "put", subject, container, StorageOp.WRITE)
        if not 0 < len(name) <= 1024 or "\x00" in name:
            raise InvalidError(f"invalid object name {name!r}: 1-1024 characters, no NUL")
        meta = {str(k): str(v) for k, v in (metadata or {}).items()}
        object_id, data_key = secrets.token_hex(16), envelope.new_data_key()
        wrapped = await self._vault.wrap(self._service, self._container(container)[1], data_key)
        enc = Encryptor(data_key, ObjectIdentity(container, name, object_id), chunk_size=self._chunk_size)
        del data_key
        folder = self._objects / container
        try:
            folder.mkdir(exist_ok=True)
            await write_file(folder / object_id, enc, data)
            async with self._lock:  # a lock or a revocation may have come while the data streamed in
                await self._allow(principal, "put", subject, container, StorageOp.WRITE)
                old = self._db.execute(_OBJECT_ROW, (container, name)).fetchone()
                details = {"object_id": object_id, "size": enc.size, "key_version": wrapped.version}
                await self._record("put", principal, subject, **details, replaced=old[7] if old else None)
                created, key_json = time.time(), json.dumps(wrapped.to_json())
                values = (object_id, enc.size, self._chunk_size, key_json, wrapped.version, json.dumps(meta))
                with self._db as db:
                    db.execute(
                        "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (container, name, *values, created),
                    )
        except BaseException:
            (folder / object_id).unlink(missing_ok=True)
            raise
        if old:
            (folder / old[7]).unlink(missing_ok=True)
        return ObjectInfo(container, name, enc.size, self._chunk_size, wrapped.version, created, meta)

    async def _open(self, principal: str, container: str, name: str) -> tuple[Path, Decryptor, int]:
        """Rights, lock and data key checked: the object's data file, its decryptor and its size."""
        await self._allow(principal, "get", f"{container}/{name}", container, StorageOp.READ)
        row = self._object(container, name)
        identity = ObjectIdentity(container, name, row[7])
        data_key = await self._data_key(self._container(container)[1], identity.label, row[8])
        return self._objects / container / row[7], Decryptor(data_key, identity), row[2]

    async def get(self, principal: str, container: str, name: str) -> AsyncIterator[bytes]:
        """Stream the object; rights, lock and data key are checked before the first chunk."""
        path, dec, size = await self._open(principal, container, name)
        async for chunk in read_file(path, dec, size):
            yield chunk

    async def read_into(self, principal: str, container: str, name: str, out: bytearray | memoryview) -> int:
        """Decrypt the whole object into ``out`` (a bytearray grows when shorter) in one worker-thread hop;
        returns its size. The fast path for a reader that wants all of it and reuses its buffers, such as a
        training loader's worker processes (``bench/training.py``)."""
        path, dec, size = await self._open(principal, container, name)
        await asyncio.to_thread(read_file_into, path, dec, size, out)
        return size

    async def read(self, principal: str, container: str, name: str) -> bytes:
        out = bytearray()
        size = await self.read_into(principal, container, name, out)
        return bytes(memoryview(out)[:size])

    async def head(self, principal: str, container: str, name: str) -> ObjectInfo:
        await self._allow(principal, "head", f"{container}/{name}", container, StorageOp.READ)
        return _object_info(self._object(container, name))

    async def list_objects(self, principal: str, container: str, *, prefix: str = "") -> list[ObjectInfo]:
        await self._allow(principal, "list_objects", container, container, StorageOp.READ)
        rows = self._db.execute(
            f"SELECT {_OBJECT_COLUMNS} FROM objects WHERE container = ? AND substr(name, 1, ?) = ? "
            "ORDER BY name",
            (container, len(prefix), prefix),
        )
        return [_object_info(row) for row in rows]

    async def delete(self, principal: str, container: str, name: str) -> None:
        subject = f"{container}/{name}"
        async with self._lock:
            await self._allow(principal, "delete", subject, container, StorageOp.WRITE)
            object_id = self._object(container, name)[7]
            await self._record("delete", principal, subject, object_id=object_id)
            with self._db as db:
                db.execute("DELETE FROM objects WHERE container = ? AND name = ?", (container, name))
        (self._objects / container / object_id).unlink(missing_ok=True)

    async def rewrap(self, principal: str, container: str) -> int:
        """Unwrap each data key and wrap it under the key's current version; data files stay untouched.
        All or nothing: an object whose key does not unwrap (damaged, version disabled) changes no row."""
        async with self._lock:
            await self._allow(principal, "rewrap", container, container, StorageOp.ADMIN)
            key_name = self._container(container)[1]
            rows = self._db.execute(
                "SELECT name, object_id, wrapped_key FROM objects WHERE container = ? ORDER BY name",
                (container,),
            ).fetchall()
            todo = []
            for name, object_id, text in rows:
                data_key = await self._data_key(key_name, f"{container}/{name} (object {object_id})", text)
                new = await self._vault.wrap(self._service, key_name, data_key)
                todo.append((json.dumps(new.to_json()), new.version, object_id))
            versions = sorted({t[1] for t in todo})
            await self._record("rewrap", principal, container, objects=len(todo), key_versions=versions)
            with self._db as db:
                db.executemany("UPDATE objects SET wrapped_key=?, key_version=? WHERE object_id=?", todo)
            return len(todo)
