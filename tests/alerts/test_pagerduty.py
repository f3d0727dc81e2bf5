"""PagerDuty Events API v2: the event's required fields and limits, the status classification, and the
incident semantics (one incident per dedup key) against the loopback fake."""

from __future__ import annotations

import asyncio
import email.utils
from datetime import datetime
from typing import Any

import orjson
import pytest

from tests.alerts.fakes import (
    ROUTING_KEY,
    FakePagerDuty,
    ManualClock,
    Rule,
    deliver,
    huge_alert,
    pagerduty_errors,
    sample_alert,
)
from vigil.alerts.model import Alert, AlertKind, Delivery, sinks
from vigil.alerts.pagerduty import DEFAULT_URL, PagerDutySink
from vigil.errors import ConfigError


def sink_for(pd: FakePagerDuty, **config: Any) -> PagerDutySink:
    return PagerDutySink("oncall", {"routing_key": ROUTING_KEY, "url": pd.enqueue_url, **config})


def offline_sink(**config: Any) -> PagerDutySink:
    return PagerDutySink("oncall", {"routing_key": ROUTING_KEY, **config})


def send(sink: PagerDutySink, alert: Alert | None = None) -> Delivery:
    return asyncio.run(deliver(sink, alert or sample_alert()))


def valid(event: dict[str, Any]) -> dict[str, Any]:
    assert pagerduty_errors(event, size=len(orjson.dumps(event))) == []
    return event


def test_registered_under_pagerduty_with_the_published_rate() -> None:
    assert sinks.get("pagerduty") is PagerDutySink
    assert PagerDutySink.per_second == 2.0  # about 120 events a minute per routing key


# -- render ----------------------------------------------------------------------------------------------------
def test_trigger_carries_the_required_fields() -> None:
    alert = sample_alert()
    event = valid(offline_sink().render(alert))
    assert event["routing_key"] == ROUTING_KEY
    assert event["event_action"] == "trigger"
    assert event["dedup_key"] == alert.dedup_key  # from rule and group, never from the event
    payload = event["payload"]
    assert payload["summary"] == f"[HIGH] {alert.title} (3 matches)"
    assert payload["source"] == alert.group["resource"]
    assert payload["severity"] == "error"
    assert payload["class"] == "skr.noncompliant"
    assert datetime.fromisoformat(payload["timestamp"]).timestamp() == pytest.approx(alert.time, abs=0.001)
    assert payload["timestamp"].endswith("Z")
    custom = payload["custom_details"]
    assert custom["count"] == 3 and custom["details"] == alert.details and custom["actions"] == alert.actions
    assert custom["incident_id"] == "inc-412" and custom["summary"] == alert.summary
    assert event["links"] == [
        {"href": "https://vigil.example/incidents/inc-412", "text": "Incident"},
        {"href": "https://vigil.example/actions/act-2/approve", "text": "Approve"},
        {"href": "https://vigil.example/actions/act-2/reject", "text": "Reject"},
    ]
    assert event["client_url"] == "https://vigil.example/incidents/inc-412"


@pytest.mark.parametrize(
    ("severity", "expected"),
    [("critical", "critical"), ("high", "error"), ("medium", "warning"), ("low", "info"),
     ("informational", "info"), ("HIGH", "error"), ("bogus", "warning")],
)  # fmt: skip
def test_severity_mapping(severity: str, expected: str) -> None:
    assert valid(offline_sink().render(sample_alert(severity=severity)))["payload"]["severity"] == expected


@pytest.mark.parametrize("kind", [AlertKind.ACKNOWLEDGE, AlertKind.RESOLVE])
def test_acknowledge_and_resolve_send_only_what_the_api_needs(kind: AlertKind) -> None:
    alert = sample_alert(kind=kind)
    event = valid(offline_sink().render(alert))
    assert event == {"routing_key": ROUTING_KEY, "event_action": kind.value, "dedup_key": alert.dedup_key}


