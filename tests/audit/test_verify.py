"""Tamper detection (reliability.md G3): every kind of damage, at every position, names the first bad seq."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.audit.conftest import copy_db, filled_log, keys_of, open_vault, run, tamper
from vigil.audit.checkpoint import Checkpoint, FileSink, load_checkpoints
from vigil.audit.db import AuditDB
from vigil.audit.log import AuditLog
from vigil.audit.record import RECORD_PREFIX
from vigil.audit.verify import PublicKeys, verify
from vigil.platform.local.keyvault import LocalKeyVault

N = 30  # records in the original log; checkpoints every 5 (and a final one at 30)


@pytest.fixture(scope="module")
def vault(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKeyVault]:
    v = open_vault(tmp_path_factory.mktemp("platform"))
    yield v
    v.close()


@pytest.fixture(scope="module")
def original(
    tmp_path_factory: pytest.TempPathFactory, vault: LocalKeyVault
) -> tuple[Path, list[Checkpoint], PublicKeys]:
    """The untouched log, built once; every test tampers with its own copy."""
    root = tmp_path_factory.mktemp("original")
    path = root / "original.db"
    sink = FileSink(root / "exported.jsonl")
    run(filled_log(AuditLog(path, vault, checkpoint_every=5, sinks=[sink]), N, batch=2))
    exported = load_checkpoints(sink.path)
    assert [cp.seq for cp in exported] == [6, 12, 18, 24, 30]
    return path, exported, keys_of(vault)


def _case(tmp_path: Path, original: Path, name: str) -> Path:
    return copy_db(original, tmp_path / f"{name}.db")


def test_untouched_log_verifies(original: tuple[Path, list[Checkpoint], PublicKeys]) -> None:
    path, exported, keys = original
    report = verify(path, keys, exported)
    assert report.ok, report.summary()
    assert (report.records, report.head_seq) == (N, N)
    assert report.checkpoints == 5 and report.warnings == ()
    assert "ok: 30 records" in report.summary()
    assert verify(path, keys).warnings  # no exported checkpoint: says what it cannot see


@pytest.mark.parametrize("seq", range(1, N + 1))
def test_every_edit_is_detected(
    tmp_path: Path, original: tuple[Path, list[Checkpoint], PublicKeys], seq: int
) -> None:
    path, exported, keys = original
    case = _case(tmp_path, path, "edit")
    tamper(case, f'UPDATE records SET details = \'{{"n":-1,"why":"test"}}\' WHERE seq = {seq}')
    damage = verify(case, keys, exported).damage
    assert damage is not None and (damage.seq, damage.kind) == (seq, "edited")


@pytest.mark.parametrize("column", ["subject", "actor_id", "time_us", "mono_us", "kind", "actor_kind"])
def test_edits_of_any_column_are_detected(
    tmp_path: Path, original: tuple[Path, list[Checkpoint], PublicKeys], column: str
) -> None:
    path, exported, keys = original
    case = _case(tmp_path, path, "col")
    value = {"subject": "'vm/other'", "actor_id": "'mallory'", "time_us": "time_us - 1", "mono_us": "0",
             "kind": "'approval'", "actor_kind": "'user'"}[column]  # fmt: skip
    tamper(case, f"UPDATE records SET {column} = {value} WHERE seq = 9")
    damage = verify(case, keys, exported).damage
    assert damage is not None and (damage.seq, damage.kind) == (9, "edited")


def test_edit_with_rehash_names_the_edited_record(
    tmp_path: Path, original: tuple[Path, list[Checkpoint], PublicKeys]
) -> None:
    path, exported, keys = original
    case = _case(tmp_path, path, "rehash")
    db = AuditDB(case, readonly=True)
    (rec,) = [r for r in db.query(limit=N) if r.seq == 11]
    db.close()
    forged = rec.canonical().replace(b'"why":"test"', b'"why":"fake"')
    new_hash = hashlib.sha256(RECORD_PREFIX + rec.prev_hash + forged).digest()
    tamper(
        case,
        'UPDATE records SET details = \'{"n":10,"why":"fake"}\', hash = ? WHERE seq = 11',
        params=(new_hash,),
    )
    damage = verify(case, keys, exported).damage
    assert damage is not None and (damage.seq, damage.kind) == (11, "edited")


@pytest.mark.parametrize("seq", range(1, N))  # deleting the last record is a truncation (below)
def test_every_deletion_is_detected(
    tmp_path: Path, original: tuple[Path, list[Checkpoint], PublicKeys], seq: int
) -> None:
    path, exported, keys = original
    case = _case(tmp_path, path, "delete")
    tamper(case, f"DELETE FROM records WHERE seq = {seq}")
    damage = verify(case, keys, exported).damage
    assert damage is not None and (damage.seq, damage.kind) == (seq, "deleted")


@pytest.mark.parametrize("seq", range(1, N))
def test_every_swap_of_neighbours_is_detected(
    tmp_path: Path, original: tuple[Path, list[Checkpoint], PublicKeys], seq: int
) -> None:
    path, exported, keys = original
    case = _case(tmp_path, path, "swap")
    tamper(
        case,
        f"UPDATE records SET seq = -1 WHERE seq = {seq}",
        f"UPDATE records SET seq = {seq} WHERE seq = {seq + 1}",
        f"UPDATE records SET seq = {seq + 1} WHERE seq = -1",
    )
    damage = verify(case, keys, exported).damage
    assert damage is not None and (damage.seq, damage.kind) == (seq, "reordered")


def test_distant_swap_is_detected(
    tmp_path: Path, original: tuple[Path, list[Checkpoint], PublicKeys]
) -> None:
    path, exported, keys = original
    case = _case(tmp_path, path, "swap")
    tamper(
        case,
        "UPDATE records SET seq = -1 WHERE seq = 4",
        "UPDATE records SET seq = 4 WHERE seq = 20",
        "UPDATE records SET seq = 20 WHERE seq = -1",
    )
    damage = verify(case, keys, exported).damage
    assert damage is not None and (damage.seq, damage.kind) == (4, "reordered")


@pytest.mark.parametrize("keep", [0, 1, 20, 29])
def test_truncation_is_caught_by_an_exported_checkpoint(
    tmp_path: Path, original: tuple[Path, list[Checkpoint], PublicKeys], keep: int
) -> None:
    path, exported, keys = original
    case = _case(tmp_path, path, "truncate")
    # the attacker also removes the stored checkpoints that would give the cut away
    tamper(case, f"DELETE FROM records WHERE seq > {keep}", f"DELETE FROM checkpoints WHERE seq > {keep}")
    damage = verify(case, keys, exported).damage
    assert damage is not None and (damage.seq, damage.kind) == (keep + 1, "truncated")
    # without the exported checkpoints the cut chain looks whole: that is what exporting is for
    assert verify(case, keys).ok


def test_replacement_by_a_fresh_log_is_detected(
    tmp_path: Path, vault: LocalKeyVault, original: tuple[Path, list[Checkpoint], PublicKeys]
) -> None:
    path, exported, keys = original
    fresh = tmp_path / "fresh.db"
    run(filled_log(AuditLog(fresh, vault, checkpoint_every=5), 12))
    path = copy_db(
        fresh, _case(tmp_path, path, "replaced")
    )  # the whole file replaced by a shorter, internally valid chain
    assert verify(path, keys).ok  # valid on its own, signed checkpoints and all
    damage = verify(path, keys, exported).damage
    assert damage is not None and (damage.seq, damage.kind) == (1, "replaced")


def test_replacement_with_the_same_log_id_is_detected(
    tmp_path: Path, vault: LocalKeyVault, original: tuple[Path, list[Checkpoint], PublicKeys]
) -> None:
    """The attacker (with the vault's signing rights) keeps records 1-12, drops the rest and regrows a
    different, shorter tail with a new AuditLog on the same file: the exported checkpoints still catch it."""
    path, exported, _ = original
    case = _case(tmp_path, path, "regrown")
    tamper(case, "DELETE FROM records WHERE seq > 12", "DELETE FROM checkpoints WHERE seq > 12")
    run(filled_log(AuditLog(case, vault, checkpoint_every=5), 8, start=1000))
    assert verify(case, keys_of(vault)).ok
    damage = verify(case, keys_of(vault), exported).damage
    assert damage is not None and (damage.seq, damage.kind) == (13, "replaced")


def test_forged_or_foreign_checkpoints_are_bad_signatures(
    tmp_path: Path, vault: LocalKeyVault, original: tuple[Path, list[Checkpoint], PublicKeys]
) -> None:
    path, exported, keys = original
    cp = exported[1]
    forged = Checkpoint(
        cp.seq, cp.origin, b"\x00" * 32, cp.time_us, cp.key_name, cp.key_version, cp.signature
    )
    damage = verify(path, keys, [*exported, forged]).damage
    assert damage is not None and (damage.seq, damage.kind) == (cp.seq, "bad signature")
    unknown = Checkpoint(cp.seq, cp.origin, cp.head, cp.time_us, cp.key_name, "f" * 32, cp.signature)
    damage = verify(path, keys, [unknown]).damage
    assert damage is not None and damage.kind == "bad signature" and "unknown signing key" in damage.detail


def test_stored_checkpoints_are_checked_too(
    tmp_path: Path, original: tuple[Path, list[Checkpoint], PublicKeys]
) -> None:
    path, _, keys = original
    case = _case(tmp_path, path, "stored")
    tamper(case, "UPDATE checkpoints SET head = zeroblob(32) WHERE seq = 12")
    damage = verify(case, keys).damage
    assert damage is not None and (damage.seq, damage.kind) == (12, "bad signature")


def test_malformed_rows_are_edits(
    tmp_path: Path, original: tuple[Path, list[Checkpoint], PublicKeys]
) -> None:
    path, exported, keys = original
    case = _case(tmp_path, path, "malformed")
    tamper(case, "UPDATE records SET details = 'not json' WHERE seq = 3")
    damage = verify(case, keys, exported).damage
    assert damage is not None and (damage.seq, damage.kind) == (3, "edited")


def test_missing_or_foreign_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        verify(tmp_path / "nope.db", {})
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE meta (key TEXT, value TEXT)").connection.close()
    with pytest.raises(sqlite3.DatabaseError, match="not an audit log"):
        verify(other, {})
