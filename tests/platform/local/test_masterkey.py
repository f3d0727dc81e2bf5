"""The master key: sealing, the key file's creation and permission check, passphrase derivation."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest

from vigil.errors import ConfigError
from vigil.platform.errors import IntegrityError
from vigil.platform.local.masterkey import MasterKey, write_new_file


def test_seal_round_trip_and_every_byte_is_authenticated() -> None:
    master = MasterKey.generate()
    blob = master.seal(b"key material", b"k1/v1")
    assert master.open(blob, b"k1/v1") == b"key material"
    assert blob[0] == 1 and len(blob) == 1 + 12 + len(b"key material") + 16
    assert master.seal(b"key material", b"k1/v1") != blob  # a fresh nonce every time
    for i in range(len(blob)):
        damaged = bytearray(blob)
        damaged[i] ^= 0x01
        with pytest.raises(IntegrityError):
            master.open(bytes(damaged), b"k1/v1")


def test_open_refuses_other_aad_other_key_and_short_blobs() -> None:
    master = MasterKey.generate()
    blob = master.seal(b"secret", b"k1/v1")
    with pytest.raises(IntegrityError, match="changed or moved"):
        master.open(blob, b"k2/v1")
    with pytest.raises(IntegrityError, match="wrong master key"):
        MasterKey.generate().open(blob, b"k1/v1")
    with pytest.raises(IntegrityError, match="truncated"):
        master.open(blob[:20], b"k1/v1")


def test_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "master.key"
    first = MasterKey.from_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    again = MasterKey.from_file(path)
    assert again.open(first.seal(b"x", b"aad"), b"aad") == b"x"
    assert not write_new_file(path, b"other")  # O_EXCL: never overwritten
    assert MasterKey.from_file(path, create=False).open(first.seal(b"y", b""), b"") == b"y"


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_key_file_open_to_group_or_others_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "master.key"
    MasterKey.from_file(path)
    os.chmod(path, mode)
    with pytest.raises(ConfigError) as caught:
        MasterKey.from_file(path)
    message = str(caught.value)
    assert f"chmod 600 {path}" in message and f"{mode:04o}" in message
    os.chmod(path, 0o600)
    MasterKey.from_file(path)


def test_missing_or_damaged_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        MasterKey.from_file(tmp_path / "none.key", create=False)
    short = tmp_path / "short.key"
    write_new_file(short, b"\x00" * 31)
    with pytest.raises(ConfigError, match="31 bytes, expected 32"):
        MasterKey.from_file(short)
    folder = tmp_path / "folder.key"
    folder.mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        MasterKey.from_file(folder, create=False)


def test_passphrase_derives_the_same_key_with_the_persisted_salt(tmp_path: Path) -> None:
    salt_file = tmp_path / "master.salt"
    first = MasterKey.from_passphrase("correct horse battery staple", salt_file)
    assert len(salt_file.read_bytes()) == 16
    blob = first.seal(b"material", b"k/v")
    again = MasterKey.from_passphrase("correct horse battery staple", salt_file)
    assert again.open(blob, b"k/v") == b"material"
    # the same passphrase with another salt is another key
    other_salt = MasterKey.from_passphrase("correct horse battery staple", tmp_path / "other.salt")
    with pytest.raises(IntegrityError):
        other_salt.open(blob, b"k/v")


def test_wrong_passphrase_fails_on_first_read(tmp_path: Path) -> None:
    salt_file = tmp_path / "master.salt"
    blob = MasterKey.from_passphrase("right", salt_file).seal(b"material", b"k/v")
    wrong = MasterKey.from_passphrase("wrong", salt_file)  # not detectable before a read
    with pytest.raises(IntegrityError, match="wrong master key or passphrase"):
        wrong.open(blob, b"k/v")


def test_passphrase_is_unicode_normalised_and_may_not_be_empty(tmp_path: Path) -> None:
    salt_file = tmp_path / "master.salt"
    composed = MasterKey.from_passphrase("caf\u00e9", salt_file)
    decomposed = MasterKey.from_passphrase("cafe\u0301", salt_file)
    assert decomposed.open(composed.seal(b"x", b""), b"") == b"x"
    with pytest.raises(ValueError, match="empty"):
        MasterKey.from_passphrase("", salt_file)
    bad_salt = tmp_path / "bad.salt"
    bad_salt.write_bytes(b"short")
    with pytest.raises(ConfigError, match="5 bytes"):
        MasterKey.from_passphrase("x", bad_salt)


def test_repr_and_pickle_never_show_the_key(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    master = MasterKey.from_file(path)
    raw = path.read_bytes()
    text = repr(master)
    assert text == f"MasterKey(source='file:{path}')"
    assert raw.hex() not in text
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(master)
    with pytest.raises(ValueError, match="32 bytes"):
        MasterKey(b"short")


def test_row_tags_bind_every_field_and_type() -> None:
    master = MasterKey.generate()
    tag = master.row_tag("grants", "node-a", "k1", "wrap")
    assert master.row_tag_ok(tag, "grants", "node-a", "k1", "wrap")
    assert not master.row_tag_ok(tag, "grants", "node-a", "k1", "unwrap")
    assert not master.row_tag_ok(tag, "grants", "node-a", "*", "wrap")
    assert master.row_tag("t", b"ab") != master.row_tag("t", "ab")
    assert master.row_tag("t", 1) != master.row_tag("t", True)
    assert master.row_tag("t", None) != master.row_tag("t", "")
    assert not MasterKey.generate().row_tag_ok(tag, "grants", "node-a", "k1", "wrap")
