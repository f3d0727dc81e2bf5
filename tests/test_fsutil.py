"""The file-system helpers: atomic replace, and the process lock that keeps a second daemon off a store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vigil.fsutil import LockedError, ProcessLock, atomic_write


def test_atomic_write_replaces_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.json"
    atomic_write(target, b"one")
    atomic_write(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(target.parent) == ["file.json"]


def test_a_held_lock_refuses_others_with_the_holder_pid_until_released(tmp_path: Path) -> None:
    path = tmp_path / "var" / "vigil.db.lock"
    held = ProcessLock(path)
    assert path.read_text() == f"{os.getpid()}\n"
    with pytest.raises(LockedError) as caught:
        ProcessLock(path)  # (flock locks conflict between open files, even in one process)
    assert caught.value.holder == str(os.getpid())
    held.release()
    held.release()  # twice is harmless
    again = ProcessLock(path)
    again.release()


def test_a_lock_file_left_behind_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "vigil.db.lock"
    path.write_text("999999\n")  # a crashed holder's file: no lock is held on it
    ProcessLock(path).release()
    assert path.read_text() == f"{os.getpid()}\n"
