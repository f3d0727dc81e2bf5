"""The local secure storage over the real local key vault: data, damage, keys, locks, rights, events, restarts."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from vigil.platform.errors import (
    AlreadyExistsError,
    ConflictError,
    DisabledError,
    ForbiddenError,
    IntegrityError,
    LockedError,
    NotFoundError,
    PlatformError,
)
from vigil.platform.events import CollectingObserver, PlatformEvent
from vigil.platform.keyvault import WrappedKey
from vigil.platform.local.envelope import MIN_CHUNK, TAG_SIZE
from vigil.platform.local.keyvault import LocalKeyVault
from vigil.platform.local.masterkey import MasterKey
from vigil.platform.local.storage import LocalStorage
from vigil.platform.storage import Lock, StorageOp

C = MIN_CHUNK
R = C + TAG_SIZE  # one sealed chunk on disk


class Observer(CollectingObserver):
    """Collects events; raises for the operations named in ``fail`` (as an audit log that cannot write)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: set[str] = set()

    async def record(self, event: PlatformEvent) -> None:
        if event.kind.rsplit(".", 1)[1] in self.fail:
            raise RuntimeError("audit log unavailable")
        await super().record(event)


class Env:
    """A vault with key ``data-key`` and a storage with container ``data``; admins ``vigil`` and ``ops``."""

    def __init__(self, tmp_path: Path) -> None:
        self.root = tmp_path / "storage"
        self.vault = LocalKeyVault(tmp_path / "vault.db", MasterKey.generate())
        self.observer = Observer()
        self.storage = self.open()

    def open(self) -> LocalStorage:
        return LocalStorage(
            self.root, self.vault, observer=self.observer, admins=("vigil", "ops"), chunk_size=C
        )

    async def setup(self) -> None:
        await self.vault.create_key("vigil", "data-key")
        await self.storage.create_container("vigil", "data", key_name="data-key")

    def object_id(self, name: str, container: str = "data") -> str:
        with sqlite3.connect(self.root / "storage.db") as db:
            row = db.execute("SELECT object_id FROM objects WHERE container=? AND name=?", (container, name))
            return str(row.fetchone()[0])

    def data_file(self, name: str) -> Path:
        return self.root / "objects" / "data" / self.object_id(name)

    def sql(self, statement: str, *args: object) -> None:
        with sqlite3.connect(self.root / "storage.db") as db:
            db.execute(statement, args)


def run(tmp_path: Path, body: Callable[[Env], Awaitable[None]]) -> Env:
    env = Env(tmp_path)

    async def main() -> None:
        await env.setup()
        await body(env)

    try:
        asyncio.run(main())
    finally:
        env.storage.close()
        env.vault.close()
    return env


async def blocks(data: bytes, sizes: list[int]) -> AsyncIterator[bytes]:
    pos, i = 0, 0
    while pos < len(data):
        yield data[pos : pos + sizes[i % len(sizes)]]
        pos += sizes[i % len(sizes)]
        i += 1


