"""``GET /v1/alerts``: the outbox as operators need to see it.

Per sink: what its worker did since start (sent, retried, dead, attempts in flight), the outbox rows in each
state and the age of the oldest alert still waiting — a dead or throttled sink shows here long before anyone
misses a page. Below that, the most recent outbox rows (filter with ``sink`` and ``state``), each with its
last error and status; the alerts are stored redacted, so this view shows no secret either.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from vigil.alerts.outbox import OutboxState
from vigil.api.read import DEFAULT_LIMIT, MAX_LIMIT, error, state_of

router = APIRouter()


@router.get("/v1/alerts", response_model=None)
async def alerts(
    request: Request,
    sink: str | None = None,
    state: OutboxState | None = None,
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT),
) -> dict[str, Any] | JSONResponse:
    alerting = state_of(request).alerting
    if alerting is None:
        return error(503, "alerting is not running")
    rows = alerting.outbox.list(sink=sink, state=state, limit=limit)
    return {
        "sinks": alerting.dispatcher.stats(),
        "stage": {"alerts": alerting.stage.sent, "grouping": dict(alerting.stage.grouper.counters)},
        "unrouted": dict(alerting.stage.router.unrouted),
        "alerts": [row.to_json() for row in rows],
        "count": len(rows),
    }
