"""The local compute provider: the registry of training nodes, and quarantine.

Locally a training node is a process on this machine that registered with the platform under its own
principal. The registry is one SQLite table (``compute.db``), so a restart of the daemon keeps every node's
state, and a quarantine outlives the process that ordered it.

Quarantine is ordered for speed of effect, not of bookkeeping:

1. the node's principal is *suspended* in the key vault and in the storage, which cuts key release, unwrap
   and every object read at once, even if the node never hears the stop (a compromised node would not obey);
2. the state becomes ``quarantined`` in the registry, which is the node's control channel: a node polls its
   own record (``get_node`` with its own principal) and stops when it reads ``quarantined``;
3. when the node registered a ``control_url``, a stop command is also pushed there at once (best effort,
   two seconds; whether it was delivered is kept in the quarantine record, since the poll is the guarantee).

Release from quarantine lifts both suspensions and puts the node back to ``pending``: it must attest again
before the vault releases it a key.

Who may do what: ``admins`` everything; a node's own principal may read its own record and report its own
``running`` or ``stopped`` state (never ``attested``: only the attestation service, an admin principal, may
say that); ``readers`` may list and read. Anything else is :class:`ForbiddenError`.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import orjson

from vigil.platform.compute import Node, NodeState, check_state_change
from vigil.platform.errors import (
    AlreadyExistsError,
    ConflictError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
)
from vigil.platform.events import NullObserver, PlatformEvent, PlatformObserver
from vigil.platform.keyvault import KeyVault
from vigil.platform.storage import Storage

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    principal TEXT NOT NULL UNIQUE,
    measurement TEXT NOT NULL,
    state TEXT NOT NULL,
    updated REAL NOT NULL,
    control_url TEXT NOT NULL DEFAULT '',
    quarantine TEXT NOT NULL DEFAULT '{}',
    labels TEXT NOT NULL DEFAULT '{}'
);
"""

STOP_TIMEOUT = 2.0


