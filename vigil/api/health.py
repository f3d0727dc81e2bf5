"""Operational endpoints: what an orchestrator, a Prometheus server and an on-call engineer ask first.

- ``GET /healthz``: liveness. 200 whenever the process can answer at all; restarting it would not help
  otherwise, so nothing else is checked.
- ``GET /readyz``: readiness. 200 only when the drop-folder watcher is running and its last scan
  succeeded; otherwise 503 with ``{"status": "not ready", "reason": ...}``, so a load balancer or a deploy
  script can tell "up" from "doing its job".
- ``GET /metrics``: Prometheus text exposition (format 0.0.4), written by hand: a dozen lines do not
  justify a client library, and the names are an interface dashboards depend on, so they are listed here
  (and in config/README.md). The detection metrics (findings, detect events, lag, late events, open
  window keys, rules loaded, per-rule key-limit hits) appear only once the runner has put the store, the
  rule set, the detector and the detect stage's counters into the state: a process without them has
  nothing true to report, and a 0 would read as "healthy and idle".
- ``GET /v1/status``: JSON for humans and scripts: version, uptime, the effective settings (secrets
  redacted), the watcher's state, the counters, and under ``detect`` the detect stage's and the
  detector's numbers (null before either exists).

The read API (findings, dead letters, rules) lives in :mod:`vigil.api.read`; :func:`create_app` mounts it,
so that one factory builds the whole app.

The handlers only read the shared :class:`~vigil.streams.RunState`; they run in the event loop that also
drives the sources, so reads are consistent without locks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import time
from collections.abc import Iterable
from typing import Any, Final

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.requests import ClientDisconnect

from vigil.api import read_auth
from vigil.api.actions import router as actions_router
from vigil.api.alerts import router as alerts_router
from vigil.api.degraded import alarms, degraded_reason, platform_document, platform_metrics
from vigil.api.incidents import router as incidents_router
from vigil.api.ingest import create_router as create_ingest_router
from vigil.api.read import router as read_router
from vigil.store.sqlite import StoreError
from vigil.streams import RunState

log = logging.getLogger(__name__)

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

#: (name, type, help, key of detect_document()); a metric whose key is absent is not exported
_DETECT_METRICS: Final = (
    (
        "vigil_findings_total",
        "counter",
        "Findings stored (new ones: the repeats a replay after a restart produces are not counted).",
        "new_findings",
    ),
    (
        "vigil_detect_events_total",
        "counter",
        "Events the detect stage has processed (events replayed after a restart included).",
        "events",
    ),
    (
        "vigil_detect_lag_events",
        "gauge",
        "Events in the store's log that the detector has not committed yet.",
        "lag_events",
    ),
    (
        "vigil_late_events_total",
        "counter",
        "Events older than the watermark (processed at the watermark's time).",
        "late",
    ),
    ("vigil_events_pruned_total", "counter", "Raw events deleted by store.retention.", "pruned"),
    (
        "vigil_incidents_pruned_total",
        "counter",
        "Resolved incidents deleted by store.incident_retention.",
        "pruned_incidents",
    ),
    (
        "vigil_findings_pruned_total",
        "counter",
        "Findings deleted with their resolved incidents (store.incident_retention).",
        "pruned_findings",
    ),
    (
        "vigil_detect_dead_letters_total",
        "counter",
        "Events dead-lettered because detection raised on them (a bug: the log has the traceback).",
        "dead_letters",
    ),
    ("vigil_open_window_keys", "gauge", "Keys held in the stateful rules' windows.", "open_keys"),
    ("vigil_rules_loaded", "gauge", "Rules in the loaded rule set.", "rules_loaded"),
)


async def _client_gone(request: Request, exc: Exception) -> Response:
    log.info("%s %s: the client disconnected before its request was read", request.method, request.url.path)
    return Response(status_code=400)


def create_app(state: RunState) -> FastAPI:
    """Build the API over ``state``; ``app.state.vigil`` keeps it for later routers."""
    app = FastAPI(title="Vigil", version=state.version, docs_url=None, redoc_url=None)
    app.state.vigil = state
    app.include_router(read_router)
    app.include_router(create_ingest_router(state))
    app.include_router(incidents_router)
    app.include_router(actions_router)
    app.include_router(alerts_router)
    if state.platform is not None and (router := state.platform.router()) is not None:
        app.include_router(router)
    if state.settings.http.read_auth:
        read_auth.install(app, state)
    # A client that goes away mid-body (or is cut off at http.body_timeout) is not a server error: no
    # traceback, and no answer either, since nobody is left to read it.
    app.add_exception_handler(ClientDisconnect, _client_gone)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        reason = not_ready_reason(state)
        if reason is None:
            degraded = degraded_reason(state)
            answer = {"status": "ready"} if degraded is None else {"status": "degraded", "reason": degraded}
            # (alarms stop nothing, so they never make it "not ready"; a probe or a person still sees them)
            return JSONResponse(answer | ({"alarms": found} if (found := alarms(state)) else {}))
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
    if state.backlog is not None:
        try:
            lag = state.backlog()
        except Exception as exc:  # the store cannot be read: not ready, and say why
            return f"store unreadable: {exc}"
        if lag > state.settings.http.max_backlog:
            return f"detection is {lag} events behind (over http.max_backlog, ingestion answers 429)"
    return None


def render_metrics(state: RunState) -> str:
    """The Prometheus text exposition of ``state``."""
    ingest = state.ingest
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, float]]) -> None:
        """One metric family: HELP and TYPE once, then its samples (``labels`` text, value)."""
        lines.append(f"# HELP {name} {_escape_help(help_text)}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(f"{name}{labels} {_number(value)}" for labels, value in samples)

    def metric(name: str, kind: str, help_text: str, value: float, labels: str = "") -> None:
        family(name, kind, help_text, [(labels, value)])

    metric("vigil_up", "gauge", "1 while the process is serving.", 1)
    metric(
        "vigil_build_info",
        "gauge",
        "Always 1; the version is a label.",
        1,
        f'{{version="{_label(state.version)}"}}',
    )
    metric("vigil_start_time_seconds", "gauge", "Unix time at which the process started.", state.started_at)
    # (a count that only grows is a leak: the soak test watches it, tests/streams/test_soak.py)
    metric("vigil_asyncio_tasks", "gauge", "Tasks of the daemon's event loop.", len(asyncio.all_tasks()))
    metric(
        "vigil_last_scan_timestamp_seconds",
        "gauge",
        "Unix time at which the last drop-folder scan ended (0: none yet).",
        ingest.last_scan_at or 0,
    )
    metric("vigil_ready", "gauge", "1 when /readyz answers 200.", 0 if not_ready_reason(state) else 1)
    for name, kind, help_text, attr in _INGEST_METRICS:
        metric(name, kind, help_text, getattr(ingest, attr))
    detect = detect_document(state)
    if detect is not None:
        for name, kind, help_text, key in _DETECT_METRICS:
            value = detect.get(key)
            if isinstance(value, int | float):
                metric(name, kind, help_text, value)
        per_rule = detect.get("rules", {})
        errors = sorted((rid, entry["errors"]) for rid, entry in per_rule.items() if entry.get("errors"))
        if errors:
            family(
                "vigil_rule_errors_total",
                "counter",
                "Events on which a rule raised (its filter, window update or timer); the other rules still "
                "saw them. Starts over when a reload replaces the rule set.",
                [(f'{{rule="{_label(rule_id)}"}}', n) for rule_id, n in errors],
            )
        hits = sorted(
            (rule_id, entry["key_limit_hits"])
            for rule_id, entry in per_rule.items()
            if entry.get("key_limit_hits", 0) > 0
        )
        if hits:
            family(
                "vigil_rule_key_limit_hits_total",
                "counter",
                "New keys a stateful rule did not track because it held detect.max_keys keys already.",
                [(f'{{rule="{_label(rule_id)}"}}', n) for rule_id, n in hits],
            )
    if state.reloader is not None:
        metric("vigil_rules_reloads_total", "counter", "Rule reloads attempted.", state.reloader.attempts)
        metric(
            "vigil_rules_reload_failures_total",
            "counter",
            "Rule reloads rejected because the new set had errors (the running set stayed).",
            state.reloader.failures,
        )
    http = state.http_ingest
    for name, help_text, counter in (
        ("vigil_ingest_events_total", "Events accepted over HTTP and committed to the store.", http.accepted),
        (
            "vigil_ingest_dead_letters_total",
            "Records dead-lettered by the HTTP endpoints.",
            http.dead_letters,
        ),
        ("vigil_ingest_too_large_total", "Ingestion bodies refused with 413.", http.too_large),
        (
            "vigil_ingest_throttled_total",
            "Ingestion calls answered 429 (detect backlog full).",
            http.throttled,
        ),
    ):
        family(
            name, "counter", help_text, [(f'{{source="{_label(k)}"}}', v) for k, v in sorted(counter.items())]
        )
    family(
        "vigil_ingest_rejected_total",
        "counter",
        "Ingestion calls refused with 401, by source and reason.",
        [
            (f'{{source="{_label(src)}",reason="{_label(why)}"}}', v)
            for (src, why), v in sorted(http.rejected.items())
        ],
    )
    metric(
        "vigil_ingest_buffered_bytes",
        "gauge",
        "Bytes of request bodies held or awaited by ingestion calls (http.max_buffered_bytes).",
        http.buffered,
    )
    metric(
        "vigil_http_connections_refused_total",
        "counter",
        "Connections closed at once, past http.max_connections.",
        http.connections_refused,
    )
    metric(
        "vigil_http_header_timeouts_total",
        "counter",
        "Connections closed for not sending a request head within http.header_timeout.",
        http.header_timeouts,
    )
    metric(
        "vigil_http_body_timeouts_total",
        "counter",
        "Connections closed for not sending a request's whole body within http.body_timeout.",
        http.body_timeouts,
    )
    for name, kind, help_text, samples in platform_metrics(state):
        family(name, kind, help_text, samples)
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
        "detect": detect_document(state),
        "degraded": degraded_reason(state),
        "alarms": alarms(state),
        "platform": platform_document(state),
    }


def detect_document(state: RunState) -> dict[str, Any] | None:
    """The detection numbers the state holds, by short name; None when it holds none of them.

    The detect stage's counters (``events``, ``findings``, ``new_findings``, ``snapshots``, ``replayed``),
    the detector's (``late``, ``future_clamped``, ``ancient_clamped``, ``watermark_ms``, ``open_keys``, and
    ``rules``: per-rule keys, key-limit hits, ...), the store's position (``cursor``, ``last_seq``,
    ``lag_events``; ``store_error`` when the store cannot be read) and ``rules_loaded``/``ruleset_hash``.
    """
    if state.detect is None and state.detector is None and state.store is None and state.ruleset is None:
        return None
    doc: dict[str, Any] = {}
    if state.detect is not None:
        doc |= dataclasses.asdict(state.detect)
    if state.detector is not None:
        doc |= state.detector.stats()
    if state.store is not None:
        try:
            cursor, last = state.store.cursor(), state.store.last_seq()
        except (StoreError, sqlite3.Error) as exc:
            doc["store_error"] = str(exc)
        else:
            doc |= {"cursor": cursor, "last_seq": last, "lag_events": max(0, last - cursor)}
    if state.ruleset is not None:
        doc |= {"rules_loaded": len(state.ruleset.rules), "ruleset_hash": state.ruleset.hash}
    return doc


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
