"""``vigil run`` for real: a subprocess on a free port, a file dropped in, metrics polled, SIGTERM, exit 0.

Two ways in: the console entry point (``python -m vigil.cli run --config``), and :func:`serve` called
directly, so the runner's own contract is checked even where the CLI wiring changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

GOOD = {
    "time": "2024-05-01T10:00:00Z",
    "resourceId": "/SUBSCRIPTIONS/S1/RESOURCEGROUPS/G1/PROVIDERS/MICROSOFT.KEYVAULT/VAULTS/KV1",
    "operationName": "MICROSOFT.KEYVAULT/VAULTS/WRITE",
    "category": "Administrative",
    "resultType": "Success",
    "correlationId": "c-1",
}
SERVE = "import sys; from vigil.settings import load_settings; from vigil.streams.embedded import serve; " + (
    "sys.exit(serve(load_settings(sys.argv[1])))"
)
COMMANDS = {
    "cli": [sys.executable, "-m", "vigil.cli", "run", "--config"],
    "serve": [sys.executable, "-c", SERVE],
}
DEADLINE = 30.0
#: the daemon's rule set in these tests: one rule that the GOOD record matches
RULES = """\
id: t.vault-write
title: Key Vault written
severity: medium
kind: azure.activity
match: action == "microsoft.keyvault/vaults/write"
tests:
  - {name: fires, events: [{action: microsoft.keyvault/vaults/write}], expect: {findings: 1}}
  - {name: quiet, events: [{action: other}], expect: {findings: 0}}
"""
PROFILE_RULES = "detect:\n  rules: rules.yaml\n"


class Daemon:
    """A ``vigil run`` subprocess whose stderr is collected by a thread, so it can never block on a pipe."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("VIGIL_")} | (env or {})
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)

    def read_log(self) -> str:
        while not self.lines.empty():
            self.log.append(self.lines.get_nowait())
        return "".join(self.log)

    def wait_for_log(self, pattern: str) -> re.Match[str]:
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            match = re.search(pattern, self.read_log())
            if match:
                return match
            if self.proc.poll() is not None:
                time.sleep(0.2)
                pytest.fail(
                    f"vigil exited with {self.proc.returncode} before {pattern!r}:\n{self.read_log()}"
                )
            time.sleep(0.05)
        pytest.fail(f"no {pattern!r} in the log within {DEADLINE}s:\n{self.read_log()}")

    def wait(self, timeout: float) -> int:
        """Wait for the exit status, then for the last of its log to be read."""
        status = self.proc.wait(timeout)
        self._pump_thread.join(10)
        return status

    def stop(self) -> None:
        """Kill it if it still runs, reap it, and close the pipe (no process or descriptor left behind)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._pump_thread.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "rules.yaml").write_text(RULES, encoding="utf-8")
    (tmp_path / "profile.yaml").write_text(
        "data_dir: var\nhttp:\n  port: 0\ningest:\n  poll_interval: 0.1\n" + PROFILE_RULES, encoding="utf-8"
    )
    return tmp_path


@pytest.fixture
def daemon(request: pytest.FixtureRequest, workdir: Path) -> Iterator[Daemon]:
    # (the second way in also runs the pure-Python window state, which the daemon must say it does)
    env = {"VIGIL_PURE_PYTHON": "1"} if request.param == "serve" else None
    proc = Daemon([*COMMANDS[request.param], str(workdir / "profile.yaml")], workdir, env)
    try:
        yield proc
    finally:
        proc.stop()


def poll(url: str, check: str, want: dict[str, float] | int) -> httpx.Response:
    end = time.monotonic() + DEADLINE
    response = None
    while time.monotonic() < end:
        try:
            response = httpx.get(url, timeout=2)
        except httpx.TransportError:
            time.sleep(0.05)
            continue
        if check == "status" and response.status_code == want:
            return response
        if check == "metrics" and isinstance(want, dict) and _metrics(response.text).items() >= want.items():
            return response
        time.sleep(0.05)
    pytest.fail(f"{url} never answered {want}; last answer: {response and response.text}")


def _metrics(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


@pytest.mark.parametrize("daemon", ["cli", "serve"], indirect=True)
def test_vigil_run_end_to_end(daemon: Daemon, workdir: Path) -> None:
    base = daemon.wait_for_log(r"serving on (http://127\.0\.0\.1:(\d+))").group(1)
    assert not base.endswith(":0")
    poll(f"{base}/healthz", "status", 200)
    poll(f"{base}/readyz", "status", 200)

    inbox = workdir / "var" / "inbox"
    partial = inbox / "batch.jsonl.tmp"
    partial.write_text(f"{json.dumps(GOOD)}\n42\n{{broken\n", encoding="utf-8")
    partial.rename(inbox / "batch.jsonl")
    want = {
        "vigil_events_total": 1,
        "vigil_dead_letters_total": 2,
        "vigil_files_processed_total": 1,
        "vigil_files_failed_total": 0,
    }
    poll(f"{base}/metrics", "metrics", want)

    events = (workdir / "var" / "events.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(e)["action"] for e in events] == ["microsoft.keyvault/vaults/write"]
    assert len((workdir / "var" / "dead-letter.jsonl").read_text(encoding="utf-8").splitlines()) == 2
    assert (inbox / "processed" / "batch.jsonl").exists()
    # the event reached the store's log and the detect stage stored its finding, once
    db = workdir / "var" / "vigil.db"
    end = time.monotonic() + DEADLINE
    while time.monotonic() < end and _findings(db) != [("t.vault-write",)]:
        time.sleep(0.05)
    assert _findings(db) == [("t.vault-write",)]
    status = httpx.get(f"{base}/v1/status", timeout=5).json()
    assert status["counters"]["events"] == 1
    assert status["settings"]["ingest"]["drop_dir"] == str(inbox)
    pure = daemon.argv[:3] != COMMANDS["cli"][:3]
    assert status["detect"]["compiled_windows"] is not pure
    said = "threshold windows and event ids run in pure Python (VIGIL_PURE_PYTHON is set)"
    assert (said in daemon.read_log()) is pure

    # Both stop signals take the clean path: SIGTERM (what supervisors send) and SIGINT (Ctrl-C).
    daemon.proc.send_signal(signal.SIGTERM if daemon.argv[:3] == COMMANDS["cli"][:3] else signal.SIGINT)
    assert daemon.wait(20) == 0, daemon.read_log()
    log = daemon.read_log()
    assert "batch.jsonl: 1 events, 2 dead-lettered" in log
    assert f"watching drop folder {inbox}" in log


def _findings(db: Path) -> list[tuple[str]]:
    with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn:
        return conn.execute("SELECT rule FROM findings").fetchall()


def _start_fails(workdir: Path, *patterns: str) -> None:
    """``vigil run`` on the work dir's profile exits with status 1, logging each of ``patterns``."""
    proc = Daemon([*COMMANDS["serve"], str(workdir / "profile.yaml")], workdir)
    try:
        assert proc.wait(30) == 1
        for pattern in patterns:
            proc.wait_for_log(pattern)
    finally:
        proc.stop()


