"""Training nodes against a real ``vigil run``: seeded by ``vigil node seed``, a node attests with software
SEV-SNP evidence, gets its data key, trains on the encrypted Iris set to a low loss, sends signed telemetry
and an encrypted checkpoint; a quarantined node stops within seconds and is refused its key afterwards."""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.streams.test_embedded import COMMANDS, Daemon, _metrics
from vigil.platform.client import PlatformClient
from vigil.platform.compute import NodeState
from vigil.platform.errors import ForbiddenError
from vigil.platform.local.masterkey import MasterKey
from vigil.training_node import commands, dataset
from vigil.training_node.evidence import LaunchConfig, SoftwareTee
from vigil.training_node.node import CHECKPOINT_MAGIC, TrainingNode
from vigil.training_node.telemetry import canonical, pss

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*NumPy.*")
    import torch

RULES = Path(__file__).resolve().parents[2] / "rules"
MEASUREMENT = (
    "3c9e7a15f2d84b60a9c1e3f5b7d9021468ace0f2b4d6089a1c3e5f7b9d0f2a4c6e8a0c2e4f6b8d0a2c4e6f8a0b2c4d6e"
)
LOSS_BOUND = 0.5


class Running:
    def __init__(self, base: str, work: Path) -> None:
        self.base, self.work = base, work
        self.var = work / "var"
        self.operator = (self.var / "platform" / "operator.token").read_text().strip()

    def seed(self, node_id: str) -> None:
        parser = argparse.ArgumentParser()
        commands.add_parsers(parser.add_subparsers(dest="command"))
        argv = ["node", "seed", "--config", str(self.work / "profile.yaml"), "--node-id", node_id]
        argv += ["--url", self.base]
        assert commands.run(parser.parse_args(argv)) == 0

    def node(self, node_id: str, epochs: int) -> TrainingNode:
        master = MasterKey.from_file(self.var / "platform" / "master.key", create=False)
        tee = SoftwareTee.load_or_create(
            self.var / "platform" / "tee",
            LaunchConfig(bytes.fromhex(MEASUREMENT)),
            key_bits=2048,
            master=master,
        )
        token = (self.var / "platform" / "nodes" / f"{node_id}.token").read_text().strip()
        return TrainingNode(
            self.base,
            token,
            node_id,
            tee,
            container="training",
            key_name="data-key",
            epochs=epochs,
            ingest_url=self.base,
            ingest_token=(self.var / "ingest.token").read_text().strip(),
            measurement=MEASUREMENT,
            heartbeat_s=0.5,
        )

    def ingested(self, family: str = "vigil_ingest_events_total") -> float:
        """The counter summed over its ``source`` labels."""
        samples = _metrics(httpx.get(f"{self.base}/metrics").text)
        return sum(v for k, v in samples.items() if k == family or k.startswith(family + "{"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    work = tmp_path_factory.mktemp("nodes")
    (work / "profile.yaml").write_text(
        f"data_dir: {work / 'var'}\nhttp:\n  port: 0\ndetect:\n  rules: {RULES}\n"
        f"platform:\n  allowed_measurements: [{MEASUREMENT}]\n  tee_key_bits: 2048\n",
        encoding="utf-8",
    )
    proc = Daemon([*COMMANDS["cli"], str(work / "profile.yaml")], work)
    try:
        base = proc.wait_for_log(r"serving on (http://127\.0\.0\.1:\d+)").group(1)
        yield Running(base, work)
    finally:
        proc.stop()


def test_the_iris_set_loads_and_a_bad_row_is_refused() -> None:
    x, y = dataset.load(dataset.encode())
    assert x.shape == (150, 4) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [50, 50, 50]
    assert abs(float(x[:, 0].mean()) - 5.843) < 1e-3  # the set's well-known mean sepal length
    bad = dataset.encode().replace(b"5.1,3.5,1.4,0.2,setosa", b"5.1,x,1.4,0.2,setosa", 1)
    with pytest.raises(ValueError, match="row 2"):
        dataset.load(bad)


def test_a_node_attests_trains_below_the_bound_and_reports_signed_telemetry(daemon: Running) -> None:
    daemon.seed("node-1")
    before = daemon.ingested()

    async def scenario() -> None:
        async with daemon.node("node-1", epochs=40) as node:
            await node.attest()
            assert node.claims["x-ms-sevsnpvm-launchmeasurement"] == MEASUREMENT
            await node.release_data_key()
            record = node._record("heartbeat")  # the signature verifies with the attested public key
            public = serialization.load_pem_public_key(node.public_pem)
            assert isinstance(public, rsa.RSAPublicKey)
            sig = base64.urlsafe_b64decode(record["sig"] + "==")
            public.verify(sig, canonical(record), pss(), hashes.SHA256())

            result = await node.train()
            assert result.stopped == "completed" and result.epochs == 40
            assert result.losses[-1] < LOSS_BOUND < result.losses[0], result.losses
            assert node.sent > 40 * 5 and node.failed == 0

            async with PlatformClient(daemon.base, daemon.operator) as op:
                name = result.checkpoints[-1]
                stored = await op.storage.read("vigil", "training", name)
                assert stored.startswith(CHECKPOINT_MAGIC) and b"PK\x03\x04" not in stored
                state = torch.load(io.BytesIO(node.open_checkpoint(stored, name)), weights_only=True)
                assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias"}
                assert (await op.compute.get_node("vigil", "node-1")).state is NodeState.STOPPED

    asyncio.run(scenario())
    end = time.monotonic() + 10
    while daemon.ingested() < before + 200 and time.monotonic() < end:
        time.sleep(0.1)
    assert daemon.ingested() >= before + 200
    assert daemon.ingested("vigil_ingest_dead_letters_total") == 0  # every record is valid telemetry


def test_a_quarantined_node_stops_within_seconds_and_is_refused_its_key(daemon: Running) -> None:
    daemon.seed("node-2")

    async def scenario() -> None:
        async with daemon.node("node-2", epochs=1_000_000) as node:
            await node.attest()
            await node.release_data_key()
            training = asyncio.create_task(node.train())
            while node.sent < 60 and not training.done():
                await asyncio.sleep(0.05)
            assert not training.done()
            async with PlatformClient(daemon.base, daemon.operator) as op:
                await op.compute.quarantine("vigil", "node-2", reason="test", evidence={})
                began = time.monotonic()
                result = await asyncio.wait_for(training, timeout=5)
                assert time.monotonic() - began < 5
                assert result.stopped == "quarantined" and 0 < result.epochs < 1_000_000
                assert repr(node).endswith("no key)") and not node.attested

                await node.attest()  # the evidence is still good; the vault refuses the suspended node
                with pytest.raises(ForbiddenError):
                    await node.release_data_key()
                assert (await op.compute.get_node("vigil", "node-2")).state is NodeState.QUARANTINED

    asyncio.run(scenario())
