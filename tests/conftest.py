"""Shared test helpers: fixture paths and a runner for the real ``vigil`` command line."""

from __future__ import annotations

import subprocess
import sys
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


@pytest.fixture
def fixtures_dir() -> Path:
    return EVENT_FIXTURES
