"""Verification of an audit log: walk the chain, check every checkpoint, name the first bad record.

What each kind of damage looks like, and how it is told apart (reference/reliability.md G3):

=============  ==========================================================================================
edited         a record's own content no longer hashes to its stored hash (its ``prev_hash`` still links),
               or a record links to a hash no record has any more (the one before it was edited and
               rehashed: that one is named), or a row is malformed
deleted        a gap in the sequence numbers; the first missing number is named
reordered      a record's ``prev_hash`` is the hash of a record stored at another position
truncated      a signed checkpoint names a seq beyond the end of the chain (first missing seq named)
replaced       a valid chain that is not the one the checkpoints vouch for: a checkpoint's head differs
               from the record at its seq, or names another log id as origin, or record 1 does not start
               from this log's genesis. Named: the first record no matching checkpoint vouches for.
bad signature  a checkpoint's Ed25519 signature fails under the vault's public key for the version it
               names (or it names a version the vault does not know)
=============  ==========================================================================================

Chain damage is reported before checkpoint damage, and bad signatures before the rest. Truncation and
replacement are only visible for sure against a checkpoint kept off the database (an exported one): an
attacker who rewrites the file rewrites its checkpoints table too, and since the daemon may sign, so may
whoever controls it; so the exported checkpoints are judged first and alone decide which records are
vouched for, and the stored ones are checked after them (they still reveal a cut made without removing
them). A replacement shorter than every exported checkpoint reads as "truncated" (both are caught).

Public keys come from the vault (trusted), keyed by (key name, version), never from a checkpoint. The
walk streams the records in one read transaction, keeping in memory only the hashes at checkpoint seqs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vigil.audit.checkpoint import Checkpoint
from vigil.audit.db import AuditDB, record_from_row
from vigil.audit.log import SIGNING_KEY
from vigil.audit.record import genesis_hash
from vigil.platform.keyvault import KeyVault

#: (key name, version) -> raw Ed25519 public key
PublicKeys = Mapping[tuple[str, str], bytes]


@dataclass(frozen=True, slots=True)
class Damage:
    seq: int
    kind: str  # edited, deleted, reordered, truncated, replaced, bad signature
    detail: str


@dataclass(frozen=True, slots=True)
class VerifyReport:
    records: int
    checkpoints: int
    head_seq: int
    damage: Damage | None
    warnings: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.damage is None

    def summary(self) -> str:
        if self.damage is None:
            return f"ok: {self.records} records, {self.checkpoints} checkpoints verified"
        d = self.damage
        return f"DAMAGED at seq {d.seq}: {d.kind}: {d.detail}"


async def public_keys(
    vault: KeyVault, principal: str = "vigil", name: str = SIGNING_KEY
) -> dict[tuple[str, str], bytes]:
    """Every version's public key of the signing key, from the vault (disabled versions included: a
    checkpoint signed before a version was disabled stays verifiable)."""
    info = await vault.get_key(principal, name)
    return {(name, v.version): v.public_key for v in info.versions if v.public_key is not None}


async def verify_with_vault(
    path: str | Path,
    vault: KeyVault,
    checkpoints: Sequence[Checkpoint] | None = None,
    *,
    principal: str = "vigil",
) -> VerifyReport:
    return verify(path, await public_keys(vault, principal), checkpoints)


def verify(
    path: str | Path, keys: PublicKeys, checkpoints: Sequence[Checkpoint] | None = None
) -> VerifyReport:
    """Verify the log at ``path`` against its stored checkpoints and the exported ``checkpoints``.
    FileNotFoundError / sqlite3.Error when it cannot be read at all."""
    db = AuditDB(path, readonly=True)
    try:
        with db.snapshot():
            stored = db.checkpoints()
            exported = list(checkpoints or ())
            walk = _Walk({cp.seq for cp in [*stored, *exported]})
            damage = _walk(db, walk)
    finally:
        db.close()
    warnings = () if checkpoints else ("no exported checkpoint given: truncation and replacement of the "
                                       "whole database cannot be detected",)  # fmt: skip
    if damage is None:
        damage = _check_checkpoints(stored, exported, keys, db.log_id, walk.last, walk.hashes)
    return VerifyReport(walk.count, len({*stored, *exported}), walk.last, damage, warnings)


@dataclass(slots=True)
class _Walk:
    """The state of a chain walk: what has been checked, and the hashes at checkpoint seqs."""

    wanted: set[int]
    count: int = 0
    last: int = 0  # seq of the last record that verified
    hashes: dict[int, bytes] = field(default_factory=dict)


def _walk(db: AuditDB, walk: _Walk) -> Damage | None:
    """Check every record against the one before it; the first damage, or None."""
    expected_prev = genesis_hash(db.log_id)
    for row in db.rows():
        expected = walk.last + 1
        seq = row[0]
        if not isinstance(seq, int):
            return Damage(expected, "edited", "malformed seq")
        if seq > expected:
            missing = f"{expected}" if seq == expected + 1 else f"{expected}-{seq - 1}"
            return Damage(expected, "deleted", f"records {missing} missing")
        try:
            rec = record_from_row(row)
        except ValueError as exc:
            return Damage(seq, "edited", f"record {seq} is malformed: {exc}")
        self_ok = rec.computed_hash() == rec.hash
        if rec.prev_hash != expected_prev:
            return _link_damage(db, seq, rec.prev_hash, self_ok)
        if not self_ok:
            return Damage(seq, "edited", f"record {seq} content does not match its hash")
        if seq in walk.wanted:
            walk.hashes[seq] = rec.hash
        walk.count += 1
        walk.last, expected_prev = seq, rec.hash
    return None


def _link_damage(db: AuditDB, seq: int, prev_hash: bytes, self_ok: bool) -> Damage:
    """Record ``seq`` does not link to the record before it: say why."""
    elsewhere = db.seq_of_hash(prev_hash)
    if elsewhere is not None:
        return Damage(seq, "reordered", f"record {seq} follows record {elsewhere} in the chain")
    if seq == 1:
        detail = "record 1 does not start this log's chain (another log's records, or its id changed)"
        return Damage(1, "replaced", detail)
    if self_ok:
        detail = f"record {seq - 1} was changed (and rehashed): record {seq} no longer links to it"
        return Damage(seq - 1, "edited", detail)
    return Damage(seq, "edited", f"record {seq} content and link changed")


def _check_checkpoints(
    stored: Sequence[Checkpoint],
    exported: Sequence[Checkpoint],
    keys: PublicKeys,
    log_id: str,
    last: int,
    hashes: Mapping[int, bytes],
) -> Damage | None:
    """Signatures of all checkpoints first; then the chain against the exported checkpoints (the trust
    anchor: the database's own could have been signed by whoever rewrote it, with the daemon's rights),
    then against the stored ones (which still show a cut made without removing them)."""
    for cp in sorted({*stored, *exported}, key=lambda c: c.seq):
        key = keys.get((cp.key_name, cp.key_version))
        if key is None:
            what = f"checkpoint {cp.seq} names an unknown signing key {cp.key_name} version {cp.key_version}"
            return Damage(cp.seq, "bad signature", what)
        if not cp.verify_signature(key):
            return Damage(cp.seq, "bad signature", f"checkpoint {cp.seq} signature does not verify")
    return _against(exported, log_id, last, hashes) or _against(stored, log_id, last, hashes)


def _against(cps: Sequence[Checkpoint], log_id: str, last: int, hashes: Mapping[int, bytes]) -> Damage | None:
    vouched = 0  # highest seq a matching checkpoint vouches for
    for cp in sorted(cps, key=lambda c: c.seq):
        if cp.origin != log_id:
            detail = f"checkpoint {cp.seq} is of log {cp.origin}, this database is log {log_id}"
            return Damage(1, "replaced", detail)
        if cp.seq > last:
            continue
        if hashes.get(cp.seq) != cp.head:
            detail = f"record {cp.seq} differs from the head signed in checkpoint {cp.seq}"
            return Damage(vouched + 1, "replaced", detail)
        vouched = cp.seq
    beyond = [cp.seq for cp in cps if cp.seq > last]
    if beyond:
        detail = f"checkpoint {max(beyond)} signed records up to {max(beyond)}; the log ends at {last}"
        return Damage(last + 1, "truncated", detail)
    return None
