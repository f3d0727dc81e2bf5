"""The local key vault's access policy: who may do which :class:`~vigil.platform.keyvault.KeyOp` on which key.

Three sources decide, in this order:

1. **Suspension** (quarantine): a suspended principal is refused everything, admins included, with the
   reason it was suspended. Its grants stay in place, so restoring it is one call and gives back exactly
   what it had; quarantining a node never has to remember (or guess) its grants.
2. **Admins**, named in the vault's configuration (not in the database, so a lost database row cannot
   lock the operator out): everything.
3. **Grants**: rows ``(grantee, key name or "*", op)``. ``"*"`` covers every key, present and future.
   ``admin`` on a key lets a principal change that key's grants; ``admin`` on ``"*"`` also lets it grant
   ``"*"`` and suspend principals.

The rows live in the vault's SQLite database, each with a tag from the master key
(:meth:`~vigil.platform.local.masterkey.MasterKey.row_tag`): a grant or a lifted suspension that someone
wrote into the file directly is an :class:`~vigil.platform.errors.IntegrityError`, never access. Deleting
a suspension row outright cannot be seen by a per-row tag; the audit log's ``platform.key.restore`` events
are the record to compare against.

This class writes rows but never commits, and never decides what to write: the vault computes the change,
records its platform event, and only then writes it here and commits, all in one transaction.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from vigil.platform.errors import ForbiddenError, IntegrityError, InvalidError
from vigil.platform.keyvault import KeyOp
from vigil.platform.local.masterkey import MasterKey

ALL_KEYS: Final = "*"
MAX_PRINCIPAL_CHARS: Final = 256

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS grants (
    grantee TEXT NOT NULL, key_name TEXT NOT NULL, op TEXT NOT NULL, tag BLOB NOT NULL,
    PRIMARY KEY (grantee, key_name, op)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS grants_key ON grants(key_name);
CREATE TABLE IF NOT EXISTS suspensions (
    grantee TEXT PRIMARY KEY, reason TEXT NOT NULL, since REAL NOT NULL, tag BLOB NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Grant:
    """One grant row: ``grantee`` may do ``op`` on ``key_name`` (``"*"`` for every key)."""

    grantee: str
    key_name: str
    op: KeyOp


def check_principal(name: object, what: str = "principal") -> str:
    """``name`` when it is a usable principal name (1–256 printable characters); InvalidError otherwise."""
    if not isinstance(name, str) or not name or len(name) > MAX_PRINCIPAL_CHARS or not name.isprintable():
        raise InvalidError(f"{what} must be 1 to {MAX_PRINCIPAL_CHARS} printable characters")
    return name


def describe(op: KeyOp, key_name: str) -> str:
    """``"release key 'k1'"`` or ``"admin every key"``, for refusals."""
    return f"{op.value} every key" if key_name == ALL_KEYS else f"{op.value} key {key_name!r}"


class AccessPolicy:
    """Grants and suspensions in the vault's database (see module docstring)."""

    def __init__(self, db: sqlite3.Connection, master: MasterKey, admins: Iterable[str]) -> None:
        self._db = db
        self._master = master
        self._admins = frozenset(check_principal(a, "admin") for a in admins)
        db.executescript(SCHEMA)

    @property
    def admins(self) -> frozenset[str]:
        return self._admins

    def check(self, principal: str, op: KeyOp, key_name: str) -> None:
        """Return when ``principal`` may do ``op`` on ``key_name``; ForbiddenError otherwise."""
        self.refuse_suspended(principal)
        if not self.allows(principal, op, key_name):
            raise ForbiddenError(f"principal {principal!r} is not allowed to {describe(op, key_name)}")

    def refuse_suspended(self, principal: str) -> None:
        """ForbiddenError with the suspension's reason when ``principal`` is suspended."""
        reason = self.suspension(principal)
        if reason is not None:
            raise ForbiddenError(f"principal {principal!r} is suspended: {reason}")

    def allows(self, principal: str, op: KeyOp, key_name: str) -> bool:
        """Whether admins or grants allow it (suspension is :meth:`check`'s concern)."""
        if principal in self._admins:
            return True
        scopes = (ALL_KEYS,) if key_name == ALL_KEYS else (key_name, ALL_KEYS)
        return any(op in self.ops(principal, scope) for scope in scopes)

    def ops(self, grantee: str, key_name: str) -> set[KeyOp]:
        """The ops granted to ``grantee`` on exactly ``key_name`` (``"*"`` rows only when asked for)."""
        rows = self._db.execute(
            "SELECT op, tag FROM grants WHERE grantee = ? AND key_name = ?", (grantee, key_name)
        ).fetchall()
        return {self._verified(Grant(grantee, key_name, _op(op)), tag) for op, tag in rows}

    def grants(self, grantee: str | None = None) -> list[Grant]:
        """Every grant row (of one grantee, when named), sorted."""
        sql = "SELECT grantee, key_name, op, tag FROM grants"
        rows = self._db.execute(sql + " WHERE grantee = ?", (grantee,)) if grantee else self._db.execute(sql)
        found = []
        for who, key_name, op, tag in rows.fetchall():
            grant = Grant(who, key_name, _op(op))
            self._verified(grant, tag)
            found.append(grant)
        return sorted(found, key=lambda g: (g.grantee, g.key_name, g.op.value))

    def suspension(self, principal: str) -> str | None:
        """The reason ``principal`` is suspended, or None when it is not."""
        row = self._db.execute(
            "SELECT reason, since, tag FROM suspensions WHERE grantee = ?", (principal,)
        ).fetchone()
        if row is None:
            return None
        reason, since, tag = row
        if not self._master.row_tag_ok(tag, "suspensions", principal, reason, since):
            raise IntegrityError(f"the suspension of {principal!r} failed its integrity check")
        return str(reason) or "no reason given"

    # --- writes (no commit: the vault's transaction does that) -------------------------------------------

    def insert(self, grantee: str, key_name: str, ops: Iterable[KeyOp]) -> None:
        """Grant ``ops`` (those already granted stay as they are)."""
        for op in sorted(ops):
            tag = self._master.row_tag("grants", grantee, key_name, op.value)
            self._db.execute(
                "INSERT OR REPLACE INTO grants (grantee, key_name, op, tag) VALUES (?, ?, ?, ?)",
                (grantee, key_name, op.value, tag),
            )

    def delete(self, grantee: str, key_name: str, ops: Iterable[KeyOp]) -> None:
        """Revoke ``ops``."""
        for op in ops:
            self._db.execute(
                "DELETE FROM grants WHERE grantee = ? AND key_name = ? AND op = ?",
                (grantee, key_name, op.value),
            )

    def suspend(self, grantee: str, reason: str, now: float) -> None:
        tag = self._master.row_tag("suspensions", grantee, reason, now)
        self._db.execute(
            "INSERT OR REPLACE INTO suspensions (grantee, reason, since, tag) VALUES (?, ?, ?, ?)",
            (grantee, reason, now, tag),
        )

    def restore(self, grantee: str) -> None:
        self._db.execute("DELETE FROM suspensions WHERE grantee = ?", (grantee,))

    def drop_key(self, key_name: str) -> None:
        """Remove every grant on one key name (the key was purged; a new key of that name starts clean)."""
        self._db.execute("DELETE FROM grants WHERE key_name = ?", (key_name,))

    def _verified(self, grant: Grant, tag: bytes) -> KeyOp:
        if not self._master.row_tag_ok(tag, "grants", grant.grantee, grant.key_name, grant.op.value):
            raise IntegrityError(
                f"the grant of {grant.op.value} on {grant.key_name!r} to {grant.grantee!r} "
                "failed its integrity check"
            )
        return grant.op


def _op(value: str) -> KeyOp:
    try:
        return KeyOp(value)
    except ValueError:
        raise IntegrityError(f"the access policy holds an unknown operation {value!r}") from None
