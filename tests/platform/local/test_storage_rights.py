"""The local storage's access policy as a table: admins, grants, anonymous reads, suspensions, locks."""

from __future__ import annotations

import sqlite3

import pytest

from vigil.platform.errors import ForbiddenError, LockedError, NotFoundError
from vigil.platform.local import storage as storage_mod
from vigil.platform.local import storage_rights as rights
from vigil.platform.storage import StorageOp

ADMINS = frozenset({"admin"})
R, W, A = StorageOp.READ, StorageOp.WRITE, StorageOp.ADMIN


@pytest.fixture
def db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.executescript(storage_mod._SCHEMA)
    conn.executemany(
        "INSERT INTO containers VALUES (?, 'k', ?, ?, 0)",
        [("open", "none", 0), ("frozen", "read_only", 0), ("sealed", "no_access", 0), ("public", "none", 1)],
    )
    conn.executemany(
        "INSERT INTO access VALUES (?, ?, ?)",
        [("open", "bob", "read"), ("open", "carol", "read,write"), ("sealed", "bob", "read")],
    )
    conn.execute("INSERT INTO suspended VALUES ('mallory', 'attestation drift', 0)")
    conn.execute("INSERT INTO access VALUES ('open', 'mallory', 'read,write,admin')")  # kept, not honoured
    return conn


@pytest.mark.parametrize(
    ("principal", "op", "container", "need", "refusal"),
    [
        ("admin", "put", "open", W, None),  # admins need no grant
        ("admin", "put", "frozen", W, LockedError),  # ... but locks bind them too
        ("admin", "get", "frozen", R, None),  # read_only still reads
        ("admin", "get", "sealed", R, LockedError),  # no_access does not
        ("admin", "set_lock", "sealed", A, None),  # a lock can always be undone
        ("bob", "get", "open", R, None),
        ("bob", "put", "open", W, ForbiddenError),  # read only
        ("bob", "get", "sealed", R, LockedError),  # a grant does not open a lock
        ("bob", "set_lock", "open", A, ForbiddenError),  # admin is not implied
        ("carol", "put", "open", W, None),
        ("carol", "get", "public", R, ForbiddenError),  # public means anonymous, not everyone
        ("anonymous", "get", "public", R, None),
        ("anonymous", "list_objects", "public", None, None),
        ("anonymous", "put", "public", W, ForbiddenError),
        ("anonymous", "get", "open", R, ForbiddenError),
        ("mallory", "get", "open", R, ForbiddenError),  # suspended: grants kept, refused everything
        ("mallory", "list_containers", None, None, ForbiddenError),
        ("bob", "list_containers", None, None, None),  # no container: anyone not suspended
        ("bob", "create_container", None, A, ForbiddenError),  # ... or admins only
        ("admin", "create_container", None, A, None),
        ("admin", "get", "missing", R, NotFoundError),
    ],
)
def test_authorize(
    db: sqlite3.Connection,
    principal: str,
    op: str,
    container: str | None,
    need: StorageOp | None,
    refusal: type[Exception] | None,
) -> None:
    if refusal is None:
        rights.authorize(db, ADMINS, principal, op, container, need)
    else:
        with pytest.raises(refusal):
            rights.authorize(db, ADMINS, principal, op, container, need)


def test_info_lists_the_grants(db: sqlite3.Connection) -> None:
    info = rights.info(db, "open")
    assert info.access == {"bob": {R}, "carol": {R, W}, "mallory": {R, W, A}}
    assert (info.key_name, info.lock.value, info.public_read) == ("k", "none", False)
