"""Microsoft Teams through a Workflows webhook: one Adaptive Card per alert, always under the size limit.

Legacy Office 365 connector webhooks are retired, and the MessageCard format that peers still send
(falcosidekick) renders nowhere now. A Workflows trigger ("When a Teams webhook request is received")
takes the *message with attachments* envelope of ``../shared/reference/azure.md`` §6.1 and posts
``attachments[0].content``, an Adaptive Card::

    {"type": "message", "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
                                         "contentUrl": null, "content": {AdaptiveCard 1.4}}]}

The card targets **version 1.4**: Teams renders up to 1.5 and 1.4 is the safest across clients, and every
element used here (TextBlock, FactSet, Action.OpenUrl with ``style``) exists in it. It validates against the
published 1.4 schema (``tests/alerts/schemas/``), which is why it has no ``msteams`` width hint: that key is a
Teams extension the schema's ``additionalProperties: false`` rejects. It shows the title in the severity's
colour (attention for high and critical, warning for medium, accent below, good once resolved), a FactSet
(rule, severity, status, matches, incident, finding, group), the remediation actions taken or pending, the
finding's details, and ``Action.OpenUrl`` buttons to approve, reject or view in Vigil. Only OpenUrl: there is
no bot to receive ``Action.Submit``.

**Size.** Teams rejects messages over 28 KB, and practitioners report failures from about 21 KB, so the
default budget is 20,000 bytes of JSON (``max_bytes`` in the config, at most 28 KB). The card is built at
decreasing levels of detail (fewer details, actions and group facts, shorter values) until it fits, with a
line saying what was left out; the last level is bounded whatever the alert holds.

**Duplicates.** The Workflows trigger answers 202 once the run is queued (a 2xx is not proof of posting) and
has no dedup, so a retry after an ambiguous failure can post twice. Every card carries the notification's
id (a hash of the alert, equal across retries) in its footer, whose element ``id`` is ``vigil-<id>``, so
duplicates can be recognised and counted (reliability.md D3).

**Links in event text.** Teams renders Markdown in a TextBlock's text and in a fact's title and value, and
event fields are attacker-influenced (a resource name, a summary built from a record): a value such as
``[Verify your account](https://evil.example)`` would show as a link in the security channel. Every text
the card carries goes through :func:`defang`, which puts a zero-width space after each ``]`` that
would close a link's text (before ``(``, ``[`` or ``:``, so inline links, reference links and link
definitions all fail to form) whether or not the renderer honours backslash escapes. What a reader sees is
unchanged; the card's buttons are the only links in it.

Answers: any 2xx (200, 202) is ``sent``; 429 and 5xx ``retry``; other 4xx ``dead``. Limits: 4 requests a
second and 100 an hour per webhook. The URL's ``sig`` parameter is a bearer secret: never shown or logged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from vigil.alerts.model import Alert, AlertKind
from vigil.alerts.webhook import HttpSink, notification_id, truncate
from vigil.errors import ConfigError

CARD_VERSION = "1.4"
SCHEMA_URL = "http://adaptivecards.io/schemas/adaptive-card.json"
CONTENT_TYPE = "application/vnd.microsoft.card.adaptive"
HARD_LIMIT = 28 * 1024
DEFAULT_BUDGET = 20_000
MAX_BUTTONS = 6
URL_LIMIT = 2048
TITLE_LIMIT = 200
COLOR = {"critical": "attention", "high": "attention", "medium": "warning", "low": "accent"}
LABEL = {AlertKind.RESOLVE: "RESOLVED", AlertKind.ACKNOWLEDGE: "ACKNOWLEDGED", AlertKind.NOTICE: "NOTICE"}
BUTTON = {
    "approve": ("Approve", "positive"),
    "reject": ("Reject", "destructive"),
    "incident": ("View incident", ""),
}


@dataclass(frozen=True, slots=True)
class Level:
    """How much of an alert one rendering keeps."""

    details: int
    actions: int
    group: int
    value_len: int
    summary_len: int


LEVELS = (
    Level(details=40, actions=25, group=10, value_len=500, summary_len=3000),
    Level(details=15, actions=10, group=6, value_len=200, summary_len=1000),
    Level(details=5, actions=5, group=4, value_len=100, summary_len=400),
    Level(details=0, actions=3, group=3, value_len=80, summary_len=200),
    Level(details=0, actions=0, group=2, value_len=60, summary_len=120),
)


def text(value: Any) -> str:
    """A fact's value: strings as they are, anything else as compact JSON."""
    if isinstance(value, str):
        return value
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)


_LINK_CLOSE = re.compile(r"\](?=[(\[:])")
ZWSP = "\u200b"


def defang(value: str) -> str:
    """``value`` with no Markdown link able to form in it (see module docstring); looks the same."""
    return _LINK_CLOSE.sub("]" + ZWSP, value) if "]" in value else value


