"""The operational endpoints, through the real app and a real HTTP client.

httpx's ASGI transport rather than Starlette's Client: the installed Starlette deprecates the latter
with plain httpx, and the suite turns warnings into errors.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from vigil import __version__
from vigil.api import create_app
from vigil.settings import load_settings
from vigil.streams import RunState

METRIC_LINE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


@pytest.fixture
def state(tmp_path: Path) -> RunState:
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"data_dir: {tmp_path / 'var'}\nhttp:\n  port: 0\n", encoding="utf-8")
    return RunState(settings=load_settings(profile, env={}))


class Client:
    """A synchronous face over ``httpx.AsyncClient`` + ``ASGITransport``, one request per event loop."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def get(self, path: str) -> httpx.Response:
        async def fetch() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://vigil.test") as client:
                response = await client.get(path)
                await response.aread()
                return response

        return asyncio.run(fetch())


@pytest.fixture
def client(state: RunState) -> Client:
    return Client(create_app(state))


def scrape(client: Client) -> dict[str, float]:
    """Parse the exposition strictly: every sample preceded by its HELP and TYPE lines."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert response.text.endswith("\n")
    samples: dict[str, float] = {}
    declared: dict[str, str] = {}
    for line in response.text.splitlines():
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            declared[name] = kind
            continue
        match = METRIC_LINE.match(line)
        assert match, line
        name, _labels, value = match.groups()
        assert name in declared, f"{name} has no TYPE line"
        if declared[name] == "counter":
            assert name.endswith("_total")
        samples[name] = float(value)
    return samples


def test_healthz(client: Client) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_follows_the_watcher(client: Client, state: RunState) -> None:
    def ready() -> tuple[int, dict[str, str]]:
        response = client.get("/readyz")
        return response.status_code, response.json()

    assert ready() == (503, {"status": "not ready", "reason": "drop-folder watcher is not running"})
    state.ingest.running = True
    assert ready() == (503, {"status": "not ready", "reason": "drop folder not scanned yet"})
    state.ingest.last_scan_at, state.ingest.last_scan_ok = 1_700_000_000.5, True
    assert ready() == (200, {"status": "ready"})
    state.ingest.last_scan_ok, state.ingest.last_error = False, "events.jsonl: No space left on device"
    assert ready() == (
        503,
        {
            "status": "not ready",
            "reason": "last drop-folder scan failed: events.jsonl: No space left on device",
        },
    )


def test_metrics(client: Client, state: RunState) -> None:
    samples = scrape(client)
    assert samples["vigil_up"] == 1
    assert samples["vigil_ready"] == 0
    assert samples["vigil_last_scan_timestamp_seconds"] == 0
    for name in (
        "vigil_events_total",
        "vigil_dead_letters_total",
        "vigil_control_records_total",
        "vigil_files_processed_total",
        "vigil_files_failed_total",
    ):
        assert samples[name] == 0, name

    ingest = state.ingest
    ingest.running, ingest.last_scan_ok, ingest.last_scan_at = True, True, 1_700_000_000.25
    ingest.events, ingest.dead_letters, ingest.control_records = 1200, 7, 1
    ingest.files_processed, ingest.files_failed = 3, 1
    samples = scrape(client)
    assert samples["vigil_events_total"] == 1200
    assert samples["vigil_dead_letters_total"] == 7
    assert samples["vigil_control_records_total"] == 1
    assert samples["vigil_files_processed_total"] == 3
    assert samples["vigil_files_failed_total"] == 1
    assert samples["vigil_last_scan_timestamp_seconds"] == 1_700_000_000.25
    assert samples["vigil_ready"] == 1
    assert f'vigil_build_info{{version="{__version__}"}} 1' in client.get("/metrics").text


def test_status(client: Client, state: RunState) -> None:
    state.ingest.running = True
    state.ingest.events = 5
    body = client.get("/v1/status").json()
    assert body["version"] == __version__
    assert body["ready"] is False and body["reason"] == "drop folder not scanned yet"
    assert body["uptime_seconds"] >= 0
    http = body["settings"]["http"]
    assert (http["host"], http["port"]) == ("127.0.0.1", 0)
    assert http["sources"]["events"]["tokens"] == []  # (a configured secret would read "<redacted>")
    assert body["settings"]["ingest"]["drop_dir"] == str(state.settings.ingest.drop_dir)
    assert body["ingest"]["running"] is True
    assert body["counters"] == {
        "events": 5,
        "dead_letters": 0,
        "control_records": 0,
        "files_processed": 0,
        "files_failed": 0,
    }


def test_unknown_path_is_404(client: Client) -> None:
    assert client.get("/nope").status_code == 404