def test_a_rule_set_with_errors_stops_the_start(workdir: Path) -> None:
    (workdir / "rules.yaml").write_text(
        RULES.replace("severity: medium", "severity: urgent"), encoding="utf-8"
    )
    _start_fails(workdir, r"rules\.yaml:3:11: E112 severity", r"has errors; not starting")


def test_a_busy_port_is_a_clear_error(workdir: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (workdir / "profile.yaml").write_text(
            f"data_dir: var\nhttp:\n  port: {port}\n{PROFILE_RULES}", encoding="utf-8"
        )
        _start_fails(workdir, rf"cannot listen on 127\.0\.0\.1:{port}")


def test_a_corrupt_store_stops_the_start_and_is_left_as_it_is(workdir: Path) -> None:
    """Reliability H4: a damaged vigil.db is a clear error and exit 1, never a fresh store in its place
    (that would lose the dedup state, the cursors and the actions): nothing runs, nothing is remediated,
    and the file is kept for the operator to inspect or restore."""
    store = workdir / "var" / "vigil.db"
    store.parent.mkdir(parents=True)
    garbage = bytes(range(256)) * 32
    store.write_bytes(garbage)
    _start_fails(workdir, rf"cannot open the store: {re.escape(str(store))}: .*file is not a database")
    assert store.read_bytes() == garbage


def test_a_second_daemon_on_the_same_store_stops_and_a_killed_one_leaves_no_stale_lock(workdir: Path) -> None:
    argv = [*COMMANDS["serve"], str(workdir / "profile.yaml")]
    first = Daemon(argv, workdir)
    try:
        first.wait_for_log(r"serving on")
        second = Daemon(argv, workdir)
        try:
            assert second.wait(30) == 1
            second.wait_for_log(rf"another vigil daemon \(pid {first.proc.pid}\) runs on the store")
        finally:
            second.stop()
        first.proc.kill()  # SIGKILL: the lock goes with the process
        first.wait(30)
        third = Daemon(argv, workdir)
        try:
            third.wait_for_log(r"serving on")
        finally:
            third.stop()
    finally:
        first.stop()


def test_a_followed_jsonl_file_reaches_detection(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(RULES, encoding="utf-8")
    (tmp_path / "profile.yaml").write_text(
        "data_dir: var\nhttp:\n  port: 0\ningest:\n  poll_interval: 0.1\n  tail_files: [app.jsonl]\n"
        + PROFILE_RULES,
        encoding="utf-8",
    )
    proc = Daemon([*COMMANDS["serve"], str(tmp_path / "profile.yaml")], tmp_path)
    try:
        proc.wait_for_log(r"serving on")
        with (tmp_path / "app.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(GOOD) + "\n")
        db = tmp_path / "var" / "vigil.db"
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end and _findings(db) != [("t.vault-write",)]:
            time.sleep(0.05)
        assert _findings(db) == [("t.vault-write",)]
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, proc.read_log()
    finally:
        proc.stop()


def test_json_logs_are_one_object_per_line(workdir: Path) -> None:
    profile = workdir / "profile.yaml"
    profile.write_text(profile.read_text(encoding="utf-8") + "log_format: json\n", encoding="utf-8")
    proc = Daemon([*COMMANDS["serve"], str(profile)], workdir)
    try:
        proc.wait_for_log(r"serving on")
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        records = [json.loads(line) for line in proc.read_log().splitlines() if line.strip()]
        assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
        assert any(r["message"].startswith("serving on") for r in records)
    finally:
        proc.stop()
