"""Azurite (Microsoft's Storage emulator, npm ``azurite``) for tests: started on 127.0.0.1 with a random port.

Installed by ``make test`` with ``npm install --prefix .azurite azurite@3.37.0`` (the folder is git-ignored);
Node 20 runs it although the package asks for Node 22 (reference/azure.md §7.1). Only the Blob service is
started, in memory, with a small extent limit; the port is chosen by Azurite (``--blobPort 0``) and read
from its start-up line, so parallel test runs never collide.

Use the ``azurite`` fixture (module scope: one emulator per test module), or :func:`started` directly;
tests skip with the reason when Azurite is not installed. Set ``VIGIL_AZURITE`` to the path of an
``azurite-blob`` executable to use another installation.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

REPO: Final = Path(__file__).resolve().parent.parent
LOCAL_BIN: Final = REPO / ".azurite" / "node_modules" / ".bin" / "azurite-blob"
INSTALL_HINT: Final = "npm install --prefix .azurite azurite@3.37.0 (make test does it)"
#: the emulator's well-known development account (public; reference/azure.md §7.1)
ACCOUNT: Final = "devstoreaccount1"
ACCOUNT_KEY: Final = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
_LISTENING: Final = re.compile(rb"listens on (http://127\.0\.0\.1:(\d+))")
START_TIMEOUT: Final = 30.0


def executable() -> Path | None:
    """The ``azurite-blob`` to run, or None when neither ``VIGIL_AZURITE`` nor ``.azurite/`` has one."""
    configured = os.environ.get("VIGIL_AZURITE")
    if configured:
        return Path(configured) if Path(configured).exists() else None
    if LOCAL_BIN.exists():
        return LOCAL_BIN
    found = shutil.which("azurite-blob")
    return Path(found) if found else None


@dataclass
class Azurite:
    """A running emulator: its Blob endpoint and a connection string for the development account."""

    process: subprocess.Popen[bytes]
    blob_endpoint: str

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint}/{ACCOUNT};"
        )

    @staticmethod
    def container_name() -> str:
        """A fresh container name, so tests sharing one emulator never see each other's blobs."""
        return f"t{uuid.uuid4().hex[:20]}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=1)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


def start(binary: Path) -> Azurite:
    """Start ``binary`` on 127.0.0.1 with a port of its choosing; wait until it listens."""
    proc = subprocess.Popen(
        [
            str(binary),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            "0",
            "--inMemoryPersistence",
            "--extentMemoryLimit",
            "64",
            "--skipApiVersionCheck",
            "--loose",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    found: list[str] = []
    seen: list[bytes] = []
    ready = threading.Event()

    def read() -> None:  # keep draining, or a chatty emulator blocks on a full pipe
        assert proc.stdout is not None
        for line in proc.stdout:
            if not found:
                seen.append(line)
                match = _LISTENING.search(line)
                if match:
                    found.append(match.group(1).decode())
                    ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True, name="azurite-output").start()
    deadline = time.monotonic() + START_TIMEOUT
    while not ready.wait(0.1):
        if time.monotonic() > deadline:
            break
    if not found:
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait(timeout=10)
        output = b"".join(seen).decode("utf-8", "replace")[-2000:]
        raise RuntimeError(f"Azurite ({binary}) did not start within {START_TIMEOUT:.0f} s:\n{output}")
    return Azurite(proc, found[0])


@contextlib.contextmanager
def started() -> Iterator[Azurite]:
    """Azurite for the ``with`` block; skips the calling test when it is not installed."""
    binary = executable()
    if binary is None:
        pytest.skip(f"Azurite is not installed; run: {INSTALL_HINT}")
    emulator = start(binary)
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def azurite() -> Iterator[Azurite]:
    """One Azurite per test module (import this fixture into the module that uses it)."""
    with started() as emulator:
        yield emulator
