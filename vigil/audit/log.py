"""The audit log the daemon writes: serialised appends that fail closed, HMACed secrets, checkpoints.

The rule (reference/reliability.md §1.1, G1, G2): an action that needs a record runs only after
:meth:`AuditLog.append` returned, so the guard is simply::

    await audit.append(Actor.rule(rule_id), AuditKind.ACTION_INTENT, target, plan)   # raises: no action
    result = await remediator.apply(plan)

Any failure to append raises :class:`AuditUnavailableError` and nothing is written: a SQLite error
(``SQLITE_FULL`` included) or I/O error, the vault failing to HMAC a secret the record must carry, or a
checkpoint that is due while *every* checkpoint sink fails. The log then reports itself degraded with a
reason ("audit disk full: ...", "no checkpoint sink reachable: ...") in :meth:`status`, for ``/readyz`` and
``/metrics``, and the next append that succeeds clears it: recovery needs no restart. Nothing of the chain
lives in memory; every append re-reads the committed head inside its transaction (:mod:`.db`), so a failed
or half-done append can never fork the chain.

Alarms that do not stop appends: one sink of several failing (counted per sink, logged at WARNING, listed
in ``status().alarms``), and the vault failing to *sign* a checkpoint (G6): the chain keeps growing, the
checkpoint stays pending and is retried at the next append, and ``status().unsigned`` says how many records
no signed checkpoint covers yet. No unsigned checkpoint is ever written.

Checkpoints are taken *before* an append, of the committed head, when ``checkpoint_every`` records or
``checkpoint_seconds`` have passed since the last one; so an append either raises with nothing written or
returns with its records committed, never "written but reported failed". A daemon that may go quiet for a
long time calls :meth:`AuditLog.checkpoint_if_due` from a timer so the tail is covered anyway.

One writer: appends are serialised by an asyncio lock and the SQLite work runs in a worker thread, so the
event loop is not blocked by the fsync of ``synchronous=FULL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from vigil.audit.checkpoint import Checkpoint, CheckpointSink, checkpoint_message
from vigil.audit.db import AuditDB, Synchronous
from vigil.audit.record import HMAC_PREFIX, Actor, AuditEntry, AuditKind, AuditRecord, check_no_secrets
from vigil.errors import VigilError
from vigil.platform.errors import AlreadyExistsError, NotFoundError
from vigil.platform.keyvault import KeyKind, KeyVault

log = logging.getLogger(__name__)

SIGNING_KEY: Final = "vigil-audit-signing"
HMAC_KEY: Final = "vigil-audit-hmac"
DEFAULT_SINK_TIMEOUT: Final = 5.0
#: after the vault failed to sign, wait this long before asking again (appends do not wait)
SIGN_RETRY_SECONDS: Final = 1.0


class AuditUnavailableError(VigilError):
    """The audit log cannot record: the operation that needed the record must not run."""


@dataclass(frozen=True, slots=True)
class AuditStatus:
    """For ``/readyz`` (``ok``, ``reason``) and ``/metrics`` (the counters)."""

    ok: bool
    reason: str | None
    alarms: tuple[str, ...]
    head_seq: int
    unsigned: int  # records after the last signed checkpoint
    appends: int  # records appended since open
    failures: int  # appends refused
    checkpoints: int  # checkpoints signed since open
    sign_failures: int
    sink_failures: dict[str, int]


async def ensure_keys(vault: KeyVault, principal: str) -> None:
    """Create the signing (ed25519) and HMAC (aes256) keys of the audit log when they do not exist."""
    for name, kind in ((SIGNING_KEY, KeyKind.ED25519), (HMAC_KEY, KeyKind.AES256)):
        try:
            await vault.get_key(principal, name)
        except NotFoundError:
            with contextlib.suppress(AlreadyExistsError):  # another process created it meanwhile
                await vault.create_key(principal, name, kind, tags={"purpose": "vigil-audit"})


async def hmac_of(vault: KeyVault, principal: str, value: str, version: str | None = None) -> str:
    """How a secret appears in the log: ``hmac-sha256:<hex>`` under the audit HMAC key (its current
    version, or ``version``: records written before a rotation used an older one)."""
    digest = await vault.hmac(principal, HMAC_KEY, value.encode("utf-8"), version)
    return HMAC_PREFIX + digest.hex()


class AuditLog:
    """The audit log in ``path`` (see the module docstring). ``open`` before use, ``close`` after."""

    def __init__(
        self,
        path: str | Path,
        vault: KeyVault,
        *,
        principal: str = "vigil",
        synchronous: Synchronous = "FULL",
        checkpoint_every: int = 1000,
        checkpoint_seconds: float = 60.0,
        sinks: Sequence[CheckpointSink] = (),
        sink_timeout: float = DEFAULT_SINK_TIMEOUT,
    ) -> None:
        if checkpoint_every < 1 or checkpoint_seconds <= 0:
            raise ValueError("checkpoint_every and checkpoint_seconds must be positive")
        self.path = Path(path)
        self.principal = principal
        self.synchronous: Synchronous = synchronous
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.sinks = tuple(sinks)
        self.sink_timeout = sink_timeout
        self._vault = vault
        self._db: AuditDB | None = None
        self._lock = asyncio.Lock()
        self._opened = time.monotonic()
        self._last_cp: Checkpoint | None = None
        self._last_cp_mono = 0.0
        self._pending_export: Checkpoint | None = None
        self._head_seq = 0  # for status() only: appends always read the head from the database
        self._sign_retry_at = 0.0
        self._reason: str | None = None
        self._alarms: dict[str, str] = {}
        self._appends = self._failures = self._checkpoints = self._sign_failures = 0
        self._sink_failures = {sink.name: 0 for sink in self.sinks}

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r}, sinks={len(self.sinks)})"

    @property
    def db(self) -> AuditDB:
        if self._db is None:
            raise AuditUnavailableError(f"audit log {self.path} is not open")
        return self._db

    async def open(self) -> None:
        """Open (or create) the database, then make sure the vault holds the log's keys. The database
        opens first: a vault that audits its own key creation through this log can already append."""
        try:
            db = await asyncio.to_thread(AuditDB, self.path, synchronous=self.synchronous)
        except (sqlite3.Error, OSError) as exc:
            raise AuditUnavailableError(f"cannot open the audit log {self.path}: {exc}") from exc
        try:
            self._last_cp, self._head_seq = db.last_checkpoint(), db.head()[0]
        except sqlite3.Error as exc:
            db.close()
            raise AuditUnavailableError(f"cannot read the audit log {self.path}: {exc}") from exc
        self._db = db
        self._opened = self._last_cp_mono = time.monotonic()
        if self._head_seq > (self._last_cp.seq if self._last_cp else 0):
            self._last_cp_mono -= self.checkpoint_seconds  # a tail left uncovered (a crash): cover it first
        if not self.sinks:
            self._alarms["sinks"] = "no checkpoint sink configured: a cut tail would go unnoticed"
        try:
            await ensure_keys(self._vault, self.principal)
        except Exception as exc:
            self._db.close()
            self._db = None
            raise AuditUnavailableError(f"audit keys unavailable in the key vault: {exc}") from exc

    async def close(self) -> None:
        """Checkpoint what is not covered yet (best effort: a failure is logged), then close."""
        if self._db is None:
            return
        try:
            async with self._lock:
                await self._checkpoint(force=True)
        except (AuditUnavailableError, sqlite3.Error, OSError) as exc:
            log.warning("audit log closed without a final checkpoint: %s", exc)
        self._db.close()
        self._db = None

    # -- appending ---------------------------------------------------------------------------------------

    async def append(
        self,
        actor: Actor,
        kind: AuditKind,
        subject: str,
        details: Mapping[str, Any] | None = None,
        *,
        secrets: Mapping[str, str] | None = None,
    ) -> AuditRecord:
        """Append one record; AuditUnavailableError (nothing written) when it cannot be recorded, and
        ValueError when ``details`` carry a secret outside ``secrets``."""
        entry = AuditEntry(actor, kind, subject, details or {}, secrets)
        return (await self.append_many([entry]))[0]

    async def append_many(self, entries: Sequence[AuditEntry]) -> list[AuditRecord]:
        """Append ``entries`` in one transaction: all of them or, with the same errors as
        :meth:`append`, none."""
        if not entries:
            return []
        for entry in entries:
            check_no_secrets(entry.details, entry.subject)
            if entry.secrets and set(entry.secrets) & set(entry.details):
                raise ValueError("a key of secrets is also a key of details")
        async with self._lock:
            try:
                prepared = [await self._with_hmacs(entry) for entry in entries]
                await self._checkpoint(force=False)
                now_us, mono_us = time.time_ns() // 1000, int((time.monotonic() - self._opened) * 1e6)
                records = await asyncio.to_thread(self.db.append, prepared, now_us, mono_us)
            except AuditUnavailableError as exc:
                self._fail(str(exc))
                raise
            except (sqlite3.Error, OSError) as exc:
                raise self._fail(_describe(exc)) from exc
            self._appends += len(records)
            self._head_seq = records[-1].seq
            if self._reason is not None:
                log.warning("audit log writable again (was: %s)", self._reason)
                self._reason = None
            return records

    async def _with_hmacs(self, entry: AuditEntry) -> AuditEntry:
        if not entry.secrets:
            return entry
        details = dict(entry.details)
        try:
            for name, value in entry.secrets.items():
                details[name] = await hmac_of(self._vault, self.principal, value)
        except Exception as exc:
            raise AuditUnavailableError(f"audit HMAC key unavailable: {type(exc).__name__}: {exc}") from exc
        return AuditEntry(entry.actor, entry.kind, entry.subject, details)

    def _fail(self, reason: str) -> AuditUnavailableError:
        self._failures += 1
        if reason != self._reason:
            log.error("audit log degraded, audited actions refused: %s", reason)
        self._reason = reason
        return AuditUnavailableError(reason)

    # -- checkpoints -------------------------------------------------------------------------------------

    async def checkpoint_if_due(self) -> Checkpoint | None:
        """For a timer: sign and export a checkpoint if one is due; AuditUnavailableError when every
        sink fails (the log is then degraded until a checkpoint or an append succeeds)."""
        async with self._lock:
            try:
                cp = await self._checkpoint(force=False)
            except AuditUnavailableError as exc:
                self._fail(str(exc))
                raise
            except (sqlite3.Error, OSError) as exc:
                raise self._fail(_describe(exc)) from exc
            if self._reason is not None and self._reason.startswith("no checkpoint sink"):
                self._reason = None
            return cp

    async def _checkpoint(self, *, force: bool) -> Checkpoint | None:
        """Under the lock: export a checkpoint left pending by failed sinks, then sign and export a new
        one of the committed head if due. Raises AuditUnavailableError only when no sink takes it."""
        if self._pending_export is not None:
            await self._export(self._pending_export)
        # Whether one is due is decided on the cached head (scheduling only); what is signed is the
        # head read from the database.
        last_seq = self._last_cp.seq if self._last_cp else 0
        now = time.monotonic()
        seq = self._head_seq
        due = seq - last_seq >= self.checkpoint_every or now - self._last_cp_mono >= self.checkpoint_seconds
        if seq <= last_seq or not (due or force) or now < self._sign_retry_at:
            return None
        seq, head = await asyncio.to_thread(self.db.head)
        time_us = time.time_ns() // 1000
        try:
            info = await self._vault.get_key(self.principal, SIGNING_KEY)
            if info.current is None:
                raise NotFoundError(f"{SIGNING_KEY} has no enabled version")
            message = checkpoint_message(self.db.log_id, seq, head, time_us, SIGNING_KEY, info.current)
            sig = await self._vault.sign(self.principal, SIGNING_KEY, message)
            if sig.version != info.current:  # rotated between the two calls: sign again next time
                raise NotFoundError(f"{SIGNING_KEY} was rotated while signing")
        except Exception as exc:
            self._sign_failures += 1
            self._sign_retry_at = now + SIGN_RETRY_SECONDS
            self._alarms["signing"] = f"checkpoint signing failed: {type(exc).__name__}: {exc}"
            log.warning("audit %s; %d records unsigned", self._alarms["signing"], seq - last_seq)
            return None
        self._alarms.pop("signing", None)
        cp = Checkpoint(seq, self.db.log_id, head, time_us, SIGNING_KEY, info.current, sig.value)
        await asyncio.to_thread(self.db.add_checkpoint, cp)
        self._last_cp, self._last_cp_mono = cp, now
        self._checkpoints += 1
        self._pending_export = cp
        await self._export(cp)
        return cp

    async def _export(self, cp: Checkpoint) -> None:
        if not self.sinks:
            self._pending_export = None
            return
        results = await asyncio.gather(
            *(asyncio.wait_for(sink.write(cp), self.sink_timeout) for sink in self.sinks),
            return_exceptions=True,
        )
        errors = []
        for sink, result in zip(self.sinks, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result  # cancellation and the like are not sink failures
                what = f"{type(result).__name__}: {result}"
                if isinstance(result, TimeoutError):
                    what = f"timed out after {self.sink_timeout:g} s"
                self._sink_failures[sink.name] += 1
                self._alarms[f"sink:{sink.name}"] = f"checkpoint sink {sink.name} failing: {what}"
                errors.append(f"{sink.name}: {what}")
                log.warning("audit checkpoint %d not written to %s: %s", cp.seq, sink.name, what)
            else:
                self._alarms.pop(f"sink:{sink.name}", None)
        if len(errors) == len(self.sinks):
            raise AuditUnavailableError("no checkpoint sink reachable: " + "; ".join(errors))
        self._pending_export = None

    # -- state -------------------------------------------------------------------------------------------

    def head(self) -> tuple[int, bytes]:
        """(seq, hash) of the last committed record, read from the database."""
        return self.db.head()

    def status(self) -> AuditStatus:
        head_seq = self._head_seq
        reason = self._reason if self._db is not None else "audit log is not open"
        return AuditStatus(
            ok=reason is None,
            reason=reason,
            alarms=tuple(self._alarms.values()),
            head_seq=head_seq,
            unsigned=max(0, head_seq - (self._last_cp.seq if self._last_cp else 0)),
            appends=self._appends,
            failures=self._failures,
            checkpoints=self._checkpoints,
            sign_failures=self._sign_failures,
            sink_failures=dict(self._sink_failures),
        )


def _describe(exc: BaseException) -> str:
    """A fail-closed reason an operator can act on, from a SQLite or OS error."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        if code & 0xFF == sqlite3.SQLITE_FULL:
            return f"audit disk full: {exc}"
        if code & 0xFF == sqlite3.SQLITE_IOERR:
            return f"audit I/O error: {exc}"
        return f"audit write failed: {exc}"
    if isinstance(exc, OSError):
        return f"audit I/O error: {exc}"
    return f"audit write failed: {exc}"
