"""One daemon-like process for the response crash sweep, and the local platform the executor tests share.

``python -m tests.response.crash_worker WORK REMEDIATION`` opens the local platform, the audit log and the
action store under ``WORK`` as the daemon does (the audit log is the platform's observer, through an
:class:`~vigil.audit.checkpoint.AuditObserver`, so every platform change is on record in a file), creates
the target and one approved action the first time, then runs :meth:`Executor.resume` and prints the
action's final state. With ``VIGIL_CRASH_AT`` set it dies at that crash point; the next run resumes.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from vigil.audit.checkpoint import AuditObserver
from vigil.audit.log import AuditLog
from vigil.platform.events import PlatformEvent, PlatformObserver
from vigil.platform.keyvault import KeyKind
from vigil.platform.local.compute import LocalCompute
from vigil.platform.local.keyvault import LocalKeyVault
from vigil.platform.local.masterkey import MasterKey
from vigil.platform.local.storage import LocalStorage
from vigil.remediators.base import Context, Protected
from vigil.response.executor import Executor
from vigil.response.model import Action, ActionState, idempotency_key
from vigil.response.store import ActionStore

ADMIN = "vigil"
CONTAINER = "training-data"
NODE = "node-1"
MEASUREMENT = "3c" * 48
TARGETS = {"lock_storage": CONTAINER, "quarantine_vm": NODE}


class Relay:
    """A platform observer that forwards to another one set later (the audit log opens after the vault)."""

    def __init__(self) -> None:
        self.target: PlatformObserver | None = None

    async def record(self, event: PlatformEvent) -> None:
        if self.target is not None:
            await self.target.record(event)


class Platform:
    """The three local providers under ``root``, as the daemon opens them, and the executor's context."""

    def __init__(self, root: Path, observer: PlatformObserver, protected: Protected | None = None) -> None:
        master = MasterKey.from_file(root / "master.key")
        self.vault = LocalKeyVault(root / "vault.db", master, observer=observer)
        self.storage = LocalStorage(root / "storage", self.vault, observer=observer, chunk_size=1 << 16)
        self.compute = LocalCompute(root / "compute.db", self.vault, self.storage, observer=observer)
        self.ctx = Context(self.vault, self.storage, self.compute, ADMIN, protected or Protected())

    async def add_container(self, name: str = CONTAINER, *, public: bool = True) -> None:
        await self.vault.create_key(ADMIN, f"{name}-key", KeyKind.AES256)
        await self.storage.create_container(ADMIN, name, key_name=f"{name}-key")
        await self.storage.put(ADMIN, name, "shard-0", b"training data")
        if public:
            await self.storage.set_public_read(ADMIN, name, True)

    async def add_node(self, name: str = NODE) -> None:
        await self.compute.register(ADMIN, name, node_principal=name, measurement=MEASUREMENT)

    def close(self) -> None:
        self.compute.close()
        self.storage.close()
        self.vault.close()


def new_action(
    remediation: str, target: str, n: int = 1, *, params: dict[str, object] | None = None, **fields: object
) -> Action:
    """An ``approved`` action as the engine would create it for a finding of rule ``r.exfil``."""
    values: dict[str, object] = {
        "id": f"act-{n}",
        "idem_key": idempotency_key("r.exfil", target, remediation, n),
        "rule": "r.exfil",
        "rule_author": "carol",
        "finding_id": f"finding-{n}",
        "incident_id": "incident-1",
        "remediation": remediation,
        "target": target,
        "params": params or {},
        "approval": "auto",
        "dry_run": False,
        "state": ActionState.APPROVED,
        "created": 1000.0 + n,
        "updated": 1000.0 + n,
    }
    values.update(fields)
    return Action(**values)  # type: ignore[arg-type]


async def main(work: Path, remediation: str) -> str:
    relay = Relay()
    platform = Platform(work / "platform", relay)
    audit = AuditLog(work / "audit.db", platform.vault)
    store = ActionStore(work / "vigil.db")
    try:
        await audit.open()
        relay.target = AuditObserver(audit)
        if store.get("act-1") is None:  # the first run: the target, then the decided action
            await (platform.add_container() if remediation == "lock_storage" else platform.add_node())
            store.create(new_action(remediation, TARGETS[remediation]))
        await Executor(store, platform.ctx, audit).resume()
        final = store.get("act-1")
        assert final is not None
        return final.state.value
    finally:
        store.close()
        await audit.close()
        platform.close()


if __name__ == "__main__":
    print(asyncio.run(main(Path(sys.argv[1]), sys.argv[2])))
