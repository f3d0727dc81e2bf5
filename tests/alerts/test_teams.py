"""Teams Workflows: the envelope, the Adaptive Card validated against the published 1.4 schema, the size
budget, the status classification and the URL's secret, against the loopback fake."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.alerts.fakes import FakeTeams, Rule, deliver, huge_alert, sample_alert
from vigil.alerts.model import Alert, AlertKind, Delivery, sinks
from vigil.alerts.teams import CARD_VERSION, HARD_LIMIT, TeamsSink
from vigil.errors import ConfigError

SCHEMA = json.loads((Path(__file__).parent / "schemas" / "adaptive-card-1.4.json").read_text())
DEFS: dict[str, Any] = SCHEMA["definitions"]
#: every keyword the schema file uses; an unknown one fails the test rather than being skipped
KEYWORDS = {"$schema", "id", "definitions", "$ref", "type", "enum", "pattern", "properties",
            "additionalProperties", "required", "items", "anyOf", "allOf", "format", "version"}  # fmt: skip
TYPES: dict[str, Any] = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
SIG = "S1gSecretValue0123"


# -- a draft-06 validator for the keywords the Adaptive Card schema uses -------------------------------------------
def _type_ok(value: Any, name: str) -> bool:
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, TYPES[name])


def schema_errors(value: Any, schema: dict[str, Any], path: str = "$") -> list[str]:
    assert set(schema) <= KEYWORDS, f"validator does not know {set(schema) - KEYWORDS}"
    errors: list[str] = []
    if "$ref" in schema:
        errors += schema_errors(value, DEFS[schema["$ref"].removeprefix("#/definitions/")], path)
    if "type" in schema and not _type_ok(value, schema["type"]):
        return [*errors, f"{path}: expected {schema['type']}, got {type(value).__name__}"]
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} not in {schema['enum']}")
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        errors.append(f"{path}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        errors += [f"{path}: missing {key!r}" for key in schema.get("required", []) if key not in value]
        for key, item in value.items():
            extra = schema.get("additionalProperties", True)
            if key in props:
                errors += schema_errors(item, props[key], f"{path}.{key}")
            elif extra is False:
                errors.append(f"{path}: property {key!r} is not allowed")
            elif isinstance(extra, dict):
                errors += schema_errors(item, extra, f"{path}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            errors += schema_errors(item, schema["items"], f"{path}[{i}]")
    for sub in schema.get("allOf", []):
        errors += schema_errors(value, sub, path)
    if "anyOf" in schema:
        branches = [schema_errors(value, sub, path) for sub in schema["anyOf"]]
        if all(branches):
            closest: list[str] = min(branches, key=len)  # the closest branch explains best
            errors += closest
    return errors


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("."))


def _property_version(definition: dict[str, Any], key: str) -> str | None:
    prop = definition.get("properties", {}).get(key)
    if prop and "version" in prop:
        return str(prop["version"])
    for parent in definition.get("allOf", []):
        found = _property_version(DEFS[parent["$ref"].removeprefix("#/definitions/")], key)
        if found:
            return found
    return None


def newer_than_target(value: Any, target: str = CARD_VERSION) -> list[str]:
    """Elements and properties the card uses that need a newer card version than ``target``."""
    found: list[str] = []
    if isinstance(value, dict):
        definition = DEFS.get(str(value.get("type")))
        if definition is not None:
            if _version(definition.get("version", "1.0")) > _version(target):
                found.append(str(value["type"]))
            for key in value:
                need = _property_version(definition, key)
                if need and _version(need) > _version(target):
                    found.append(f"{value['type']}.{key}")
        for item in value.values():
            found += newer_than_target(item, target)
    elif isinstance(value, list):
        for item in value:
            found += newer_than_target(item, target)
    return found


def card_of(message: dict[str, Any]) -> dict[str, Any]:
    assert message["type"] == "message"
    [attachment] = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert attachment["contentUrl"] is None
    card: dict[str, Any] = attachment["content"]
    assert schema_errors(card, SCHEMA) == []
    assert newer_than_target(card) == []
    return card


def sink_for(teams: FakeTeams, **config: Any) -> TeamsSink:
    return TeamsSink("channel", {"webhook_url": teams.webhook_url, **config})


def offline_sink(**config: Any) -> TeamsSink:
    return TeamsSink(
        "channel", {"url": f"https://prod.westeurope.logic.azure.com/workflows/1/invoke?sig={SIG}", **config}
    )


def send(sink: TeamsSink, alert: Alert | None = None) -> Delivery:
    return asyncio.run(deliver(sink, alert or sample_alert()))


def facts_of(card: dict[str, Any]) -> dict[str, str]:
    return {f["title"]: f["value"] for b in card["body"] if b["type"] == "FactSet" for f in b["facts"]}


def test_registered_under_teams_with_the_published_limits() -> None:
    assert sinks.get("teams") is TeamsSink
    assert (TeamsSink.per_second, TeamsSink.per_hour) == (4.0, 100.0)


# -- the validator itself can fail ------------------------------------------------------------------------------
def test_the_schema_validator_rejects_what_the_schema_forbids() -> None:
    good = offline_sink().render(sample_alert())["attachments"][0]["content"]
    assert schema_errors(good, SCHEMA) == []
    bad_cards = [
        {**good, "msteams": {"width": "Full"}},  # Teams' extension: not in the schema
        {**good, "body": [{"type": "TextBlock", "text": "x", "color": "red"}]},
        {**good, "body": [{"type": "TextBlock"}]},
        {**good, "body": [{"type": "FactSet", "facts": [{"title": "n", "value": 3}]}]},
        {**good, "body": [{"type": "Marquee", "text": "x"}]},
        {**good, "actions": [{"type": "Action.OpenUrl", "title": "go"}]},
        {**good, "actions": [{"type": "Action.OpenUrl", "url": "https://x", "style": "loud"}]},
    ]
    for card in bad_cards:
        assert schema_errors(card, SCHEMA), card
    newer = {"type": "Container", "items": [{"type": "TextBlock", "text": "x", "fontType": "monospace"},
                                             {"type": "ActionSet", "actions": []}]}  # fmt: skip
    assert newer_than_target(newer, "1.1") == ["TextBlock.fontType", "ActionSet"]
    assert newer_than_target(newer) == []


# -- render ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(AlertKind))
def test_every_kind_renders_a_valid_card(kind: AlertKind) -> None:
    card = card_of(offline_sink().render(sample_alert(kind=kind)))
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"


def test_card_content() -> None:
    alert = sample_alert()
    card = card_of(offline_sink().render(alert))
    title = card["body"][0]
    assert title["text"] == f"HIGH: {alert.title}"
    assert (title["color"], title["size"], title["weight"]) == ("attention", "Large", "Bolder")
    facts = facts_of(card)
    assert facts["Rule"] == "skr.noncompliant" and facts["Severity"] == "high" and facts["Matches"] == "3"
    assert facts["Incident"] == "inc-412" and facts["resource"] == alert.group["resource"]
    assert facts["key.rotate"] == "dek-llm-ckpt — succeeded"
    assert facts["vm.quarantine"] == "cvm-train-01 — awaiting_approval"
    assert facts["tcb"] == '{"snp":8,"min":10}'
    assert [(a["title"], a["url"], a.get("style")) for a in card["actions"]] == [
        ("View incident", "https://vigil.example/incidents/inc-412", None),
        ("Approve", "https://vigil.example/actions/act-2/approve", "positive"),
        ("Reject", "https://vigil.example/actions/act-2/reject", "destructive"),
    ]
    assert all(a["type"] == "Action.OpenUrl" for a in card["actions"])


@pytest.mark.parametrize(
    ("severity", "kind", "color", "label"),
    [("critical", AlertKind.TRIGGER, "attention", "CRITICAL"), ("medium", AlertKind.TRIGGER, "warning", "MEDIUM"),
     ("low", AlertKind.TRIGGER, "accent", "LOW"), ("informational", AlertKind.TRIGGER, "accent", "INFORMATIONAL"),
     ("high", AlertKind.RESOLVE, "good", "RESOLVED"), ("high", AlertKind.ACKNOWLEDGE, "attention", "ACKNOWLEDGED"),
     ("low", AlertKind.NOTICE, "accent", "NOTICE")],
)  # fmt: skip
def test_title_colour_and_label(severity: str, kind: AlertKind, color: str, label: str) -> None:
    card = card_of(offline_sink().render(sample_alert(severity=severity, kind=kind)))
    assert card["body"][0]["color"] == color and card["body"][0]["text"].startswith(f"{label}: ")


def test_links_that_are_not_http_are_not_buttons() -> None:
    alert = sample_alert(links={"incident": "javascript:alert(1)", "runbook": "https://wiki.example/rb"})
    card = card_of(offline_sink().render(alert))
    assert [(a["title"], a["url"]) for a in card["actions"]] == [("Runbook", "https://wiki.example/rb")]
    assert "actions" not in card_of(offline_sink().render(sample_alert(links={})))


def test_huge_alert_is_trimmed_under_the_budget_and_stays_valid() -> None:
    for budget, sink in ((20_000, offline_sink()), (HARD_LIMIT, offline_sink(max_bytes=HARD_LIMIT))):
        message = sink.render(huge_alert())
        assert len(orjson.dumps(message)) <= budget
        card = card_of(message)
        notes = [b["text"] for b in card["body"] if "left out" in b.get("text", "")]
        assert notes and notes[0][0].isdigit()
        assert len(card["actions"]) == 3  # the approve/reject/view buttons survive trimming


def test_small_budget_still_keeps_a_valid_card() -> None:
    message = offline_sink(max_bytes=4096).render(huge_alert())
    assert len(orjson.dumps(message)) <= 4096
    card_of(message)


def test_every_card_carries_its_notification_id() -> None:
    card = card_of(offline_sink().render(sample_alert()))
    footer = card["body"][-1]
    assert footer["id"].startswith("vigil-") and sample_alert().dedup_key in footer["text"]
    assert footer == card_of(offline_sink().render(sample_alert()))["body"][-1]  # same on every retry
    assert footer != card_of(offline_sink().render(sample_alert(count=9)))["body"][-1]


# -- against the fake -----------------------------------------------------------------------------------------------
def test_202_accepted_is_sent_and_the_card_is_posted() -> None:
    with FakeTeams() as teams:
        delivery = send(sink_for(teams))
        assert (delivery.outcome, delivery.status) == ("sent", 202)
        [card] = teams.posted
        assert teams.failed_runs == []
        card_of({"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
                                                      "contentUrl": None, "content": card}]})  # fmt: skip


def test_huge_alert_is_posted_not_failed_in_run_history() -> None:
    with FakeTeams() as teams:
        assert send(sink_for(teams), huge_alert()).outcome == "sent"
        assert len(teams.posted) == 1 and teams.failed_runs == []


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, "sent"), (400, "dead"), (401, "dead"), (403, "dead"), (404, "dead"), (413, "dead"),
     (429, "retry"), (500, "retry"), (502, "retry"), (503, "retry")],
)  # fmt: skip
def test_status_classification(status: int, outcome: str) -> None:
    with FakeTeams() as teams:
        teams.script(Rule(status=status, body={"error": {"code": "X", "message": "m"}}, times=1))
        delivery = send(sink_for(teams))
    assert (delivery.outcome, delivery.status) == (outcome, status)


def test_429_honours_retry_after() -> None:
    with FakeTeams() as teams:
        teams.script(Rule(status=429, headers={"Retry-After": "16"}, times=1))
        first, second = send(sink_for(teams)), send(sink_for(teams))
    assert (first.outcome, first.retry_after, second.outcome) == ("retry", 16.0, "sent")


def test_reset_after_acceptance_duplicates_are_countable() -> None:
    """reliability.md D3: Teams has no dedup; the repeated card is recognisable by its notification id."""
    with FakeTeams() as teams:
        teams.script(Rule(reset=True, times=1))
        first, second = send(sink_for(teams)), send(sink_for(teams))
        ids = teams.notification_ids()
    assert (first.outcome, second.outcome) == ("retry", "sent")
    assert len(ids) == 2 and len(set(ids)) == 1


# -- config and secrets ----------------------------------------------------------------------------------------------
def test_the_sig_never_shows() -> None:
    with FakeTeams() as teams:
        teams.script(Rule(status=400, body=f"bad request to {teams.webhook_url}", times=1))
        sink = sink_for(teams)
        dead = send(sink)
        url = teams.webhook_url
    gone = send(TeamsSink("channel", {"url": url}))  # the server is closed now
    assert gone.outcome == "retry"
    for text in (repr(sink), dead.reason, gone.reason, sink.target):
        assert "S1gSecretValue0123" not in text, text
    assert repr(sink) == "TeamsSink('channel')"


@pytest.mark.parametrize(
    "config", [{}, {"url": "https://x.example/a", "max_bytes": 40_000}, {"url": "mailto:x"}]
)
def test_bad_config(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        TeamsSink("channel", config)


def test_markdown_links_in_event_text_do_not_form_and_read_the_same() -> None:
    bait = "[Verify your account](https://evil.example/login)"
    alert = sample_alert(
        title=f"Key released {bait}",
        summary=f"{bait} and [a reference][1]\n\n[1]: https://evil.example/ref",
        group={"resource": "vault](https://evil.example)"},
        details={"[title](https://evil.example)": bait},
    )
    message = offline_sink().render(alert)
    card = card_of(message)
    texts = [b["text"] for b in card["body"] if b["type"] == "TextBlock"] + [card["fallbackText"]]
    texts += [v for b in card["body"] if b["type"] == "FactSet" for f in b["facts"] for v in f.values()]
    link = re.compile(r"\][(\[:]")  # CommonMark allows no space between
    assert not [t for t in texts if link.search(t)], texts
    visible = {t.replace("\u200b", "") for t in texts}
    assert alert.summary in visible and bait in visible and "vault](https://evil.example)" in visible
    # (card_of validated the card against the 1.4 schema)
