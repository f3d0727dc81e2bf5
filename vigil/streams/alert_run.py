"""Alerting inside the daemon: the configured sinks, the outbox and its workers, and the alert stage.

A sink is configured when its section has what it needs (PagerDuty a routing key, Teams and Slack a webhook
URL, the generic webhook a URL and a secret, the console sink ``enabled``). The outbox lives in the store's
database beside the actions (its own connection and tables, :mod:`vigil.alerts.outbox`); at start the rows a
crash left ``sending`` are sent again. One ``httpx.AsyncClient`` serves every sink, without proxies from the
environment (``trust_env=False``: an alert must not take a detour the operator did not configure). The
:class:`~vigil.alerts.alarm.Alarm` sends the daemon's own degraded state to the sinks a critical alert routes
to, straight from memory: the outbox's disk may be the problem.

:func:`build_sinks` is shared with ``vigil alerts test SINK``, so a test alert goes through exactly the sink
object the daemon would use.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httpx

from vigil.alerts.alarm import Alarm
from vigil.alerts.dispatcher import AlertDispatcher
from vigil.alerts.grouping import Grouper
from vigil.alerts.model import Sink, sinks
from vigil.alerts.outbox import Outbox
from vigil.alerts.router import Router
from vigil.alerts.stage import AlertStage
from vigil.api.degraded import degraded_reason
from vigil.rules.model import RuleSet
from vigil.rules.schema_forms import parse_duration
from vigil.sections import AlertSettings
from vigil.streams import RunState

log = logging.getLogger(__name__)

#: seconds one sink call may take before it counts as failed (and is retried)
SEND_TIMEOUT = 10.0


def sink_configs(settings: AlertSettings) -> dict[str, dict[str, Any]]:
    """Name -> config of every configured sink (those whose section has what the sink needs)."""
    out: dict[str, dict[str, Any]] = {}
    if settings.pagerduty.routing_key:
        out["pagerduty"] = {"routing_key": settings.pagerduty.routing_key, "url": settings.pagerduty.url}
    if settings.teams.webhook_url:
        out["teams"] = {"url": settings.teams.webhook_url}
    if settings.slack.webhook_url:
        out["slack"] = {"url": settings.slack.webhook_url}
    if settings.webhook.url:
        out["webhook"] = {"url": settings.webhook.url, "secret": settings.webhook.secret}
    if settings.console.enabled:
        out["console"] = {"path": str(settings.console.path)}
    return out


def build_sinks(settings: AlertSettings) -> dict[str, Sink]:
    """The configured sinks, built through the sink registry (a bad config is a clear ValueError)."""
    return {name: sinks.get(name)(name, config) for name, config in sink_configs(settings).items()}


@dataclass
class AlertRuntime:
    stage: AlertStage
    dispatcher: AlertDispatcher
    outbox: Outbox
    client: httpx.AsyncClient
    #: the daemon's own degraded state, sent past the outbox (vigil/alerts/alarm.py)
    alarm: Alarm

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(self.dispatcher.run(stop), self.stage.run(stop), self.alarm.run(stop))

    async def close(self) -> None:
        self.stage.close()
        await self.client.aclose()
        self.outbox.close()


def start_alerts(state: RunState, base_url: str) -> AlertRuntime:
    """Open the outbox and build the sinks, the router, the grouper and the stage."""
    settings = state.settings
    assert state.store is not None
    alerts = settings.alerts
    built = build_sinks(alerts)
    if not built:
        log.warning("alerts: no sink is configured (alerts.*); findings raise no notification")
    outbox = Outbox(settings.store.path, synchronous=settings.store.synchronous)
    client = httpx.AsyncClient(timeout=SEND_TIMEOUT, trust_env=False)
    horizon = parse_duration(alerts.retry_horizon).total_seconds()
    keep_sent = parse_duration(alerts.keep_sent).total_seconds()
    dispatcher = AlertDispatcher(
        outbox, built, client, horizon=horizon, max_waiting=alerts.max_waiting, keep_sent=keep_sent
    )
    grouper = Grouper(alerts.group_window, stale_after=parse_duration(alerts.stale_after).total_seconds())
    router = Router(alerts, set(built))

    def rules() -> RuleSet:
        assert state.ruleset is not None
        return state.ruleset

    stage = AlertStage(dispatcher, router, grouper, state.store, rules, base_url=alerts.base_url or base_url)
    if built:
        log.info(
            "alerts: sinks %s (default %s)", ", ".join(sorted(built)), ", ".join(alerts.default) or "none"
        )
    alarmed = {name: built[name] for name in router.route(None, "critical")}
    alarm = Alarm(lambda: degraded_reason(state), alarmed, client)
    return AlertRuntime(stage, dispatcher, outbox, client, alarm)
