"""``vigil audit verify | show | hmac``: exit codes, messages, and that hmac matches what the log stores."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import orjson
import pytest

from tests.audit.conftest import run, tamper
from vigil.audit.checkpoint import FileSink
from vigil.audit.commands import add_commands
from vigil.audit.commands import run as run_audit
from vigil.audit.log import HMAC_KEY, AuditLog
from vigil.audit.record import Actor, AuditKind
from vigil.platform.local.platform import LocalPlatform
from vigil.settings import load_settings

CANARY = "canary-webhook-secret-7f3a9c"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vigil")
    sub = parser.add_subparsers(dest="command")
    add_commands(sub)
    return parser


def _vigil(*argv: str) -> int:
    return run_audit(_parser().parse_args(["audit", *argv]))


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A profile whose data_dir holds an audit log written the way the daemon writes it."""
    cfg = tmp_path / "vigil.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\naudit:\n  checkpoint_every: 4\n")
    settings = load_settings(cfg, env={})

    async def write() -> None:
        platform = LocalPlatform(settings.platform)
        sinks = [FileSink(p) for p in settings.audit.checkpoint_files]
        log = AuditLog(settings.audit.path, platform.vault, checkpoint_every=4, sinks=sinks)
        await log.open()
        await log.append(Actor.user("alice"), AuditKind.LOGIN, "ui", {"method": "oidc"})
        for i in range(8):
            await log.append(Actor.rule("r.isolate"), AuditKind.ACTION_INTENT, f"vm/{i % 2}", {"i": i})
        await log.append(
            Actor.system(),
            AuditKind.CONFIG_CHANGE,
            "webhook/teams",
            {"field": "url"},
            secrets={"secret": CANARY},
        )
        await log.close()
        platform.close()

    run(write())
    return cfg


def test_verify_clean_log(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _vigil("verify", "--config", str(config)) == 0
    out = capsys.readouterr()
    assert out.out.startswith("ok: 10 records") and "audit-checkpoints.jsonl" in out.out


def test_verify_names_first_bad_seq_and_kind(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = config.parent / "data" / "audit.db"
    tamper(db, "UPDATE records SET subject = 'vm/elsewhere' WHERE seq = 6")
    assert _vigil("verify", "--config", str(config)) == 1
    assert "DAMAGED at seq 6: edited" in capsys.readouterr().out


def test_verify_truncation_against_a_given_checkpoint_file(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    offsite = tmp_path / "offsite.jsonl"
    (config.parent / "data" / "audit-checkpoints.jsonl").rename(offsite)
    tamper(
        config.parent / "data" / "audit.db", "DELETE FROM records WHERE seq > 7", "DELETE FROM checkpoints"
    )
    assert _vigil("verify", "--config", str(config)) == 0  # nothing exported to compare with ...
    assert "warning: no exported checkpoint" in capsys.readouterr().err
    assert _vigil("verify", "--config", str(config), "--checkpoint", str(offsite)) == 1  # ... and with it
    assert "DAMAGED at seq 8: truncated" in capsys.readouterr().out


def test_usage_errors_exit_2(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text(f"data_dir: {tmp_path / 'nothing'}\n")
    assert _vigil("verify", "--config", str(empty)) == 2
    assert "no audit log at" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("audit:\n  checkpoint_evry: 3\n")
    assert _vigil("verify", "--config", str(bad)) == 2
    assert "configuration error" in capsys.readouterr().err
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n")
    assert _vigil("verify", "--config", str(config), "--checkpoint", str(broken)) == 2
    assert "broken.jsonl:1" in capsys.readouterr().err
    assert _vigil("show", "--config", str(config), "--limit", "0") == 2
    assert _vigil("show", "--config", str(config), "--since", "yesterday") == 2


def test_show_filters_and_json(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        _vigil("show", "--config", str(config), "--kind", "action_intent", "--subject", "vm/1", "--json") == 0
    )
    rows = [orjson.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["details"]["i"] for r in rows] == [1, 3, 5, 7]
    assert all(r["actor"] == {"kind": "rule", "id": "r.isolate"} and len(r["hash"]) == 64 for r in rows)

    assert _vigil("show", "--config", str(config), "--since", "1h", "--limit", "2") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[-1].split()[0] == "10" and "config_change webhook/teams" in lines[-1]
    assert _vigil("show", "--config", str(config), "--since", "2999-01-01T00:00:00") == 0
    assert capsys.readouterr().out == ""


def test_hmac_matches_the_stored_value(
    config: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _vigil("hmac", "--config", str(config), CANARY) == 0
    out = capsys.readouterr()
    digest, *matches = out.out.splitlines()
    assert digest.startswith("hmac-sha256:")
    assert len(matches) == 1 and matches[0].split()[0] == "10" and digest in matches[0]
    assert "1 records contain it" in out.err
    monkeypatch.setattr("sys.stdin", io.StringIO(CANARY + "\n"))  # the value kept out of argv
    assert _vigil("hmac", "--config", str(config), "-") == 0
    assert capsys.readouterr().out.splitlines()[0] == digest
    assert _vigil("hmac", "--config", str(config), "other") == 0
    assert capsys.readouterr().out.splitlines()[1:] == []
    assert CANARY.encode() not in (config.parent / "data" / "audit.db").read_bytes()


def test_hmac_finds_records_written_before_the_key_was_rotated(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings(config, env={})

    async def rotate_then_write() -> None:
        platform = LocalPlatform(settings.platform)
        await platform.vault.rotate_key("vigil", HMAC_KEY)
        log = AuditLog(settings.audit.path, platform.vault, checkpoint_every=4)
        await log.open()
        await log.append(
            Actor.system(),
            AuditKind.CONFIG_CHANGE,
            "webhook/slack",
            {"field": "url"},
            secrets={"secret": CANARY},
        )
        await log.close()
        platform.close()

    run(rotate_then_write())
    assert _vigil("hmac", "--config", str(config), CANARY) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    current, older = lines[:2]
    assert current.startswith("hmac-sha256:") and older.startswith("hmac-sha256:") and current != older
    matches = lines[2:]
    assert [m.split()[0] for m in matches] == ["10", "11"], matches  # the old record and the new one
    assert older in matches[0] and current in matches[1]
    assert "2 records contain it" in out.err


def test_help_texts(capsys: pytest.CaptureFixture[str]) -> None:
    for sub, needle in (
        ("verify", "first bad sequence number"),
        ("show", "--since"),
        ("hmac", "shell history"),
    ):
        with pytest.raises(SystemExit) as exit_:
            _parser().parse_args(["audit", sub, "--help"])
        assert exit_.value.code == 0
        assert needle in capsys.readouterr().out
