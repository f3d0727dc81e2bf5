"""PrincipalTokens: tokens issued once, stored only as hashes, revoked at once, seen by other processes."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vigil.platform.principals import PrincipalTokens, TokenFileError, check_principal


def test_issue_returns_a_token_that_looks_up_to_its_principal(tmp_path: Path) -> None:
    tokens = PrincipalTokens(tmp_path / "principals.json")
    first, second = tokens.issue("node-1"), tokens.issue("vigil")
    assert len(first) >= 43 and first != second  # 32 random bytes, url-safe base64
    assert tokens.lookup(first) == "node-1"
    assert tokens.lookup(second) == "vigil"
    assert tokens.lookup(first + "x") is None
    assert tokens.lookup("") is None
    assert [e.principal for e in tokens.principals()] == ["node-1", "vigil"]


def test_the_file_holds_only_hashes_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "principals.json"
    token = PrincipalTokens(path).issue("node-1")
    raw = path.read_text(encoding="utf-8")
    assert token not in raw
    doc = json.loads(raw)
    entry = doc["principals"]["node-1"]
    assert entry["sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert entry["created"] > 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in repr(PrincipalTokens(path))


def test_issue_again_replaces_the_old_token_and_revoke_removes_it(tmp_path: Path) -> None:
    tokens = PrincipalTokens(tmp_path / "principals.json")
    old = tokens.issue("node-1")
    new = tokens.issue("node-1")
    assert tokens.lookup(old) is None
    assert tokens.lookup(new) == "node-1"
    assert tokens.revoke("node-1") is True
    assert tokens.lookup(new) is None
    assert tokens.revoke("node-1") is False
    assert tokens.principals() == []


def test_a_change_by_another_process_takes_effect_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "principals.json"
    service = PrincipalTokens(path)
    assert service.principals() == []  # read (and cached) before the other process writes
    code = (
        "import sys; from pathlib import Path; from vigil.platform.principals import PrincipalTokens;"
        "print(PrincipalTokens(Path(sys.argv[1])).issue('node-2'))"
    )
    issued = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    assert service.lookup(issued) == "node-2"
    PrincipalTokens(path).revoke("node-2")  # another instance, as the CLI would be
    assert service.lookup(issued) is None


@pytest.mark.parametrize("name", ["", "-x", "a/b", "a b", "x" * 129, "naïve"])
def test_invalid_principal_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="invalid principal name"):
        PrincipalTokens(tmp_path / "p.json").issue(name)
    assert not (tmp_path / "p.json").exists()


def test_valid_principal_names(tmp_path: Path) -> None:
    for name in ("vigil", "node-1", "spn:trainer@corp.example", "a.b_c"):
        assert check_principal(name) == name


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"[]",
        b'{"version": 2, "principals": {}}',
        b'{"version": 1, "principals": []}',
        b'{"version": 1, "principals": {"node-1": {"sha256": "abc"}}}',
        b'{"version": 1, "principals": {"a/b": {"sha256": "' + b"0" * 64 + b'"}}}',
    ],
)
def test_a_damaged_file_is_an_error_that_quotes_nothing(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "principals.json"
    path.write_bytes(content)
    tokens = PrincipalTokens(path)
    with pytest.raises(TokenFileError) as info:
        tokens.lookup("some-token")
    assert str(path) in str(info.value)
    assert "some-token" not in str(info.value)
    with pytest.raises(TokenFileError):
        tokens.issue("node-1")  # never overwrites a file it cannot read (that would drop every principal)


def test_a_missing_file_means_no_principals(tmp_path: Path) -> None:
    tokens = PrincipalTokens(tmp_path / "absent" / "principals.json")
    assert tokens.lookup("anything") is None
    assert tokens.principals() == []
    tokens.issue("vigil")  # creates the folder
    assert os.path.exists(tmp_path / "absent" / "principals.json")
