"""The daemon's *degraded* state: what the audit log and the platform feed report to operations.

Degraded is not "not ready". When the audit log cannot be written (disk full, I/O error, no checkpoint sink
reachable), ingestion and detection carry on, because stopping them would lose events and the events are
safe in the store; what stops is everything that must be audited first (platform changes, rule reloads,
incident changes, actions). So ``/readyz`` still answers 200, with ``{"status": "degraded", "reason": ...}``,
``vigil_degraded`` is 1 and the audit counters say what failed; a load balancer keeps sending events, and the
alert on ``vigil_degraded`` tells a person. The log recovers by itself on the next append that succeeds.
"""

from __future__ import annotations

from typing import Any

from vigil.streams import RunState

Family = tuple[str, str, str, list[tuple[str, float]]]

#: (name, type, help, AuditStatus attribute)
_AUDIT = (
    ("vigil_audit_appends_total", "counter", "Audit records appended since start.", "appends"),
    ("vigil_audit_failures_total", "counter", "Audit appends refused (operation failed closed).", "failures"),
    ("vigil_audit_checkpoints_total", "counter", "Signed audit checkpoints written.", "checkpoints"),
    ("vigil_audit_sign_failures_total", "counter", "Checkpoints the vault could not sign.", "sign_failures"),
    ("vigil_audit_head_seq", "gauge", "Sequence number of the newest audit record.", "head_seq"),
    ("vigil_audit_unsigned_records", "gauge", "Audit records after the last signed checkpoint.", "unsigned"),
)
#: (name, help, FeedStats attribute), all counters
_FEED = (
    ("vigil_platform_events_total", "Platform changes fed into the pipeline.", "events"),
    ("vigil_platform_denied_total", "Platform operations refused (access, lock, policy).", "denied"),
    ("vigil_platform_feed_failures_total", "Platform changes refused: not audited or stored.", "failures"),
)


def degraded_reason(state: RunState) -> str | None:
    """Why audited operations are refused now (the audit log's reason), or None."""
    if state.platform is None:
        return None
    status = state.platform.audit.status()
    return None if status.ok else f"audit log unavailable: {status.reason or 'unknown'}"


def alarms(state: RunState) -> list[str]:
    """Problems that do not stop anything yet (one audit checkpoint sink of two down, signing failing, an
    event hub's checkpoints failing)."""
    found = [] if state.platform is None else list(state.platform.audit.status().alarms)
    return found + (state.azure.alarms() if state.azure is not None else [])


def platform_metrics(state: RunState) -> list[Family]:
    """Metric families of the audit log and the platform feed: (name, type, help, [(labels, value)])."""
    degraded = 1 if degraded_reason(state) else 0
    families: list[Family] = [
        ("vigil_degraded", "gauge", "1 while audited operations are refused (see /readyz).", [("", degraded)])
    ]
    if state.response is not None:
        counts = sorted(state.response_alerts.items())
        alerts = [(f'{{kind="{_label(kind)}"}}', float(n)) for kind, n in counts]
        families.append(("vigil_response_alerts_total", "counter", "Response alerts, by kind.", alerts))
    if state.alerting is not None:
        families += _alert_metrics(state.alerting.dispatcher.stats())
        done = state.alerting.alarm.stats
        outcomes = [('{outcome="sent"}', float(done.sent)), ('{outcome="failed"}', float(done.failed))]
        families.append(
            ("vigil_alarms_total", "counter", "Degraded/recovered alarms sent past the outbox.", outcomes)
        )
    if state.azure is not None:
        families += state.azure.metric_families()
    if state.platform is None:
        return families
    status = state.platform.audit.status()
    families += [(name, kind, text, [("", getattr(status, attr))]) for name, kind, text, attr in _AUDIT]
    families.append(
        ("vigil_audit_alarms", "gauge", "Audit alarms now (see /v1/status).", [("", len(status.alarms))])
    )
    sinks = [(f'{{sink="{_label(name)}"}}', float(n)) for name, n in sorted(status.sink_failures.items())]
    families.append(
        ("vigil_audit_sink_failures_total", "counter", "Failed checkpoint exports, by sink.", sinks)
    )
    feed = state.platform.feed.stats
    families += [(name, "counter", text, [("", getattr(feed, attr))]) for name, text, attr in _FEED]
    return families


#: (name, type, help, how to read it from one sink's stats)
_ALERTS: tuple[tuple[str, str, str, Any], ...] = (
    ("vigil_alerts_sent_total", "counter", "Alerts delivered, by sink.", lambda r: r["sent"]),
    ("vigil_alerts_retried_total", "counter", "Delivery attempts retried.", lambda r: r["retried"]),
    ("vigil_alerts_dead_total", "counter", "Alerts dead-lettered (the alarm).", lambda r: r["dead"]),
    (
        "vigil_alerts_shed_total",
        "counter",
        "Low-severity triggers not stored: the sink's outbox was full.",
        lambda r: r["shed"],
    ),
    ("vigil_alerts_pending", "gauge", "Alerts waiting in the outbox.", lambda r: r["outbox"]["pending"]),
    (
        "vigil_alerts_oldest_pending_seconds",
        "gauge",
        "Age of the oldest.",
        lambda r: r["oldest_pending_age"] or 0,
    ),
)


def _alert_metrics(stats: dict[str, dict[str, Any]]) -> list[Family]:
    """Per sink: delivered, retried and dead alerts (dead is the alarm), waiting ones and the oldest's age."""
    return [
        (
            name,
            kind,
            text,
            [(f'{{sink="{_label(sink)}"}}', float(read(row))) for sink, row in sorted(stats.items())],
        )
        for name, kind, text, read in _ALERTS
    ]


def platform_document(state: RunState) -> dict[str, Any] | None:
    """The ``audit`` and ``platform`` part of ``/v1/status``."""
    if state.platform is None:
        return None
    status = state.platform.audit.status()
    feed = state.platform.feed.stats
    return {
        "served": state.platform.serve,
        "audit": {"ok": status.ok, "reason": status.reason, "alarms": list(status.alarms),
                  "head_seq": status.head_seq, "unsigned": status.unsigned, "appends": status.appends,
                  "failures": status.failures, "checkpoints": status.checkpoints,
                  "sink_failures": dict(status.sink_failures)},
        "feed": {"events": feed.events, "denied": feed.denied, "failures": feed.failures},
    }  # fmt: skip


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
