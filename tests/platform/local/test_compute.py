"""The local compute registry: node states, who may change them, and quarantine cutting access at once."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import pytest

from vigil.platform.compute import NodeState
from vigil.platform.errors import (
    AlreadyExistsError,
    ConflictError,
    ForbiddenError,
    InvalidError,
    NotFoundError,
)
from vigil.platform.events import CollectingObserver
from vigil.platform.keyvault import KeyOp
from vigil.platform.local.compute import LocalCompute
from vigil.platform.local.keyvault import LocalKeyVault
from vigil.platform.local.masterkey import MasterKey
from vigil.platform.local.storage import LocalStorage
from vigil.platform.storage import StorageOp

T = TypeVar("T")
MEASUREMENT = (
    "3c9e7a15f2d84b60a9c1e3f5b7d9021468ace0f2b4d6089a1c3e5f7b9d0f2a4c6e8a0c2e4f6b8d0a2c4e6f8a0b2c4d6e"
)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


class Platform:
    """The three local providers on one folder, as the daemon opens them."""

    def __init__(self, root: Path) -> None:
        self.observer = CollectingObserver()
        master = MasterKey.from_file(root / "master.key")
        self.vault = LocalKeyVault(root / "vault.db", master, observer=self.observer)
        self.storage = LocalStorage(root / "storage", self.vault, observer=self.observer)
        self.compute = LocalCompute(root / "compute.db", self.vault, self.storage, observer=self.observer)

    def close(self) -> None:
        self.compute.close()
        self.storage.close()
        self.vault.close()


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    p = Platform(tmp_path)
    yield p
    p.close()


def register(p: Platform, node_id: str = "node-1", principal: str = "node-1", url: str = "") -> Any:
    return run(
        p.compute.register(
            "vigil", node_id, node_principal=principal, measurement=MEASUREMENT, control_url=url
        )
    )


def test_register_then_the_node_reads_only_its_own_record(platform: Platform) -> None:
    node = register(platform)
    assert node.state is NodeState.PENDING and node.measurement == MEASUREMENT
    assert run(platform.compute.get_node("node-1", "node-1")).id == "node-1"
    register(platform, "node-2", "node-2")
    with pytest.raises(ForbiddenError):
        run(platform.compute.get_node("node-1", "node-2"))
    with pytest.raises(ForbiddenError):
        run(platform.compute.list_nodes("node-1"))
    assert [n.id for n in run(platform.compute.list_nodes("vigil"))] == ["node-1", "node-2"]
    with pytest.raises(NotFoundError):
        run(platform.compute.get_node("vigil", "nope"))


def test_register_refuses_duplicates_and_bad_measurements(platform: Platform) -> None:
    register(platform)
    with pytest.raises(AlreadyExistsError):
        register(platform)
    with pytest.raises(AlreadyExistsError, match="principal"):
        register(platform, "node-9", "node-1")
    with pytest.raises(InvalidError, match="96 hex"):
        run(platform.compute.register("vigil", "n", node_principal="n", measurement="abcd"))
    with pytest.raises(InvalidError, match="loopback"):
        register(platform, "n2", "n2", url="http://example.com/stop")
    with pytest.raises(ForbiddenError):
        run(platform.compute.register("node-1", "n3", node_principal="n3", measurement=MEASUREMENT))


def test_state_transitions_and_who_may_report_them(platform: Platform) -> None:
    register(platform)
    with pytest.raises(ForbiddenError, match="only running or stopped"):
        run(platform.compute.set_state("node-1", "node-1", NodeState.ATTESTED))
    with pytest.raises(ConflictError, match="pending to running"):
        run(platform.compute.set_state("vigil", "node-1", NodeState.RUNNING))
    assert run(platform.compute.set_state("vigil", "node-1", NodeState.ATTESTED)).state is NodeState.ATTESTED
    assert run(platform.compute.set_state("node-1", "node-1", NodeState.RUNNING)).state is NodeState.RUNNING
    with pytest.raises(ConflictError, match="use quarantine"):
        run(platform.compute.set_state("vigil", "node-1", NodeState.QUARANTINED))
    assert run(platform.compute.set_state("node-1", "node-1", NodeState.STOPPED)).state is NodeState.STOPPED
    kinds = [e.kind for e in platform.observer.events if e.kind.startswith("platform.node.")]
    assert kinds == [
        "platform.node.register",
        "platform.node.state",
        "platform.node.state",
        "platform.node.state",
    ]


def _give_node_access(p: Platform) -> tuple[Any, bytes]:
    """A data key the node may unwrap and a container it may read, with one object in it."""
    run(p.vault.create_key("vigil", "data-key"))
    run(p.vault.grant("vigil", "node-1", "data-key", {KeyOp.UNWRAP, KeyOp.WRAP}))
    wrapped = run(p.vault.wrap("node-1", "data-key", b"k" * 32))
    run(p.storage.create_container("vigil", "train", key_name="data-key"))
    run(p.storage.set_access("vigil", "train", "node-1", frozenset({StorageOp.READ})))
    run(p.storage.put("vigil", "train", "shard-0", b"tensor bytes"))
    return wrapped, b"tensor bytes"


def test_quarantine_cuts_key_and_storage_access_immediately_and_release_restores_it(
    platform: Platform,
) -> None:
    register(platform)
    wrapped, data = _give_node_access(platform)
    assert run(platform.vault.unwrap("node-1", wrapped)) == b"k" * 32
    assert run(platform.storage.read("node-1", "train", "shard-0")) == data
    run(platform.compute.set_state("vigil", "node-1", NodeState.ATTESTED))
    run(platform.compute.set_state("node-1", "node-1", NodeState.RUNNING))

    node = run(
        platform.compute.quarantine("vigil", "node-1", reason="R-042 fired", evidence={"finding": "f1"})
    )
    assert node.state is NodeState.QUARANTINED
    assert node.quarantine["reason"] == "R-042 fired" and node.quarantine["previous_state"] == "running"
    with pytest.raises(ForbiddenError, match="suspended"):
        run(platform.vault.unwrap("node-1", wrapped))
    with pytest.raises(ForbiddenError, match="suspended"):
        run(platform.storage.read("node-1", "train", "shard-0"))
    # the node sees its state (its control channel) but may not change it
    assert run(platform.compute.get_node("node-1", "node-1")).state is NodeState.QUARANTINED
    with pytest.raises(ConflictError):
        run(platform.compute.set_state("node-1", "node-1", NodeState.STOPPED))
    # idempotent: a retried remediation changes nothing
    again = run(platform.compute.quarantine("vigil", "node-1", reason="retry", evidence={}))
    assert again.quarantine["reason"] == "R-042 fired"

    released = run(platform.compute.release("vigil", "node-1", reason="false positive"))
    assert released.state is NodeState.PENDING and released.quarantine == {}
    assert run(platform.vault.unwrap("node-1", wrapped)) == b"k" * 32
    assert run(platform.storage.read("node-1", "train", "shard-0")) == data
    with pytest.raises(ConflictError, match="not quarantined"):
        run(platform.compute.release("vigil", "node-1", reason="twice"))


def test_only_admins_quarantine(platform: Platform) -> None:
    register(platform)
    with pytest.raises(ForbiddenError):
        run(platform.compute.quarantine("node-1", "node-1", reason="x", evidence={}))


class _StopReceiver(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def control_server() -> Iterator[Callable[[], tuple[str, list[dict[str, Any]]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StopReceiver)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/control"
    yield lambda: (url, server.received)  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def test_quarantine_pushes_stop_to_the_control_url(
    platform: Platform, control_server: Callable[[], tuple[str, list[dict[str, Any]]]]
) -> None:
    url, received = control_server()
    register(platform, url=url)
    node = run(platform.compute.quarantine("vigil", "node-1", reason="drift", evidence={}))
    assert received == [{"command": "stop", "node": "node-1", "reason": "drift"}]
    assert node.quarantine["stop_delivered"] is True


def test_an_unreachable_control_url_does_not_stop_the_quarantine(platform: Platform) -> None:
    register(platform, url="http://127.0.0.1:9/control")  # discard port: nothing listens
    node = run(platform.compute.quarantine("vigil", "node-1", reason="drift", evidence={}))
    assert node.state is NodeState.QUARANTINED and node.quarantine["stop_delivered"] is False


def test_an_observer_failure_aborts_the_quarantine(tmp_path: Path) -> None:
    p = Platform(tmp_path)
    try:
        register(p)

        class Refuse:
            async def record(self, event: Any) -> None:
                raise OSError("audit disk full")

        p.compute._observer = Refuse()
        with pytest.raises(OSError):
            run(p.compute.quarantine("vigil", "node-1", reason="x", evidence={}))
        assert run(p.compute.get_node("vigil", "node-1")).state is NodeState.PENDING
        run(p.vault.create_key("vigil", "k2"))
        run(p.vault.grant("vigil", "node-1", "k2", {KeyOp.WRAP}))
        run(p.vault.wrap("node-1", "k2", b"x" * 32))  # not suspended
    finally:
        p.close()


def test_the_registry_survives_a_restart(tmp_path: Path) -> None:
    p = Platform(tmp_path)
    register(p)
    run(p.compute.quarantine("vigil", "node-1", reason="drift", evidence={"telemetry": [1, 2]}))
    p.close()
    q = Platform(tmp_path)
    try:
        node = run(q.compute.get_node("vigil", "node-1"))
        assert node.state is NodeState.QUARANTINED and node.quarantine["evidence"] == {"telemetry": [1, 2]}
    finally:
        q.close()
