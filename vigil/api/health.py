"""Operational endpoints: what an orchestrator, a Prometheus server and an on-call engineer ask first.

- ``GET /healthz``: liveness. 200 whenever the process can answer at all; restarting it would not help
  otherwise, so nothing else is checked.
- ``GET /readyz``: readiness. 200 only when the drop-folder watcher is running and its last scan
  succeeded; otherwise 503 with ``{"status": "not ready", "reason": ...}``, so a load balancer or a deploy
  script can tell "up" from "doing its job".
- ``GET /metrics``: Prometheus text exposition (format 0.0.4), written by hand: a dozen lines do not
  justify a client library, and the names are an interface dashboards depend on, so they are listed here.
- ``GET /v1/status``: JSON for humans and scripts: version, uptime, the effective settings (secrets
  redacted), the watcher's state and the counters.

The handlers only read the shared :class:`~vigil.streams.RunState`; they run in the event loop that also
drives the sources, so reads are consistent without locks.
"""

from __future__ import annotations

import time
from typing import Any, Final

from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse

from vigil.streams import RunState

PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: (name, type, help, attribute of IngestStats)
_INGEST_METRICS: Final = (
    ("vigil_events_total", "counter", "Events normalised and appended to the events file.", "events"),
    ("vigil_dead_letters_total", "counter", "Records that could not be normalised.", "dead_letters"),
    (
        "vigil_control_records_total",
        "counter",
        "Protocol records (such as Event Grid validation) that are counted, never scored.",
        "control_records",
    ),
    ("vigil_files_processed_total", "counter", "Drop-folder files moved to processed/.", "files_processed"),
    ("vigil_files_failed_total", "counter", "Drop-folder files that could not be read.", "files_failed"),
    ("vigil_drop_folder_pending_files", "gauge", "Candidate files in the drop folder.", "pending_files"),
)


def create_app(state: RunState) -> FastAPI:
    """Build the API over ``state``; ``app.state.vigil`` keeps it for later routers."""
    app = FastAPI(title="Vigil", version=state.version, docs_url=None, redoc_url=None)
    app.state.vigil = state

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        reason = not_ready_reason(state)
        if reason is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(render_metrics(state), media_type=PROMETHEUS_CONTENT_TYPE)

    @app.get("/v1/status")
    async def status() -> dict[str, Any]:
        return status_document(state)

    return app


def not_ready_reason(state: RunState) -> str | None:
    """Why the process is not ready, or None when it is."""
    ingest = state.ingest
    if not ingest.running:
        return "drop-folder watcher is not running"
    if ingest.last_scan_at is None:
        return "drop folder not scanned yet"
    if not ingest.last_scan_ok:
        return f"last drop-folder scan failed: {ingest.last_error or 'unknown error'}"
    return None


def render_metrics(state: RunState) -> str:
    """The Prometheus text exposition of ``state``."""
    ingest = state.ingest
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, value: float, labels: str = "") -> None:
        lines.append(f"# HELP {name} {_escape_help(help_text)}")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name}{labels} {_number(value)}")

    metric("vigil_up", "gauge", "1 while the process is serving.", 1)
    metric(
        "vigil_build_info",
        "gauge",
        "Always 1; the version is a label.",
        1,
        f'{{version="{_label(state.version)}"}}',
    )
    metric("vigil_start_time_seconds", "gauge", "Unix time at which the process started.", state.started_at)
    metric(
        "vigil_last_scan_timestamp_seconds",
        "gauge",
        "Unix time at which the last drop-folder scan ended (0: none yet).",
        ingest.last_scan_at or 0,
    )
    metric("vigil_ready", "gauge", "1 when /readyz answers 200.", 0 if not_ready_reason(state) else 1)
    for name, kind, help_text, attr in _INGEST_METRICS:
        metric(name, kind, help_text, getattr(ingest, attr))
    return "\n".join(lines) + "\n"


def status_document(state: RunState) -> dict[str, Any]:
    """The ``/v1/status`` body."""
    ingest = state.ingest
    reason = not_ready_reason(state)
    return {
        "version": state.version,
        "started_at": state.started_at,
        "uptime_seconds": round(max(0.0, time.time() - state.started_at), 3),
        "ready": reason is None,
        "reason": reason,
        "settings": state.settings.summary(),
        "ingest": {
            "running": ingest.running,
            "scans": ingest.scans,
            "last_scan_at": ingest.last_scan_at,
            "last_scan_ok": ingest.last_scan_ok,
            "last_error": ingest.last_error,
            "current_file": ingest.current_file,
            "pending_files": ingest.pending_files,
        },
        "counters": ingest.counters(),
    }


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