def test_long_summary_is_cut_to_1024_with_an_ellipsis() -> None:
    event = valid(offline_sink().render(sample_alert(title="x" * 5000, count=1)))
    summary = event["payload"]["summary"]
    assert len(summary) == 1024 and summary.endswith("…") and summary.startswith("[HIGH] xxx")


def test_source_prefers_config_then_group_then_vigil() -> None:
    assert offline_sink(source="vigil-prod").render(sample_alert())["payload"]["source"] == "vigil-prod"
    assert offline_sink().render(sample_alert(group={"target": "cvm-1"}))["payload"]["source"] == "cvm-1"
    assert offline_sink().render(sample_alert(group={}))["payload"]["source"] == "vigil"


def test_huge_alert_fits_under_512_kb_and_stays_valid() -> None:
    event = offline_sink().render(huge_alert())
    size = len(orjson.dumps(event))
    assert size <= 512 * 1024
    valid(event)
    assert event["payload"]["custom_details"]["details"]["omitted"]


def test_notice_is_a_change_event_not_an_incident() -> None:
    sink = offline_sink()
    alert = sample_alert(kind=AlertKind.NOTICE, title="Approval waiting: vm.quarantine")
    event = sink.render(alert)
    assert "event_action" not in event and "dedup_key" not in event
    assert event["payload"]["summary"].startswith("[notice] Approval waiting")
    assert sink.endpoint(alert) == "https://events.pagerduty.com/v2/change/enqueue"
    assert sink.endpoint(sample_alert()) == DEFAULT_URL
    eu = offline_sink(url="https://events.eu.pagerduty.com/v2/enqueue")
    assert eu.change_url == "https://events.eu.pagerduty.com/v2/change/enqueue"


def test_the_fake_enforces_the_required_fields() -> None:
    """The validator the other tests rely on really rejects bad events."""
    good = offline_sink().render(sample_alert())
    assert pagerduty_errors(good) == []
    for broken in (
        {**good, "routing_key": "short"},
        {**good, "event_action": "page"},
        {**good, "dedup_key": "k" * 256},
        {**good, "payload": {**good["payload"], "summary": "s" * 1025}},
        {**good, "payload": {**good["payload"], "severity": "high"}},
        {**good, "payload": {k: v for k, v in good["payload"].items() if k != "source"}},
        {"routing_key": ROUTING_KEY, "event_action": "resolve"},
    ):
        assert pagerduty_errors(broken), broken


# -- against the fake ----------------------------------------------------------------------------------------------
def test_202_is_sent_and_one_dedup_key_is_one_incident() -> None:
    with FakePagerDuty() as pd:
        sink = sink_for(pd)
        results = [send(sink, sample_alert(count=n)) for n in (1, 5, 9)]
        [incident] = pd.incidents_for(sample_alert().dedup_key)
    assert [(d.outcome, d.status) for d in results] == [("sent", 202)] * 3
    assert len(incident.events) == 3 and incident.state == "triggered"


def test_trigger_acknowledge_resolve_cycle_and_retrigger() -> None:
    with FakePagerDuty() as pd:
        sink = sink_for(pd)
        for kind in (AlertKind.TRIGGER, AlertKind.ACKNOWLEDGE, AlertKind.RESOLVE):
            assert send(sink, sample_alert(kind=kind)).outcome == "sent"
        first = pd.incidents_for(sample_alert().dedup_key)
        assert [i.state for i in first] == ["resolved"]
        assert send(sink, sample_alert()).outcome == "sent"  # a resolved key re-triggers as a new alert
        assert [i.state for i in pd.incidents_for(sample_alert().dedup_key)] == ["resolved", "triggered"]
        assert (
            send(sink, sample_alert(kind=AlertKind.RESOLVE, dedup_key="vigil-never-seen")).outcome == "sent"
        )
        assert len(pd.dropped) == 1  # PagerDuty drops it; nothing for us to retry


def test_notice_goes_to_change_events() -> None:
    with FakePagerDuty() as pd:
        delivery = send(sink_for(pd), sample_alert(kind=AlertKind.NOTICE))
        assert (delivery.outcome, delivery.status) == ("sent", 202)
        assert len(pd.changes) == 1 and pd.incidents == []
        assert pd.received()[0].path == "/v2/change/enqueue"