class LocalCompute:
    """The registry of local training nodes (implements :class:`vigil.platform.compute.Compute`)."""

    def __init__(
        self,
        path: Path,
        vault: KeyVault,
        storage: Storage,
        *,
        observer: PlatformObserver | None = None,
        admins: Iterable[str] = ("vigil",),
        readers: Iterable[str] = (),
        service_principal: str = "vigil",
    ) -> None:
        self._vault = vault
        self._storage = storage
        self._observer: PlatformObserver = observer or NullObserver()
        self._admins = frozenset(admins)
        self._readers = frozenset(readers)
        self._service = service_principal
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- reads ---------------------------------------------------------------------------------------------

    async def get_node(self, principal: str, node_id: str) -> Node:
        node = self._load(node_id)
        if principal not in self._admins and principal not in self._readers and principal != node.principal:
            raise ForbiddenError(f"principal {principal!r} may not read node {node_id!r}")
        return node

    async def list_nodes(self, principal: str) -> list[Node]:
        self._require_reader(principal)
        rows = self._db.execute("SELECT * FROM nodes ORDER BY id").fetchall()
        return [_node(row) for row in rows]

    # -- changes -------------------------------------------------------------------------------------------

    async def register(
        self,
        principal: str,
        node_id: str,
        *,
        node_principal: str,
        measurement: str,
        control_url: str = "",
        labels: dict[str, str] | None = None,
    ) -> Node:
        self._require_admin(principal, "register nodes")
        if not node_id or not node_principal:
            raise InvalidError("a node needs an id and a principal")
        _check_measurement(measurement)
        if control_url and not control_url.startswith(
            ("http://127.0.0.1", "http://localhost", "http://[::1]")
        ):
            raise InvalidError(f"control_url must be a loopback http:// URL, not {control_url!r}")
        if self._row(node_id) is not None:
            raise AlreadyExistsError(f"node {node_id!r} is already registered")
        if self._db.execute("SELECT 1 FROM nodes WHERE principal = ?", (node_principal,)).fetchone():
            raise AlreadyExistsError(f"principal {node_principal!r} already belongs to another node")
        node = Node(
            node_id, node_principal, measurement.lower(), NodeState.PENDING, time.time(), control_url,
            {}, dict(labels or {}),
        )  # fmt: skip
        await self._record(
            "register", principal, node, {"node_principal": node_principal, "state": "pending"}
        )
        self._store(node, insert=True)
        return node

    async def set_state(self, principal: str, node_id: str, state: NodeState) -> Node:
        node = self._load(node_id)
        state = NodeState(state)
        if not check_state_change(node, principal, state, self._admins):
            return node
        new = _replace(node, state=state)
        await self._record("state", principal, new, {"from": node.state.value, "to": state.value})
        self._store(new)
        return new

    async def quarantine(
        self, principal: str, node_id: str, *, reason: str, evidence: dict[str, Any]
    ) -> Node:
        self._require_admin(principal, "quarantine nodes")
        node = self._load(node_id)
        if node.state == NodeState.QUARANTINED:
            return node  # idempotent: a retried remediation changes nothing
        record = {"reason": reason, "evidence": evidence, "at": time.time(), "by": principal,
                  "previous_state": node.state.value}  # fmt: skip
        new = _replace(node, state=NodeState.QUARANTINED, quarantine=record)
        await self._record("quarantine", principal, new, {"reason": reason, "from": node.state.value})
        # cut access first: the suspensions take effect on the next call the node makes
        await self._vault.set_suspended(self._service, node.principal, True, reason=f"quarantined: {reason}")
        await self._storage.set_suspended(
            self._service, node.principal, True, reason=f"quarantined: {reason}"
        )
        self._store(new)
        delivered = await self._push_stop(node, reason)
        if node.control_url:
            new = _replace(new, quarantine={**record, "stop_delivered": delivered})
            self._store(new)
        return new

    async def release(self, principal: str, node_id: str, *, reason: str) -> Node:
        self._require_admin(principal, "release nodes")
        node = self._load(node_id)
        if node.state != NodeState.QUARANTINED:
            raise ConflictError(f"node {node_id!r} is {node.state.value}, not quarantined")
        new = _replace(node, state=NodeState.PENDING, quarantine={})
        await self._record("release", principal, new, {"reason": reason})
        await self._vault.set_suspended(self._service, node.principal, False, reason=f"released: {reason}")
        await self._storage.set_suspended(self._service, node.principal, False, reason=f"released: {reason}")
        self._store(new)
        return new

    # -- internals -----------------------------------------------------------------------------------------

    async def _push_stop(self, node: Node, reason: str) -> bool:
        """Tell the node to stop at once through its control URL; the registry state is the fallback."""
        if not node.control_url:
            return False
        body = {"command": "stop", "node": node.id, "reason": reason}
        try:
            async with httpx.AsyncClient(timeout=STOP_TIMEOUT) as client:
                response = await client.post(node.control_url, json=body)
            ok = 200 <= response.status_code < 300
        except httpx.HTTPError as exc:
            log.warning("node %s: stop command not delivered to its control URL: %s", node.id, exc)
            return False
        if not ok:
            log.warning("node %s: control URL answered %d to the stop command", node.id, response.status_code)
        return ok

    async def _record(self, op: str, principal: str, node: Node, details: dict[str, Any]) -> None:
        event = PlatformEvent(f"platform.node.{op}", principal, node.id, {"node": node.id, **details})
        await self._observer.record(event)

    def _require_admin(self, principal: str, what: str) -> None:
        if principal not in self._admins:
            raise ForbiddenError(f"principal {principal!r} may not {what}")

    def _require_reader(self, principal: str) -> None:
        if principal not in self._admins and principal not in self._readers:
            raise ForbiddenError(f"principal {principal!r} may not list nodes")

    def _row(self, node_id: str) -> sqlite3.Row | None:
        self._db.row_factory = sqlite3.Row
        row: sqlite3.Row | None = self._db.execute("SELECT * FROM nodes WHERE id = ?", (node_id,)).fetchone()
        return row

    def _load(self, node_id: str) -> Node:
        row = self._row(node_id)
        if row is None:
            raise NotFoundError(f"no node {node_id!r}")
        return _node(row)

    def _store(self, node: Node, *, insert: bool = False) -> None:
        values = (
            node.principal, node.measurement, node.state.value, node.updated, node.control_url,
            orjson.dumps(node.quarantine).decode(), orjson.dumps(node.labels).decode(), node.id,
        )  # fmt: skip
        if insert:
            self._db.execute(
                "INSERT INTO nodes (principal, measurement, state, updated, control_url, quarantine, labels,"
                " id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
        else:
            self._db.execute(
                "UPDATE nodes SET principal = ?, measurement = ?, state = ?, updated = ?, control_url = ?,"
                " quarantine = ?, labels = ? WHERE id = ?",
                values,
            )


def _node(row: sqlite3.Row) -> Node:
    return Node(
        id=row["id"],
        principal=row["principal"],
        measurement=row["measurement"],
        state=NodeState(row["state"]),
        updated=row["updated"],
        control_url=row["control_url"],
        quarantine=orjson.loads(row["quarantine"]),
        labels=orjson.loads(row["labels"]),
    )


def _replace(node: Node, **changes: Any) -> Node:
    return dataclasses.replace(node, updated=time.time(), **changes)


def _check_measurement(measurement: str) -> None:
    """A launch measurement is a SHA-384 digest in hex (SEV-SNP ``MEASUREMENT``, 48 bytes)."""
    try:
        raw = bytes.fromhex(measurement)
    except ValueError:
        raise InvalidError("measurement must be hex (the SHA-384 launch digest, 96 characters)") from None
    if len(raw) != 48:
        raise InvalidError(f"measurement must be 48 bytes (96 hex characters), not {len(raw)}")
