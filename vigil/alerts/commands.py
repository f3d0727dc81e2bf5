"""``vigil alerts test SINK`` and ``vigil alerts status``: check a sink before an incident does.

``test`` builds the sink exactly as the daemon does (:func:`vigil.streams.alert_run.build_sinks`, from the
same settings and environment), sends one sample alert straight to it — not through the outbox, so the
answer is immediate — and prints how it ended: delivered, to be retried (with the server's reason and
``Retry-After``) or refused. Its dedup key is fixed, so repeated tests update one test page in PagerDuty
rather than opening many. ``status`` asks the running daemon for ``GET /v1/alerts``.

Exit status: 0 delivered (or status read), 1 not delivered, 2 usage or configuration (an unknown or
unconfigured sink names the configured ones).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from vigil.errors import ConfigError, VigilError


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "alerts",
        help="test an alert sink, or show the outbox",
        description="Alert sinks: send a test alert, or show what the daemon's outbox holds.",
    )
    p.add_argument("--config", metavar="FILE", help="settings profile (default: config/local.yaml)")
    ops = p.add_subparsers(dest="op", metavar="OP", required=True)
    test = ops.add_parser("test", help="send one sample alert to a configured sink and report the answer")
    test.add_argument("sink", help="pagerduty, teams, slack, webhook or console")
    test.add_argument("--resolve", action="store_true", help="send the resolve of the test alert instead")
    status = ops.add_parser("status", help="the running daemon's outbox per sink and its latest alerts")
    status.add_argument("--url", help="daemon base URL (default: from {data_dir}/daemon.url)")
    status.add_argument("--limit", type=int, default=20)
    for op in (test, status):  # (after the operation too, as the other commands take it)
        op.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="settings profile")


def run(args: argparse.Namespace) -> int:
    from vigil.settings import load_settings

    settings = load_settings(args.config)
    if args.op == "status":
        return _status(settings, args)
    return asyncio.run(_test(settings, args.sink, args.resolve))


async def _test(settings: Any, name: str, resolve: bool) -> int:
    import httpx

    from vigil.alerts.model import Alert, AlertKind
    from vigil.streams.alert_run import SEND_TIMEOUT, build_sinks

    try:
        built = build_sinks(settings.alerts)
    except ValueError as exc:
        raise ConfigError(f"alerts.{name}: {exc}") from None
    if name not in built:
        known = ", ".join(sorted(built)) or "none"
        raise ConfigError(
            f"sink {name!r} is not configured (configured: {known}); see config/README.md, alerts"
        )
    alert = Alert(
        kind=AlertKind.RESOLVE if resolve else AlertKind.TRIGGER,
        dedup_key="vigil-test-alert",
        rule="vigil.test",
        title="Vigil test alert",
        severity="informational",
        summary="A test alert from `vigil alerts test`: this sink is configured and reachable.",
        time=time.time(),
        details={"sent_by": "vigil alerts test"},
    )
    async with httpx.AsyncClient(timeout=SEND_TIMEOUT, trust_env=False) as client:
        delivery = await built[name].send(client, alert)
    line = f"{name}: {delivery.outcome}"
    if delivery.status is not None:
        line += f" (HTTP {delivery.status})"
    if delivery.reason:
        line += f": {delivery.reason}"
    if delivery.retry_after is not None:
        line += f"; retry after {delivery.retry_after:g}s"
    print(line)
    return 0 if delivery.outcome == "sent" else 1


def _status(settings: Any, args: argparse.Namespace) -> int:
    import httpx

    from vigil.platform.commands import default_url

    base = args.url or default_url(settings)
    try:
        r = httpx.get(f"{base}/v1/alerts", params={"limit": args.limit}, timeout=10, trust_env=False)
    except httpx.TransportError as exc:
        raise VigilError(f"cannot reach the daemon at {base} ({exc}); is it running (vigil run)?") from None
    if r.status_code != 200:
        raise VigilError(f"{r.status_code}: {r.text}")
    print(json.dumps(r.json(), indent=2, sort_keys=True))
    return 0
