"""``vigil normalize`` and the CLI surface, run as a user runs them (a real subprocess)."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson

from tests.conftest import EVENT_FIXTURES, run_vigil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from gen_activity import records


def test_help_lists_commands() -> None:
    res = run_vigil("--help")
    assert res.returncode == 0
    assert b"normalize" in res.stdout and b"run" in res.stdout
    res = run_vigil("normalize", "--help")
    assert res.returncode == 0 and b"dead letter" in res.stdout


def test_normalize_file_writes_events_and_summary(tmp_path: Path) -> None:
    recs = list(records(10))
    recs[4] = {"records": [recs[4], {"time": "x"}]}
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(orjson.dumps(r) for r in recs) + b"\n")
    res = run_vigil("normalize", str(src))
    assert res.returncode == 0, res.stderr
    events = [orjson.loads(line) for line in res.stdout.splitlines()]
    assert len(events) == 10
    assert all(e["kind"] == "azure.activity" and "raw" in e for e in events)
    err = res.stderr.decode()
    assert err.strip().splitlines()[-1] == "10 events, 1 dead-lettered"
    dead = orjson.loads(err.splitlines()[0])
    assert dead["line"] == 5 and dead["index"] == "records[1]" and dead["source"] == str(src)


def test_normalize_stdin_strict_and_dead_letter_file(tmp_path: Path) -> None:
    dl = tmp_path / "dl.jsonl"
    body = orjson.dumps(next(records(1))) + b"\nnot json\n"
    res = run_vigil("normalize", "--strict", "--dead-letter", str(dl), "-", stdin=body)
    assert res.returncode == 1
    assert len(res.stdout.splitlines()) == 1
    assert b"1 events, 1 dead-lettered" in res.stderr
    (entry,) = [orjson.loads(x) for x in dl.read_bytes().splitlines()]
    assert entry["source"] == "-" and entry["line"] == 2 and entry["text"] == "not json"
    assert "invalid JSON" in entry["reason"]


def test_normalize_every_fixture_format_in_one_run() -> None:
    good = sorted(str(p) for p in EVENT_FIXTURES.glob("*/good_*.json*"))
    res = run_vigil("normalize", "--strict", *good)
    assert res.returncode == 0, res.stderr.decode()
    kinds = {orjson.loads(line)["kind"] for line in res.stdout.splitlines()}
    assert "azure.activity" in kinds


def test_output_feeds_back_in_as_generic_events(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(orjson.dumps(r) for r in records(5)))
    first = run_vigil("normalize", str(src))
    second = run_vigil("normalize", "--strict", "-", stdin=first.stdout)
    assert second.returncode == 0, second.stderr
    assert [orjson.loads(x) for x in first.stdout.splitlines()] == [
        orjson.loads(x) for x in second.stdout.splitlines()
    ]


def test_usage_errors() -> None:
    res = run_vigil("normalize", "--format", "nope", "x.json")
    assert res.returncode == 2 and b"unknown --format 'nope'" in res.stderr
    res = run_vigil("normalize")
    assert res.returncode == 2
    res = run_vigil("normalize", "/nonexistent/file.json")
    assert res.returncode == 1 and b"No such file" in res.stderr


def test_list_formats() -> None:
    res = run_vigil("normalize", "--list-formats")
    assert res.returncode == 0
    names = {line.split()[0] for line in res.stdout.decode().splitlines()}
    assert {"activity", "keyvault", "storage", "eventgrid", "cloudevents", "generic"} <= names


def test_actions_take_json_before_or_after_the_operation() -> None:
    from vigil.cli import build_parser

    parser = build_parser()
    for argv, want in (
        (["actions", "show", "X", "--json"], True),
        (["actions", "--json", "show", "X"], True),
        (["actions", "approve", "X", "--token-file", "t", "--json"], True),
        (["actions", "show", "X"], False),
    ):
        assert parser.parse_args(argv).json is want, argv


def test_commands_before_any_daemon_ran_say_so_without_a_traceback(tmp_path: Path) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"data_dir: {tmp_path / 'var'}\nhttp:\n  port: 9\n", encoding="utf-8")
    for args in (
        ("platform", "nodes", "list"),
        ("audit", "verify"),
        ("actions", "list"),
        ("alerts", "status"),
    ):
        res = run_vigil(*args, "--config", str(profile))
        assert res.returncode in (1, 2) and b"Traceback" not in res.stderr, (args, res.stderr)
        assert res.stderr.startswith(b"vigil"), (args, res.stderr)
