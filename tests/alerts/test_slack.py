"""Slack incoming webhook: Block Kit shape and limits, escaping of hostile text, the status codes Slack
documents, and the URL's secret, against the loopback fake."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.alerts.fakes import FakeSlack, Rule, deliver, huge_alert, sample_alert
from vigil.alerts.model import Alert, AlertKind, Delivery, sinks
from vigil.alerts.slack import SlackSink, escape
from vigil.errors import ConfigError

TOKEN = "XXXXXXXXXXXXXXXXXXXXXXXX"  # the fake's webhook secret (last path segment)


def sink_for(slack: FakeSlack) -> SlackSink:
    return SlackSink("soc", {"webhook_url": slack.webhook_url})


def offline_sink() -> SlackSink:
    return SlackSink("soc", {"url": f"https://hooks.slack.com/services/T0/B0/{TOKEN}"})


def send(sink: SlackSink, alert: Alert | None = None) -> Delivery:
    return asyncio.run(deliver(sink, alert or sample_alert()))


def mrkdwn_texts(message: dict[str, Any]) -> list[str]:
    """Every string Slack parses as mrkdwn: the fallback, section texts and fields, context elements."""
    texts = [message["text"]]
    for block in message["blocks"]:
        if block["type"] == "section":
            texts += [block["text"]["text"]] if "text" in block else []
            texts += [field["text"] for field in block.get("fields", [])]
        if block["type"] == "context":
            texts += [element["text"] for element in block["elements"]]
    return texts


def check_limits(message: dict[str, Any]) -> None:
    blocks = message["blocks"]
    assert len(blocks) <= 50 and len(message["text"]) <= 3000
    for block in blocks:
        if block["type"] == "header":
            assert block["text"]["type"] == "plain_text" and len(block["text"]["text"]) <= 150
        if block["type"] == "section":
            assert "text" in block or "fields" in block
            assert len(block.get("text", {}).get("text", "")) <= 3000
            assert len(block.get("fields", [])) <= 10
            assert all(len(f["text"]) <= 2000 and f["type"] == "mrkdwn" for f in block.get("fields", []))
        if block["type"] == "context":
            assert 1 <= len(block["elements"]) <= 10


def test_registered_under_slack() -> None:
    assert sinks.get("slack") is SlackSink and SlackSink.per_second == 1.0


def test_render_shape() -> None:
    alert = sample_alert()
    message = offline_sink().render(alert)
    check_limits(message)
    header, section, actions, details, links, context = message["blocks"]
    assert header["text"]["text"] == f":red_circle: HIGH: {alert.title}"
    assert section["text"]["text"] == alert.summary
    fields = [f["text"] for f in section["fields"]]
    assert (
        "*Rule*\nskr.noncompliant" in fields and "*Matches*\n3" in fields and "*Incident*\ninc-412" in fields
    )
    assert actions["text"]["text"].splitlines()[1:] == [
        "• key.rotate on dek-llm-ckpt: succeeded",
        "• vm.quarantine on cvm-train-01: awaiting_approval",
    ]
    assert (
        details["text"]["text"].startswith("*Details*\n```{")
        and '"caller_ip": "198.51.100.23"' in details["text"]["text"]
    )
    assert links["text"]["text"] == (
        "<https://vigil.example/incidents/inc-412|View incident> · <https://vigil.example/actions/act-2/approve|Approve>"
        " · <https://vigil.example/actions/act-2/reject|Reject>"
    )
    assert alert.dedup_key in context["elements"][0]["text"]
    assert message["text"] == f"HIGH: {alert.title} — {alert.summary}"


@pytest.mark.parametrize(
    ("kind", "severity", "emoji"),
    [(AlertKind.RESOLVE, "high", ":white_check_mark: RESOLVED"), (AlertKind.TRIGGER, "medium", ":large_orange_circle: MEDIUM"),
     (AlertKind.TRIGGER, "low", ":large_blue_circle: LOW"), (AlertKind.NOTICE, "critical", ":red_circle: NOTICE")],
)  # fmt: skip
def test_header_shows_severity_and_state(kind: AlertKind, severity: str, emoji: str) -> None:
    header = offline_sink().render(sample_alert(kind=kind, severity=severity))["blocks"][0]
    assert header["text"]["text"].startswith(emoji)


def test_hostile_text_cannot_mention_link_or_mark_up() -> None:
    evil = "<!channel> <https://evil.example|click here> & <@U123>"
    alert = sample_alert(
        title=evil, summary=evil, group={"resource": evil}, details={"ua": evil},
        actions=[{"remediation": evil, "target": evil, "state": "done"}],
        links={"incident": "https://vigil.example/i|<!channel>", "view": "https://vigil.example/ok"},
    )  # fmt: skip
    message = offline_sink().render(alert)
    for text in mrkdwn_texts(message):
        assert "<!" not in text and "<@" not in text and "<https://evil" not in text, text
    assert "&lt;!channel&gt;" in message["blocks"][1]["text"]["text"]
    assert message["blocks"][0]["text"]["type"] == "plain_text"  # never parsed: no escaping needed
    assert message["blocks"][-2]["text"]["text"] == "<https://vigil.example/ok|View>"  # the bad link dropped
    assert escape("a & <b>") == "a &amp; &lt;b&gt;"


def test_huge_alert_respects_every_block_kit_limit() -> None:
    message = offline_sink().render(huge_alert())
    check_limits(message)
    with FakeSlack() as slack:
        assert send(sink_for(slack), huge_alert()).outcome == "sent"
        assert len(slack.messages) == 1


# -- against the fake -------------------------------------------------------------------------------------------------
def test_200_ok_is_sent() -> None:
    with FakeSlack() as slack:
        delivery = send(sink_for(slack))
        assert (delivery.outcome, delivery.status) == ("sent", 200)
        assert slack.messages == [offline_sink().render(sample_alert())]
        assert slack.received()[0].headers["content-type"] == "application/json"


def test_429_is_retry_with_retry_after() -> None:
    with FakeSlack() as slack:
        slack.script(Rule(status=429, headers={"Retry-After": "3"}, body="rate_limited", times=1))
        first, second = send(sink_for(slack)), send(sink_for(slack))
    assert (first.outcome, first.retry_after, first.reason) == ("retry", 3.0, "HTTP 429: rate_limited")
    assert second.outcome == "sent"


@pytest.mark.parametrize(
    ("status", "body", "outcome"),
    [(400, "invalid_payload", "dead"), (403, "action_prohibited", "dead"), (404, "channel_not_found", "dead"),
     (410, "channel_is_archived", "dead"), (500, "rollup_error", "retry"), (503, "", "retry")],
)  # fmt: skip
def test_error_codes(status: int, body: str, outcome: str) -> None:
    with FakeSlack() as slack:
        slack.script(Rule(status=status, body=body))
        delivery = send(sink_for(slack))
    assert (delivery.outcome, delivery.status) == (outcome, status)
    assert delivery.reason == f"HTTP {status}" + (f": {body}" if body else "")


def test_a_deleted_webhook_is_dead_no_service() -> None:
    with FakeSlack() as slack:
        sink = SlackSink("soc", {"url": slack.url("/services/T0000/B0000/revokedrevokedrevoked00")})
        delivery = send(sink)
    assert (delivery.outcome, delivery.reason) == ("dead", "HTTP 404: no_service")
    assert "revokedrevokedrevoked00" not in delivery.reason


def test_the_webhook_token_never_shows() -> None:
    with FakeSlack() as slack:
        slack.script(Rule(status=400, body=f"invalid_payload for {slack.webhook_url}", times=1))
        sink = sink_for(slack)
        dead = send(sink)
        url = slack.webhook_url
    gone = send(SlackSink("soc", {"url": url}))
    assert (dead.outcome, gone.outcome) == ("dead", "retry")
    for text in (repr(sink), dead.reason, gone.reason, sink.target):
        assert TOKEN not in text, text


def test_url_is_required() -> None:
    with pytest.raises(ConfigError, match="no url"):
        SlackSink("soc", {"webhook_url": ""})