def fact(title: str, value: Any, limit: int) -> dict[str, str]:
    return {"title": defang(truncate(title, 80)), "value": defang(truncate(text(value), limit)) or "-"}


def block(content: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": defang(content), "wrap": True, **style}


def kept(items: list[Any], limit: int) -> tuple[list[Any], int]:
    """The first ``limit`` items and how many were left out."""
    return items[:limit], max(0, len(items) - limit)


class TeamsSink(HttpSink):
    """Teams Workflows webhook. Config: ``url`` or ``webhook_url`` (a secret), optional ``max_bytes``."""

    kind = "teams"
    per_second = 4.0
    per_hour = 100.0

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        budget = config.get("max_bytes", DEFAULT_BUDGET)
        if not isinstance(budget, int) or not 1024 <= budget <= HARD_LIMIT:
            raise ConfigError(f"alert sink {name!r} (teams): max_bytes must be 1024..{HARD_LIMIT}")
        self.max_bytes = budget

    def render(self, alert: Alert) -> dict[str, Any]:
        for level in LEVELS:
            message = self.message(self.card(alert, level))
            if len(orjson.dumps(message)) <= self.max_bytes:
                return message
        return message  # the last level: bounded, whatever the alert holds

    @staticmethod
    def message(card: dict[str, Any]) -> dict[str, Any]:
        """The Workflows envelope around one card."""
        return {
            "type": "message",
            "attachments": [{"contentType": CONTENT_TYPE, "contentUrl": None, "content": card}],
        }

    def card(self, alert: Alert, level: Level) -> dict[str, Any]:
        """The Adaptive Card for ``alert`` at one level of detail."""
        label = LABEL.get(alert.kind, alert.severity.upper())
        color = "good" if alert.kind is AlertKind.RESOLVE else COLOR.get(alert.severity.lower(), "accent")
        headline = truncate(f"{label}: {alert.title}", TITLE_LIMIT)
        body: list[dict[str, Any]] = [block(headline, size="Large", weight="Bolder", color=color)]
        if alert.summary:
            body.append(block(truncate(alert.summary, level.summary_len)))
        left_out = 0
        facts = [
            fact("Rule", alert.rule, level.value_len),
            fact("Severity", alert.severity, 40),
            fact("Status", alert.kind.value, 40),
        ]
        if alert.count > 1:
            facts.append(fact("Matches", str(alert.count), 40))
        for title, value in (("Incident", alert.incident_id), ("Finding", alert.finding_id)):
            if value:
                facts.append(fact(title, value, level.value_len))
        group, skipped = kept(sorted(alert.group.items()), level.group)
        facts.extend(fact(key, value, level.value_len) for key, value in group)
        left_out += skipped
        body.append({"type": "FactSet", "facts": facts})
        actions, skipped = kept(alert.actions, level.actions)
        left_out += skipped
        if actions:
            body.append(block("Actions", weight="Bolder", separator=True))
            body.append({"type": "FactSet", "facts": [self._action_fact(a, level) for a in actions]})
        details, skipped = kept(list(alert.details.items()), level.details)
        left_out += skipped
        if details:
            body.append(block("Details", weight="Bolder", separator=True))
            body.append({"type": "FactSet", "facts": [fact(k, v, level.value_len) for k, v in details]})
        if left_out:
            note = f"{left_out} more item(s) left out to fit Teams' size limit; the incident has them."
            body.append(block(note, isSubtle=True, size="Small"))
        nid = notification_id(alert)
        footer = f"Vigil · {alert.kind.value} · {truncate(alert.dedup_key, 255)} · notification {nid}"
        body.append(block(footer, isSubtle=True, size="Small", separator=True, id=f"vigil-{nid}"))
        card: dict[str, Any] = {
            "$schema": SCHEMA_URL,
            "type": "AdaptiveCard",
            "version": CARD_VERSION,
            "fallbackText": defang(headline),
            "body": body,
        }
        if buttons := self._buttons(alert):
            card["actions"] = buttons
        return card

    @staticmethod
    def _action_fact(action: dict[str, Any], level: Level) -> dict[str, str]:
        name = str(action.get("remediation") or action.get("id") or "action")
        target = str(action.get("target") or "")
        state = str(action.get("state") or "")
        return fact(name, " — ".join(part for part in (target, state) if part), level.value_len)

    @staticmethod
    def _buttons(alert: Alert) -> list[dict[str, Any]]:
        buttons: list[dict[str, Any]] = []
        for name, url in alert.links.items():
            if not url.startswith(("https://", "http://")) or len(url) > URL_LIMIT:
                continue
            title, style = BUTTON.get(name, (name.replace("_", " ").capitalize(), ""))
            button: dict[str, Any] = {"type": "Action.OpenUrl", "title": truncate(title, 40), "url": url}
            if style:
                button["style"] = style
            buttons.append(button)
        return buttons[:MAX_BUTTONS]
