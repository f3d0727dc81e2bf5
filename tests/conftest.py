"""Shared test helpers: fixture paths and a runner for the real ``vigil`` command line."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
EVENT_FIXTURES = FIXTURES / "events"


def run_vigil(
    *args: str, stdin: bytes | None = None, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m vigil.cli ARGS`` as a user would, capturing stdout and stderr as bytes."""
    return subprocess.run(
        [sys.executable, "-m", "vigil.cli", *args],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
    )


def wait_until(check: Callable[[], object], what: str, *, deadline: float) -> None:
    """Poll ``check`` every 0.1 s until it is true; fail the test naming ``what`` after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if check():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


@pytest.fixture
def fixtures_dir() -> Path:
    return EVENT_FIXTURES
