"""A training node: attest, get the data key released to it, train on the encrypted data set, report.

The sequence (docs/platform.md, "Attestation"):

1. :meth:`TrainingNode.attest` asks the attestation service for a single-use nonce, generates an
   **ephemeral** RSA-2048 key pair in memory, has its :class:`~vigil.training_node.evidence.Evidence`
   provider sign a report whose REPORT_DATA binds the nonce and the public key, and trades the evidence for
   an MAA-shaped token. The private key is never serialised: it lives in this object until :meth:`wipe`.
2. :meth:`TrainingNode.release_data_key` presents the token and the public key to the key vault's
   ``release``; the answer is wrapped to that key (RSA-OAEP + AES key wrap), so only this process can
   unwrap it. The storage already decrypts objects for an authorised principal, so the released key is
   what the node uses for what it *writes*: checkpoints are sealed with AES-256-GCM under it before they
   leave the node (layout ``b"VCK1" ‖ 12-byte nonce ‖ ciphertext+tag``, AAD
   ``node_id|container|object|key_version``), so a checkpoint moved elsewhere or read by the storage's
   operator is still ciphertext. The material is held in a ``bytearray`` so :meth:`wipe` can zero it.
3. :meth:`TrainingNode.train` reads the data set as the node's principal, trains a small MLP with torch
   (CUDA when ``torch.cuda.is_available()``, said in a log line and in every record's ``device`` field and
   ``gpu`` metric), and writes an encrypted checkpoint every ``checkpoint_every`` epochs and at the end.

**Telemetry** is ``vigil.telemetry/1`` (:mod:`vigil.events.normalizers.telemetry`), POSTed as a JSON array
to ``{ingest_url}/v1/events`` with the ingest bearer token: ``heartbeat`` and ``train.start`` at the
start, one ``train.step`` per optimiser step (``loss``, ``grad_norm``, ``samples_per_s``, ``lr``), a
``data.access`` for each read and write, ``train.end`` at the end (outcome ``failure`` and
``reason: "quarantined"`` when stopped). Step records are batched per epoch (one request per epoch, not per
step). Each record carries ``sig``: base64url (no padding) of RSA-PSS (SHA-256, MGF1-SHA-256, salt 32
bytes) by the ephemeral key over the canonical JSON of the record without ``sig`` (``sort_keys``,
separators ``,`` and ``:``, UTF-8), so a verifier holding the public key bound in the node's attestation
can check it. ``seq`` starts at the wall clock in microseconds, so it keeps increasing across restarts
without a state file. A telemetry failure is logged and counted, never fatal: monitoring must not be able
to stop training, only the control channel may.

**Control**: before every epoch the node reads its own record (``compute.get_node`` as its principal);
``quarantined`` (or a ForbiddenError: the platform no longer trusts it) stops training at once: the final
record is signed, the key material is wiped, the record is sent, and :meth:`train` returns with
``stopped="quarantined"``. Python cannot promise that no copy of a key ever existed (the RSA key lives in
OpenSSL), so "wipe" means zeroing the bytes we own and dropping every reference.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import os
import time
import warnings
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vigil.platform.client import PlatformClient
from vigil.platform.client_base import Api
from vigil.platform.compute import NodeState
from vigil.platform.errors import ConflictError, ForbiddenError, PlatformError
from vigil.platform.local.release import unwrap_as_recipient
from vigil.platform.service_base import PREFIX
from vigil.training_node import dataset
from vigil.training_node.evidence import Evidence, bind_report_data
from vigil.training_node.telemetry import finite, sign

with warnings.catch_warnings():  # torch warns at import when numpy is absent; nothing here uses numpy
    warnings.filterwarnings("ignore", message=".*NumPy.*")
    import torch
    from torch import nn

log = logging.getLogger(__name__)

SCHEMA: Final = "vigil.telemetry/1"
CHECKPOINT_MAGIC: Final = b"VCK1"


class NodeError(PlatformError):
    """The node cannot go on (not attested, no key): says which step is missing."""


@dataclass(slots=True)
class TrainResult:
    """What a run did; no key material."""

    stopped: str  # "completed" | "quarantined"
    epochs: int
    losses: list[float] = field(default_factory=list)  # mean loss per epoch
    checkpoints: list[str] = field(default_factory=list)
    device: str = "cpu"


class TrainingNode:
    """One node (module docstring). ``token`` is the node principal's platform API token."""

    def __init__(
        self,
        base_url: str,
        token: str,
        node_id: str,
        tee: Evidence,
        *,
        container: str,
        key_name: str,
        epochs: int,
        ingest_url: str,
        ingest_token: str,
        principal: str | None = None,
        measurement: str = "",
        checkpoint_every: int = 0,
        heartbeat_s: float = 5.0,
    ) -> None:
        self.node_id = node_id
        self.principal = principal or node_id
        self.container, self.key_name, self.epochs = container, key_name, epochs
        self.measurement = measurement.lower()
        self.checkpoint_every = checkpoint_every
        self.heartbeat_s = heartbeat_s
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.platform = PlatformClient(base_url, token)
        self._tee = tee
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + PREFIX,
            headers={"Authorization": f"Bearer {token}"},
            trust_env=False,
            timeout=60.0,
        )
        self._api = Api(self._http)
        self._ingest = httpx.AsyncClient(
            base_url=ingest_url.rstrip("/"),
            headers={"Authorization": f"Bearer {ingest_token}"},
            trust_env=False,
            timeout=10.0,
        )
        self._seq = time.time_ns() // 1000
        self._key: rsa.RSAPrivateKey | None = None
        self._token: str | None = None
        self._data_key: bytearray | None = None
        self._key_version = ""
        self.claims: dict[str, Any] = {}
        self.sent = 0  # records the ingest API accepted (200)
        self.failed = 0  # records that did not reach it

    def __repr__(self) -> str:
        held = "key held" if self._data_key is not None else "no key"
        return f"TrainingNode({self.node_id!r}, attested={self.attested}, {held})"

    @property
    def attested(self) -> bool:
        return self._token is not None

    @property
    def public_pem(self) -> bytes:
        if self._key is None:
            raise NodeError(f"node {self.node_id!r} has no ephemeral key: attest first")
        return self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    async def aclose(self) -> None:
        self.wipe()
        await self.platform.aclose()
        await self._http.aclose()
        await self._ingest.aclose()

    async def __aenter__(self) -> TrainingNode:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- attestation and key release -------------------------------------------------------------------

    async def attest(self) -> str:
        """Prove what this node is; returns the attestation token (also kept for :meth:`release_data_key`)."""
        nonce = (await self._post("/nonce", {"node_id": self.node_id}))["nonce"]
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._key = key
        pem = self.public_pem
        bundle = await self._tee.report(bind_report_data(nonce, pem))
        body = {
            "node_id": self.node_id,
            "nonce": nonce,
            "public_key": base64.urlsafe_b64encode(pem).decode().rstrip("="),
            "evidence": bundle.to_json(),
        }
        token = str((await self._post("/attest", body))["token"])
        self._token = token
        # the claims are shown, not trusted here: the key vault verifies the token
        self.claims = jwt.decode(token, options={"verify_signature": False})
        await self._send([self._record("attestation.ok", outcome="success")])
        return token

    async def release_data_key(self) -> str:
        """Get the data key released and unwrapped into memory; returns its version."""
        if self._token is None or self._key is None:
            raise NodeError(f"node {self.node_id!r} is not attested: attest first")
        released = await self.platform.keys.release(
            self.principal, self.key_name, self._token, self.public_pem
        )
        self._data_key = bytearray(unwrap_as_recipient(released.wrapped, self._key))
        self._key_version = released.version
        await self._send([self._record("key.release", outcome="success", key_version=released.version)])
        return released.version

    def wipe(self) -> None:
        """Zero the data key and drop the ephemeral key and the token."""
        if self._data_key is not None:
            self._data_key[:] = bytes(len(self._data_key))
        self._data_key = None
        self._key = None
        self._token = None

    # -- checkpoints -----------------------------------------------------------------------------------

    def seal_checkpoint(self, plaintext: bytes, name: str) -> bytes:
        aead = AESGCM(bytes(self._require_key()))
        nonce = os.urandom(12)
        return CHECKPOINT_MAGIC + nonce + aead.encrypt(nonce, plaintext, self._aad(name))

    def open_checkpoint(self, blob: bytes, name: str) -> bytes:
        """The plaintext of a :meth:`seal_checkpoint` blob (InvalidTag when changed or misplaced)."""
        if not blob.startswith(CHECKPOINT_MAGIC):
            raise ValueError("not a sealed checkpoint")
        nonce, body = blob[4:16], blob[16:]
        return AESGCM(bytes(self._require_key())).decrypt(nonce, body, self._aad(name))

    def _aad(self, name: str) -> bytes:
        return f"{self.node_id}|{self.container}|{name}|{self._key_version}".encode()

    def _require_key(self) -> bytearray:
        if self._data_key is None:
            raise NodeError(f"node {self.node_id!r} holds no data key: release it first")
        return self._data_key

    # -- training --------------------------------------------------------------------------------------

    async def train(self, *, batch_size: int = 32, lr: float = 0.05, seed: int | None = None) -> TrainResult:
        """Train for ``self.epochs`` epochs, or until quarantined (module docstring). ``seed`` fixes the
        initial weights and the batch order; by default it comes from the node id, so a node's runs repeat
        and two nodes on the same data do not train the very same model."""
        self._require_key()
        if seed is None:
            seed = zlib.crc32(self.node_id.encode())
        with contextlib.suppress(ConflictError):  # already running after a restart
            await self.platform.compute.set_state(self.principal, self.node_id, NodeState.RUNNING)
        data = await self.platform.storage.read(self.principal, self.container, dataset.OBJECT)
        await self._send([self._access(dataset.OBJECT, "read", len(data))])
        x, y = dataset.load(data)
        x = (x - x.mean(0)) / x.std(0)  # standardised: one learning rate fits every feature
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        device = torch.device(self.device)
        name = torch.cuda.get_device_name(0) if self.device == "cuda" else "cpu"
        log.info(
            "node %s: training on %s (%s), %d rows, %d epochs",
            self.node_id,
            self.device,
            name,
            len(y),
            self.epochs,
        )
        x, y = x.to(device), y.to(device)
        model = nn.Sequential(nn.Linear(dataset.FEATURES, 16), nn.ReLU(), nn.Linear(16, len(dataset.CLASSES)))
        model.to(device)
        optimiser = torch.optim.Adam(model.parameters(), lr=lr)
        loss_fn = nn.CrossEntropyLoss()
        result = TrainResult("completed", 0, device=self.device)
        start = {"rows": len(y), "epochs": self.epochs, "gpu": 1.0 if self.device == "cuda" else 0.0}
        await self._send([self._record("heartbeat"), self._record("train.start", metrics=start)])
        beat = asyncio.create_task(self._heartbeats())
        try:
            step = 0
            for epoch in range(self.epochs):
                if await self._quarantined():
                    return await self._stop(result)
                order = torch.randperm(len(y), generator=generator).to(device)
                records, total = [], 0.0
                for i in range(0, len(y), batch_size):
                    began = time.perf_counter()
                    idx = order[i : i + batch_size]
                    optimiser.zero_grad()
                    loss = loss_fn(model(x[idx]), y[idx])
                    loss.backward()
                    grad = float(nn.utils.clip_grad_norm_(model.parameters(), float("inf")))
                    optimiser.step()
                    value = float(loss.item())
                    total += value * len(idx)
                    rate = len(idx) / max(time.perf_counter() - began, 1e-9)
                    metrics = {
                        "step": step,
                        "epoch": epoch,
                        "loss": value,
                        "grad_norm": grad,
                        "samples_per_s": rate,
                        "lr": lr,
                    }
                    records.append(self._record("train.step", metrics=metrics))
                    step += 1
                result.losses.append(total / len(y))
                result.epochs = epoch + 1
                await self._send(records)
                last = epoch + 1 == self.epochs
                if last or (self.checkpoint_every and (epoch + 1) % self.checkpoint_every == 0):
                    try:
                        result.checkpoints.append(await self._checkpoint(model, epoch + 1))
                    except ForbiddenError:  # suspended between the poll and the write: quarantined
                        return await self._stop(result)
                await asyncio.sleep(0)  # let the heartbeat and other tasks run between epochs
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        end = {"epochs": result.epochs, "loss": result.losses[-1] if result.losses else None}
        await self._send([self._record("train.end", outcome="success", metrics=end)])
        with contextlib.suppress(PlatformError):
            await self.platform.compute.set_state(self.principal, self.node_id, NodeState.STOPPED)
        return result

    async def _checkpoint(self, model: nn.Module, epoch: int) -> str:
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
        name = f"checkpoints/{self.node_id}/epoch-{epoch:04d}.pt.vck"
        sealed = self.seal_checkpoint(buffer.getvalue(), name)
        meta = {"format": "vigil-checkpoint/1", "key_version": self._key_version}
        await self.platform.storage.put(self.principal, self.container, name, sealed, metadata=meta)
        await self._send([self._access(name, "write", len(sealed)), self._record("checkpoint.save")])
        return name

    async def _quarantined(self) -> bool:
        try:
            node = await self.platform.compute.get_node(self.principal, self.node_id)
        except ForbiddenError:
            return True  # fail closed: a node the platform no longer answers about must not go on
        return node.state is NodeState.QUARANTINED

    async def _stop(self, result: TrainResult) -> TrainResult:
        log.warning("node %s: quarantined; stopping and wiping its keys", self.node_id)
        final = self._record(
            "train.end", outcome="failure", reason="quarantined", metrics={"epochs": result.epochs}
        )
        self.wipe()
        await self._send([final])
        result.stopped = "quarantined"
        return result

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            await self._send([self._record("heartbeat")])

    # -- telemetry -------------------------------------------------------------------------------------

    def _access(self, name: str, op: str, size: int) -> dict[str, Any]:
        obj = {"key": name, "op": op, "bytes": size, "store": self.container}
        if self._key_version:
            obj["key_version"] = self._key_version
        return self._record("data.access", outcome="success", object=obj)

    def _record(self, rtype: str, *, metrics: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
        self._seq += 1
        record: dict[str, Any] = {
            "schema": SCHEMA,
            "type": rtype,
            "node_id": self.node_id,
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "seq": self._seq,
            "attested": self.attested,
            "device": self.device,
            **extra,
        }
        if self.measurement:
            record["measurement"] = self.measurement
        if metrics is not None:
            record["metrics"] = {k: finite(v) for k, v in metrics.items()}
        return sign(record, self._key) if self._key is not None else record

    async def _send(self, records: list[dict[str, Any]]) -> None:
        try:
            answer = await self._ingest.post("/v1/events", json=records)
        except httpx.HTTPError as exc:
            self.failed += len(records)
            log.warning("node %s: telemetry not sent (%s)", self.node_id, type(exc).__name__)
            return
        if answer.status_code == 200:
            self.sent += len(records)
        else:
            self.failed += len(records)
            log.warning("node %s: telemetry refused with %d", self.node_id, answer.status_code)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        doc = await self._api.call("POST", "/attestation" + path, self.principal, json=body)
        if not isinstance(doc, dict):
            raise PlatformError("malformed answer from the attestation service")
        return doc