def test_400_is_dead_with_the_body_message_and_errors_and_no_key() -> None:
    with FakePagerDuty() as pd:
        sink = PagerDutySink("bad", {"routing_key": "too-short-key-123", "url": pd.enqueue_url})
        delivery = send(sink)
    assert (delivery.outcome, delivery.status) == ("dead", 400)
    assert delivery.reason.startswith(
        "HTTP 400: Event object is invalid: Length of 'routing_key' is incorrect"
    )
    assert "too-short-key-123" not in delivery.reason


def test_a_400_that_echoes_the_routing_key_is_scrubbed() -> None:
    with FakePagerDuty() as pd:
        body = {"status": "invalid event", "message": "bad", "errors": [f"routing_key {ROUTING_KEY} unknown"]}
        pd.script(Rule(status=400, body=body))
        delivery = send(sink_for(pd))
    assert delivery.outcome == "dead" and ROUTING_KEY not in delivery.reason and "***" in delivery.reason


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_429_and_5xx_are_retry(status: int) -> None:
    with FakePagerDuty() as pd:
        pd.script(Rule(status=status, body={"status": "throttled"}, times=1))
        delivery = send(sink_for(pd))
        assert pd.incidents == []  # answered with an error: not applied
    assert (delivery.outcome, delivery.status, delivery.retry_after) == ("retry", status, None)


def test_retry_after_seconds_and_http_date() -> None:
    with FakePagerDuty() as pd:
        pd.script(Rule(status=429, headers={"Retry-After": "30"}, times=1))
        later = email.utils.formatdate(usegmt=True, timeval=__import__("time").time() + 120)
        pd.script(Rule(status=429, headers={"Retry-After": later}, times=1))
        first, second = send(sink_for(pd)), send(sink_for(pd))
    assert first.retry_after == 30.0
    assert second.retry_after is not None and 100 <= second.retry_after <= 120


def test_429_for_60_seconds_then_recovery() -> None:
    """reliability.md D1 at the sink level: every attempt in the window is a retry, the first after it lands."""
    clock = ManualClock()
    with FakePagerDuty(clock=clock) as pd:
        pd.script(Rule(status=429, headers={"Retry-After": "20"}, for_seconds=60))
        sink = sink_for(pd)
        outcomes = []
        for _ in range(4):
            outcomes.append(send(sink).outcome)
            clock.advance(20)
        assert outcomes == ["retry", "retry", "retry", "sent"]
        assert len(pd.incidents_for(sample_alert().dedup_key)) == 1


def test_reset_after_acceptance_then_retry_is_still_one_incident() -> None:
    """reliability.md D3: the first request is applied, its answer lost; the retry reuses the dedup key."""
    with FakePagerDuty() as pd:
        pd.script(Rule(reset=True, times=1))
        sink = sink_for(pd)
        first, second = send(sink), send(sink)
        [incident] = pd.incidents_for(sample_alert().dedup_key)
        assert [r.status for r in pd.received()] == [None, 202]
    assert (first.outcome, second.outcome) == ("retry", "sent")
    assert len(incident.events) == 2


def test_network_failure_is_retry_without_the_key() -> None:
    with FakePagerDuty() as pd:
        url = pd.enqueue_url
    delivery = send(PagerDutySink("oncall", {"routing_key": ROUTING_KEY, "url": url}))  # the server is gone
    assert delivery.outcome == "retry" and ROUTING_KEY not in delivery.reason


# -- config and secrets ----------------------------------------------------------------------------------------------
def test_repr_hides_the_routing_key() -> None:
    sink = offline_sink()
    assert repr(sink) == "PagerDutySink('oncall')" and ROUTING_KEY not in str(sink)
    assert sink.url == DEFAULT_URL == offline_sink(url="").url  # settings may give an empty url


@pytest.mark.parametrize("config", [{}, {"routing_key": ""}, {"routing_key": "  "}, {"routing_key": 7}])
def test_routing_key_is_required(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="routing_key is required"):
        PagerDutySink("oncall", config)