def test_round_trip_at_chunk_boundaries_and_streamed_puts(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        s = env.storage
        for size in (0, 1, C - 1, C, C + 1, 5 * C + 3):
            data = os.urandom(size)
            info = await s.put("vigil", "data", f"obj-{size}", data, metadata={"size": str(size)})
            assert (info.size, info.chunk_size, info.metadata) == (size, C, {"size": str(size)})
            chunks = [chunk async for chunk in s.get("vigil", "data", f"obj-{size}")]
            assert b"".join(chunks) == data
            assert all(len(chunk) == C for chunk in chunks[:-1])
            assert await s.head("vigil", "data", f"obj-{size}") == info
            assert env.data_file(f"obj-{size}").stat().st_size >= size + TAG_SIZE
        big = os.urandom(9 * 1024 * 1024 + 5)  # more than one 8 MiB batch, in odd-sized blocks
        info = await s.put("vigil", "data", "streamed", blocks(big, [1, 7, C - 3, 100_003, 2 * C + 5]))
        assert info.size == len(big)
        assert await s.read("vigil", "data", "streamed") == big
        names = [o.name for o in await s.list_objects("vigil", "data", prefix="obj-")]
        assert names == sorted(f"obj-{n}" for n in (0, 1, C - 1, C, C + 1, 5 * C + 3))
        assert b"\x00" * 100 not in env.data_file("obj-65536").read_bytes()  # urandom stays random, sealed

    run(tmp_path, body)


@pytest.mark.parametrize("how", ["byte", "swap", "drop_final", "append", "other_file", "wrapped", "garbage"])
def test_damage_on_disk_is_an_integrity_error(tmp_path: Path, how: str) -> None:
    async def body(env: Env) -> None:
        s = env.storage
        data = os.urandom(3 * C + 10)
        await s.put("vigil", "data", "victim", data)
        await s.put("vigil", "data", "other", os.urandom(3 * C + 10))
        path = env.data_file("victim")
        raw = bytearray(path.read_bytes())
        header = len(raw) - 3 * R - (10 + TAG_SIZE)
        chunks = [bytes(raw[header + i * R : header + (i + 1) * R]) for i in range(4)]
        if how == "byte":
            raw[header + R + 5] ^= 1
        elif how == "swap":
            raw[header:] = chunks[0] + chunks[2] + chunks[1] + chunks[3]
        elif how == "drop_final":
            raw[header:] = b"".join(chunks[:3])
        elif how == "append":
            raw[header:] = b"".join(chunks) + chunks[1]
        elif how == "other_file":
            raw[:] = env.data_file("other").read_bytes()
        else:
            wrapped = WrappedKey.from_json(json.loads(_wrapped_json(env, "victim")))
            text = (
                "not json"
                if how == "garbage"
                else json.dumps(
                    WrappedKey(
                        wrapped.key_name,
                        wrapped.version,
                        wrapped.ciphertext[:-1] + bytes([wrapped.ciphertext[-1] ^ 1]),
                    ).to_json()
                )
            )
            env.sql("UPDATE objects SET wrapped_key = ? WHERE name = 'victim'", text)
        path.write_bytes(raw)
        with pytest.raises(IntegrityError, match=r"victim|wrapped key") as err:
            await s.read("vigil", "data", "victim")
        expected = {"byte": "chunk 1 ", "swap": "chunk 1 ", "drop_final": "chunk 3 ", "append": "chunk 3 "}
        assert expected.get(how, "") in str(err.value)
        assert await s.read("vigil", "data", "other")  # the neighbour is unaffected

    run(tmp_path, body)


def _wrapped_json(env: Env, name: str) -> str:
    with sqlite3.connect(env.root / "storage.db") as db:
        return str(db.execute("SELECT wrapped_key FROM objects WHERE name = ?", (name,)).fetchone()[0])


def test_rotation_rewrap_and_disabling_the_old_version(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        s, vault = env.storage, env.vault
        old = await s.put("vigil", "data", "old", b"written before the rotation" * 5000)
        first = old.key_version
        second = (await vault.rotate_key("vigil", "data-key")).version
        new = await s.put("vigil", "data", "new", b"after")
        assert new.key_version == second != first
        assert await s.read("vigil", "data", "old") == b"written before the rotation" * 5000
        await vault.set_version_enabled("vigil", "data-key", first, False)
        with pytest.raises(DisabledError):
            await s.read("vigil", "data", "old")  # not rewrapped yet: the old version is needed
        await vault.set_version_enabled("vigil", "data-key", first, True)
        digest = hashlib.sha256(env.data_file("old").read_bytes()).hexdigest()
        assert await s.rewrap("vigil", "data") == 2
        assert hashlib.sha256(env.data_file("old").read_bytes()).hexdigest() == digest  # data untouched
        assert (await s.head("vigil", "data", "old")).key_version == second
        await vault.set_version_enabled("vigil", "data-key", first, False)
        assert await s.read("vigil", "data", "old") == b"written before the rotation" * 5000
        assert await s.read("vigil", "data", "new") == b"after"
        event = env.observer.events[-1]
        assert (event.kind, event.details) == (
            "platform.storage.rewrap",
            {"objects": 2, "key_versions": [second]},
        )

    run(tmp_path, body)


def test_locks_bind_every_principal_through_the_api(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        s = env.storage
        await s.set_access("vigil", "data", "writer", frozenset({StorageOp.READ, StorageOp.WRITE}))
        await s.put("vigil", "data", "x", b"payload")
        assert (await s.set_lock("ops", "data", Lock.READ_ONLY)).lock is Lock.READ_ONLY
        for who in ("vigil", "ops", "writer"):
            with pytest.raises(LockedError, match=r"container data is locked \(read_only\)"):
                await s.put(who, "data", "y", b"new")
            with pytest.raises(LockedError):
                await s.delete(who, "data", "x")
            assert await s.read(who, "data", "x") == b"payload"
        with pytest.raises(LockedError):
            await s.delete_container("vigil", "data")
        await s.set_lock("vigil", "data", Lock.NO_ACCESS)
        for who in ("vigil", "writer"):
            with pytest.raises(LockedError, match="no_access"):
                await s.read(who, "data", "x")
            with pytest.raises(LockedError):
                await s.head(who, "data", "x")
            with pytest.raises(LockedError):
                await s.list_objects(who, "data")
        assert (await s.get_container("writer", "data")).lock is Lock.NO_ACCESS  # the state stays visible
        assert await s.rewrap("vigil", "data") == 1  # remediation still works under a lock
        denied = [e for e in env.observer.events if e.outcome == "denied"]
        assert {e.kind for e in denied} >= {
            "platform.storage.put",
            "platform.storage.get",
            "platform.storage.head",
        }
        assert all(e.details["error"] == "locked" for e in denied)
        await s.set_lock("vigil", "data", Lock.NONE)
        await s.put("writer", "data", "y", b"new")
        assert await s.read("writer", "data", "y") == b"new"

    run(tmp_path, body)


def test_access_rules_public_flag_and_names(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        s = env.storage
        await s.put("vigil", "data", "x", b"payload")
        info = await s.set_access("vigil", "data", "reader", frozenset({StorageOp.READ}))
        assert info.access == {"reader": frozenset({StorageOp.READ})}
        assert await s.read("reader", "data", "x") == b"payload"
        assert [c.name for c in await s.list_containers("reader")] == ["data"]
        with pytest.raises(ForbiddenError, match="principal reader may not write container data"):
            await s.put("reader", "data", "y", b"no")
        with pytest.raises(ForbiddenError):
            await s.set_lock("reader", "data", Lock.NONE)
        for call in (s.read("stranger", "data", "x"), s.head("stranger", "data", "x")):
            with pytest.raises(ForbiddenError, match="stranger"):
                await call
        with pytest.raises(ForbiddenError):
            await s.get_container("stranger", "data")
        with pytest.raises(ForbiddenError, match="not a storage admin"):
            await s.create_container("reader", "mine", key_name="data-key")
        assert await s.list_containers("stranger") == []
        await s.set_access("vigil", "data", "keeper", frozenset({StorageOp.ADMIN}))
        await s.set_lock("keeper", "data", Lock.NONE)  # admin on the container, but no data access
        with pytest.raises(ForbiddenError):
            await s.read("keeper", "data", "x")
        with pytest.raises(ForbiddenError):
            await s.read("anonymous", "data", "x")
        await s.set_public_read("vigil", "data", True)
        assert await s.read("anonymous", "data", "x") == b"payload"
        with pytest.raises(ForbiddenError):
            await s.put("anonymous", "data", "y", b"no")
        assert (await s.set_public_read("vigil", "data", False)).public_read is False
        await s.set_access("vigil", "data", "reader", frozenset())
        with pytest.raises(ForbiddenError):
            await s.read("reader", "data", "x")
        with pytest.raises(AlreadyExistsError):
            await s.create_container("vigil", "data", key_name="data-key")
        with pytest.raises(PlatformError, match="invalid container name"):
            await s.create_container("vigil", "Bad_Name", key_name="data-key")
        with pytest.raises(NotFoundError):
            await s.read("vigil", "data", "missing")
        with pytest.raises(NotFoundError):
            await s.head("vigil", "nope", "x")
        denied = [e for e in env.observer.events if e.outcome == "denied"]
        assert all(e.details["error"] == "forbidden" for e in denied) and len(denied) >= 8

    run(tmp_path, body)


def test_suspension_cuts_access_at_once_and_restore_gives_it_back(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        s = env.storage
        await s.put("vigil", "data", "x", b"payload")
        await s.set_access("vigil", "data", "node-1", frozenset({StorageOp.READ, StorageOp.WRITE}))
        stream = s.get("node-1", "data", "x")
        await s.set_suspended("vigil", "node-1", True, reason="quarantine: attestation failed")
        for call in (stream.__anext__(), s.put("node-1", "data", "y", b"z"), s.list_containers("node-1")):
            with pytest.raises(ForbiddenError, match="principal node-1 is suspended: quarantine"):
                await call
        assert (await s.get_container("vigil", "data")).access["node-1"] == {StorageOp.READ, StorageOp.WRITE}
        with pytest.raises(ConflictError):
            await s.set_suspended("vigil", "vigil", True)
        with pytest.raises(ForbiddenError):
            await s.set_suspended("node-1", "node-1", False)
        await s.set_suspended("ops", "node-1", False)
        assert await s.read("node-1", "data", "x") == b"payload"
        kinds = [(e.kind, e.subject, e.details.get("suspended")) for e in env.observer.events]
        assert ("platform.storage.set_suspended", "node-1", True) in kinds

    run(tmp_path, body)


def test_observer_abort_leaves_no_change(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        s, obs = env.storage, env.observer
        await s.put("vigil", "data", "kept", b"v1")
        obs.fail = {"put", "delete", "set_lock", "set_access", "create_container", "rewrap"}
        for size in (10, 3 * C):
            with pytest.raises(RuntimeError, match="audit log"):
                await s.put("vigil", "data", "new", os.urandom(size))
        with pytest.raises(RuntimeError):
            await s.put("vigil", "data", "kept", b"v2")
        with pytest.raises(NotFoundError):
            await s.head("vigil", "data", "new")
        assert sorted(p.name for p in (env.root / "objects" / "data").iterdir()) == [env.object_id("kept")]
        assert await s.read("vigil", "data", "kept") == b"v1"
        with pytest.raises(RuntimeError):
            await s.delete("vigil", "data", "kept")
        with pytest.raises(RuntimeError):
            await s.set_lock("vigil", "data", Lock.NO_ACCESS)
        with pytest.raises(RuntimeError):
            await s.set_access("vigil", "data", "reader", frozenset({StorageOp.READ}))
        with pytest.raises(RuntimeError):
            await s.create_container("vigil", "more", key_name="data-key")
        with pytest.raises(RuntimeError):
            await s.rewrap("vigil", "data")
        info = await s.get_container("vigil", "data")
        assert (info.lock, info.access) == (Lock.NONE, {})
        assert [c.name for c in await s.list_containers("vigil")] == ["data"]
        assert await s.read("vigil", "data", "kept") == b"v1"
        obs.fail = {"get"}  # a denial whose event cannot be written is still the denial
        with pytest.raises(ForbiddenError):
            await s.read("stranger", "data", "kept")

    run(tmp_path, body)


def test_restart_keeps_everything_and_cleans_orphans(tmp_path: Path) -> None:
    state: dict[str, bytes] = {}

    async def body(env: Env) -> None:
        s = env.storage
        state["a"], state["b"] = os.urandom(2 * C + 1), b"small"
        await s.put("vigil", "data", "a", state["a"])
        await s.put("vigil", "data", "b", state["b"], metadata={"owner": "team-x"})
        await s.set_access("vigil", "data", "reader", frozenset({StorageOp.READ}))
        await s.set_suspended("vigil", "node-9", True, reason="drill")
        await s.set_lock("vigil", "data", Lock.READ_ONLY)
        env.storage.close()
        objects = env.root / "objects"
        (objects / "data" / ("0" * 32)).write_bytes(b"a put that crashed before its commit")
        (objects / "data" / ".1234.tmp").write_bytes(b"half written")
        (objects / "gone").mkdir()
        (objects / "gone" / ("f" * 32)).write_bytes(b"a deleted container's leftovers")
        env.storage = s = env.open()
        assert sorted(p.name for p in (objects / "data").iterdir()) == sorted(
            [env.object_id("a"), env.object_id("b")]
        )
        assert not (objects / "gone").exists()
        assert await s.read("reader", "data", "a") == state["a"]
        assert (await s.head("reader", "data", "b")).metadata == {"owner": "team-x"}
        info = await s.get_container("vigil", "data")
        assert (info.lock, info.access, info.key_name) == (
            Lock.READ_ONLY,
            {"reader": {StorageOp.READ}},
            "data-key",
        )
        await s.set_access("vigil", "data", "node-9", frozenset({StorageOp.READ}))
        with pytest.raises(ForbiddenError, match="suspended: drill"):
            await s.read("node-9", "data", "a")

    run(tmp_path, body)


def test_replace_delete_and_readers_keep_their_version(tmp_path: Path) -> None:
    async def body(env: Env) -> None:
        s = env.storage
        first = os.urandom(3 * C)
        await s.put("vigil", "data", "x", first)
        old_file = env.data_file("x")
        stream = s.get("vigil", "data", "x")
        head = await stream.__anext__()  # the reader has opened the old version
        await s.put("vigil", "data", "x", b"second")
        assert not old_file.exists()  # the replaced data file is gone from the directory at once
        rest = [chunk async for chunk in stream]
        assert head + b"".join(rest) == first
        assert await s.read("vigil", "data", "x") == b"second"
        put = next(e for e in reversed(env.observer.events) if e.kind == "platform.storage.put")
        assert (put.subject, put.details["size"], put.details["replaced"]) == ("data/x", 6, old_file.name)
        await s.delete("vigil", "data", "x")
        with pytest.raises(NotFoundError):
            await s.read("vigil", "data", "x")
        assert list((env.root / "objects" / "data").iterdir()) == []
        await s.put("vigil", "data", "y", b"y")
        await s.delete_container("vigil", "data")
        assert not (env.root / "objects" / "data").exists()
        with pytest.raises(NotFoundError):
            await s.get_container("vigil", "data")

    run(tmp_path, body)
