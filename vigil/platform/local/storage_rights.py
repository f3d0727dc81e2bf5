"""Who may do what in the local secure storage: containers' locks, grants, suspensions and admins.

Kept apart from :mod:`vigil.platform.local.storage` (objects, envelopes, crash behaviour) because the rules
are the storage's whole access policy and read best in one place. Admins may do everything; others need
:class:`~vigil.platform.storage.StorageOp` grants on the container (``admin`` does not imply ``read`` or
``write``); a suspended principal is refused everything while its grants are kept. Locks bind everyone,
admins too: ``read_only`` refuses put, delete and deleting the container, ``no_access`` also get, read,
head and list; lock, access, the public flag and rewrap still work, so an admin can undo or remediate. A
principal named ``anonymous`` may read a ``public_read`` container. The functions read the storage's
connection (its ``containers``, ``access`` and ``suspended`` tables).
"""

from __future__ import annotations

import sqlite3
from typing import Final

from vigil.platform.errors import ForbiddenError, LockedError, NotFoundError
from vigil.platform.storage import ContainerInfo, Lock, StorageOp

ANONYMOUS: Final = "anonymous"
_WRITES, _READS = frozenset({Lock.READ_ONLY, Lock.NO_ACCESS}), frozenset({Lock.NO_ACCESS})
#: the locks that refuse each operation (the others work under any lock)
_LOCKED_OUT: Final = {"put": _WRITES, "delete": _WRITES, "delete_container": _WRITES} | {
    op: _READS for op in ("get", "head", "list_objects")
}


def container(db: sqlite3.Connection, name: str) -> tuple[str, str, Lock, bool, float]:
    """(name, key name, lock, public read, created) of a container; NotFoundError if there is none."""
    row = db.execute(
        "SELECT name, key_name, lock, public_read, created FROM containers WHERE name = ?", (name,)
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no container {name}")
    return row[0], row[1], Lock(row[2]), bool(row[3]), row[4]


def grants(db: sqlite3.Connection, name: str) -> dict[str, frozenset[StorageOp]]:
    """Each grantee's operations on container ``name``."""
    rows = db.execute("SELECT grantee, ops FROM access WHERE container = ?", (name,))
    return {who: frozenset(StorageOp(op) for op in ops.split(",")) for who, ops in rows}


def info(db: sqlite3.Connection, name: str) -> ContainerInfo:
    name, key_name, lock, public, created = container(db, name)
    return ContainerInfo(name, key_name, lock, public, grants(db, name), created)


def authorize(
    db: sqlite3.Connection,
    admins: frozenset[str],
    principal: str,
    op: str,
    name: str | None,
    need: StorageOp | None,
) -> None:
    """Raise unless ``principal`` may do ``need`` (None: anything) on container ``name``; without a
    container, ``need`` is ``admin`` (admins only) or None (anyone not suspended)."""
    row = db.execute("SELECT reason FROM suspended WHERE principal = ?", (principal,)).fetchone()
    if row is not None:
        raise ForbiddenError(f"principal {principal} is suspended: {row[0]}")
    if name is None:
        if need is StorageOp.ADMIN and principal not in admins:
            raise ForbiddenError(f"principal {principal} is not a storage admin")
        return
    name, _, lock, public, _ = container(db, name)
    if principal not in admins:
        ops = grants(db, name).get(principal, frozenset())
        allowed = need in ops if need else bool(ops)
        anonymous_read = public and principal == ANONYMOUS and need in (None, StorageOp.READ)
        if not (allowed or anonymous_read):
            raise ForbiddenError(f"principal {principal} may not {need or 'access'} container {name}")
    if lock in _LOCKED_OUT.get(op, ()):
        raise LockedError(f"container {name} is locked ({lock}): {op} refused")
