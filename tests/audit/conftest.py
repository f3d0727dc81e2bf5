"""Shared pieces of the audit tests: a real local key vault, an opened log, tamper helpers.

No fakes: the vault is :class:`~vigil.platform.local.keyvault.LocalKeyVault` over its own SQLite file, and
tampering is done the way an attacker would, with SQL on the database file (dropping the append-only
triggers first).
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from vigil.audit.log import AuditLog
from vigil.audit.verify import PublicKeys, public_keys
from vigil.platform.local.keyvault import LocalKeyVault
from vigil.platform.local.masterkey import MasterKey

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def open_vault(root: Path) -> LocalKeyVault:
    """The local vault under ``root`` (master key file created on first use), principal ``vigil`` admin."""
    return LocalKeyVault(root / "vault.db", MasterKey.from_file(root / "master.key"))


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[LocalKeyVault]:
    v = open_vault(tmp_path / "platform")
    yield v
    v.close()


def keys_of(vault: LocalKeyVault) -> PublicKeys:
    return run(public_keys(vault))


async def filled_log(log: AuditLog, count: int, *, start: int = 0, batch: int = 1) -> None:
    """Open ``log``, append ``count`` records (in batches of ``batch``) and close it."""
    from vigil.audit.record import Actor, AuditEntry, AuditKind

    await log.open()
    try:
        for i in range(start, start + count, batch):
            entries = [
                AuditEntry(Actor.rule(f"rule-{n % 3}"), AuditKind.FINDING, f"vm/{n}", {"n": n, "why": "test"})
                for n in range(i, min(i + batch, start + count))
            ]
            await log.append_many(entries)
    finally:
        await log.close()


def tamper(path: Path, *sql: str, params: tuple[Any, ...] = ()) -> None:
    """Run ``sql`` on the audit database as an attacker with file access would (triggers dropped)."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for trigger in (
            "records_no_update",
            "records_no_delete",
            "checkpoints_no_update",
            "checkpoints_no_delete",
        ):
            db.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        for stmt in sql:
            db.execute(stmt, params if "?" in stmt else ())
    finally:
        db.close()


def copy_db(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


Tamper = Callable[[Path], None]
