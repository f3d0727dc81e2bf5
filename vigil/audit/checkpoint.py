"""Signed checkpoints of the audit chain, the sinks they are exported to, and the platform observer.

A hash chain alone shows edits, deletions and reordering, but not a cut tail or a wholesale replacement by
a shorter chain that is itself valid: whoever can write the database can recompute every hash. A signed
checkpoint ``(origin, seq, head hash)`` kept *off the database* closes that gap (reference/reliability.md
§1.10): the verifier needs the record at ``seq`` to exist and to hash to ``head``. The signing key is an
Ed25519 key in the platform's key vault (``sign`` only; its private half never leaves the vault), and the
verifier takes the public key from the vault too, never from the checkpoint it is checking.

Signed message (tlog-checkpoint style: a domain-separation line, then one field per line)::

    vigil-audit-checkpoint/v1
    <origin: the log id>
    <seq>
    <head hash, hex>
    <time_us>
    <key name>
    <key version>

Exported form (what :class:`FileSink` appends, one JSON object per line)::

    {"v":1,"origin":"...","seq":1000,"head":"<hex>","time_us":...,"key":"vigil-audit-signing",
     "version":"...","sig":"<base64url>"}

Sinks follow Vault's audit-device rule (reliability.md §1.1 (b)): a checkpoint counts as exported when at
least one sink took it; a failing sink is an alarm; when every sink fails, the log fails closed. A sink
that hangs is a failing sink (the log bounds each write with a timeout).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from vigil.audit.record import Actor, AuditKind
from vigil.fsutil import fsync_dir
from vigil.platform.events import PlatformEvent

if TYPE_CHECKING:
    from vigil.audit.log import AuditLog

CHECKPOINT_PREFIX: Final = b"vigil-audit-checkpoint/v1\n"
FORMAT_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement: the log ``origin`` had ``head`` as the hash of record ``seq`` at ``time_us``."""

    seq: int
    origin: str
    head: bytes
    time_us: int
    key_name: str
    key_version: str
    signature: bytes

    def message(self) -> bytes:
        """The exact bytes the signature covers."""
        return checkpoint_message(
            self.origin, self.seq, self.head, self.time_us, self.key_name, self.key_version
        )

    def verify_signature(self, public_key: bytes) -> bool:
        """Whether ``signature`` is a valid Ed25519 signature of :meth:`message` under ``public_key``."""
        try:
            Ed25519PublicKey.from_public_bytes(public_key).verify(self.signature, self.message())
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        return {
            "v": FORMAT_VERSION,
            "origin": self.origin,
            "seq": self.seq,
            "head": self.head.hex(),
            "time_us": self.time_us,
            "key": self.key_name,
            "version": self.key_version,
            "sig": base64.urlsafe_b64encode(self.signature).decode().rstrip("="),
        }

    @classmethod
    def from_json(cls, data: Any) -> Checkpoint:
        """Parse an exported checkpoint; ValueError naming what is wrong."""
        if not isinstance(data, dict) or data.get("v") != FORMAT_VERSION:
            raise ValueError(f"not a version {FORMAT_VERSION} audit checkpoint")
        try:
            sig = str(data["sig"])
            cp = cls(
                seq=data["seq"],
                origin=data["origin"],
                head=bytes.fromhex(data["head"]),
                time_us=data["time_us"],
                key_name=data["key"],
                key_version=data["version"],
                signature=base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)),
            )
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise ValueError(f"malformed audit checkpoint: {exc!r}") from None
        if not (isinstance(cp.seq, int) and isinstance(cp.time_us, int) and isinstance(cp.origin, str)):
            raise ValueError("malformed audit checkpoint: seq, time_us or origin has the wrong type")
        if not (isinstance(cp.key_name, str) and isinstance(cp.key_version, str)) or cp.seq < 1:
            raise ValueError("malformed audit checkpoint: key, version or seq")
        return cp


def checkpoint_message(
    origin: str, seq: int, head: bytes, time_us: int, key_name: str, key_version: str
) -> bytes:
    lines = (origin, str(seq), head.hex(), str(time_us), key_name, key_version)
    if any("\n" in part for part in lines):
        raise ValueError("checkpoint fields must not contain newlines")
    return CHECKPOINT_PREFIX + "".join(f"{part}\n" for part in lines).encode()


def load_checkpoints(path: Path) -> list[Checkpoint]:
    """The checkpoints exported to ``path`` (JSON Lines). A last line without its newline is a write cut
    short by a crash and is skipped; any other malformed line is ValueError ``path:line: ...``."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        lines.pop()  # torn final write: no newline after it
    result = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            result.append(Checkpoint.from_json(orjson.loads(line)))
        except (ValueError, orjson.JSONDecodeError) as exc:
            raise ValueError(f"{path}:{number}: {exc}") from None
    return result


class CheckpointSink(Protocol):
    """Where checkpoints are exported; ``name`` labels its alarms and metrics. Raising means not stored."""

    @property
    def name(self) -> str: ...

    async def write(self, checkpoint: Checkpoint) -> None: ...


class FileSink:
    """Appends each checkpoint as one JSON line to ``path`` and fsyncs it (parent folder made on first
    use). Put it on another disk or mount than the audit database: a sink sharing its failure domain
    catches tampering but not the loss of that disk."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def name(self) -> str:
        return f"file:{self.path}"

    def __repr__(self) -> str:
        return f"FileSink({str(self.path)!r})"

    async def write(self, checkpoint: Checkpoint) -> None:
        await asyncio.to_thread(self._write, orjson.dumps(checkpoint.to_json()) + b"\n")

    def _write(self, line: bytes) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, line)  # one write: a crash leaves the line whole or a torn tail
            if written != len(line):
                raise OSError(f"short write to {self.path} ({written} of {len(line)} bytes)")
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.path.parent)


def load_all(paths: Iterable[Path]) -> list[Checkpoint]:
    """The checkpoints of every file in ``paths``, in file order."""
    return [cp for path in paths for cp in load_checkpoints(path)]


class AuditObserver:
    """The platform's :class:`~vigil.platform.events.PlatformObserver` that writes every platform change
    to the audit log *before* the provider makes it durable. An append that fails raises
    :class:`~vigil.audit.log.AuditUnavailableError` out of :meth:`record`, which aborts the platform
    operation: no key is released and no policy changes unaudited.

    The vault must not report ``sign``/``hmac`` (they change nothing); the log calls them while it holds
    its writer lock, and an event from them would wait on that lock.
    """

    def __init__(self, log: AuditLog) -> None:
        self.log = log

    async def record(self, event: PlatformEvent) -> None:
        kind = AuditKind.KEY_RELEASE if event.kind == "platform.key.release" else AuditKind.PLATFORM_CHANGE
        actor = (
            Actor.system(event.principal)
            if event.principal == self.log.principal
            else Actor.user(event.principal)
        )
        details = {
            "event": event.kind,
            "outcome": event.outcome,
            "event_time": event.time,
            "details": dict(event.details),
        }
        await self.log.append(actor, kind, event.subject, details)
