"""Slack incoming webhook: Block Kit with a plain ``text`` fallback, safe against hostile event text.

The body is ``{"text": fallback, "blocks": [...]}`` (``../shared/reference/azure.md`` §6.3): a ``header``
with the severity as an emoji and the title, a ``section`` with the summary and up to ten fields (rule,
severity, status, matches, incident, finding, group), sections for the remediation actions and the
finding's details, the links (approve, reject, view) as mrkdwn links, and a ``context`` line with the
dedup key and the notification id (equal across retries, so a duplicate post can be recognised). Links are
mrkdwn rather than buttons because an incoming webhook has no app to receive a button's interaction, and
Slack flags such buttons with a warning.

**Escaping.** Event fields are attacker-influenced (a resource name, a user agent). In mrkdwn, ``<!channel>``
pings a whole channel and ``<https://evil|text>`` makes a link, so every value goes through :func:`escape`
(``&``, ``<``, ``>`` as entities, as Slack documents); the header is ``plain_text``, which Slack never
parses.

**Limits** kept by construction: header 150 characters, section text 3,000, ten fields of at most 2,000,
well under 50 blocks, the fallback text under 3,000 (Slack truncates beyond 40,000).

Answers: ``200 ok`` is ``sent``; 429 ``retry`` with ``Retry-After``; 5xx ``retry``; other 4xx are
``dead`` with Slack's code (``invalid_payload``, ``no_service``, ``channel_is_archived``...). Slack allows
about one message a second per webhook. The URL's last path segment is the credential.
"""

from __future__ import annotations

from typing import Any

import orjson

from vigil.alerts.model import Alert, AlertKind
from vigil.alerts.webhook import HttpSink, notification_id, truncate

HEADER_LIMIT = 150
SECTION_LIMIT = 3000
FIELD_LIMIT = 2000
MAX_FIELDS = 10
FALLBACK_LIMIT = 3000
EMOJI = {"critical": ":red_circle:", "high": ":red_circle:", "medium": ":large_orange_circle:"}
LABEL = {AlertKind.RESOLVE: "RESOLVED", AlertKind.ACKNOWLEDGE: "ACKNOWLEDGED", AlertKind.NOTICE: "NOTICE"}
LINK_TITLE = {"approve": "Approve", "reject": "Reject", "incident": "View incident"}


def escape(value: str) -> str:
    """mrkdwn-safe text: ``&``, ``<`` and ``>`` as entities, so no mention, link or markup gets through."""
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mrkdwn(value: str, limit: int) -> dict[str, str]:
    """A mrkdwn text object, escaped and then cut (escaping never grows it past ``limit``)."""
    return {"type": "mrkdwn", "text": truncate(escape(value), limit)}


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
    except TypeError:
        return str(value)


class SlackSink(HttpSink):
    """Slack incoming webhook. Config: ``url`` or ``webhook_url`` (a secret)."""

    kind = "slack"
    per_second = 1.0

    def render(self, alert: Alert) -> dict[str, Any]:
        label = LABEL.get(alert.kind, alert.severity.upper())
        emoji = (
            ":white_check_mark:"
            if alert.kind is AlertKind.RESOLVE
            else EMOJI.get(alert.severity.lower(), ":large_blue_circle:")
        )
        headline = f"{label}: {alert.title}"
        blocks: list[dict[str, Any]] = [
            {
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": truncate(f"{emoji} {headline}", HEADER_LIMIT),
                    "emoji": True,
                },
            }
        ]
        section: dict[str, Any] = {"type": "section", "fields": self._fields(alert)}
        if alert.summary:
            section["text"] = mrkdwn(alert.summary, SECTION_LIMIT)
        blocks.append(section)
        if alert.actions:
            lines = [self._action_line(action) for action in alert.actions]
            blocks.append(self._text_section("*Actions*\n", "\n".join(lines)))
        if alert.details:
            blocks.append(self._text_section("*Details*\n", _json(alert.details), code=True))
        links = [
            f"<{url}|{LINK_TITLE.get(name, name.replace('_', ' ').capitalize())}>"
            for name, url in alert.links.items()
            if url.startswith(("https://", "http://")) and not any(c in url for c in "|<> \n")
        ]
        if links:
            blocks.append(
                {"type": "section", "text": {"type": "mrkdwn", "text": " · ".join(links)[:SECTION_LIMIT]}}
            )
        context = f"Vigil · {alert.kind.value} · {alert.dedup_key} · notification {notification_id(alert)}"
        blocks.append({"type": "context", "elements": [mrkdwn(context, FIELD_LIMIT)]})
        fallback = f"{label}: {alert.title}" + (f" — {alert.summary}" if alert.summary else "")
        return {"text": truncate(escape(fallback), FALLBACK_LIMIT), "blocks": blocks}

    @staticmethod
    def _fields(alert: Alert) -> list[dict[str, str]]:
        pairs: list[tuple[str, str]] = [
            ("Rule", alert.rule),
            ("Severity", alert.severity),
            ("Status", alert.kind.value),
        ]
        if alert.count > 1:
            pairs.append(("Matches", str(alert.count)))
        pairs += [
            (title, value)
            for title, value in (("Incident", alert.incident_id), ("Finding", alert.finding_id))
            if value
        ]
        pairs += sorted(alert.group.items())
        fields = [
            {
                "type": "mrkdwn",
                "text": f"*{escape(truncate(title, 80))}*\n{truncate(escape(value), FIELD_LIMIT - 100)}",
            }
            for title, value in pairs[:MAX_FIELDS]
        ]
        return fields

    @staticmethod
    def _action_line(action: dict[str, Any]) -> str:
        name = str(action.get("remediation") or action.get("id") or "action")
        target = str(action.get("target") or "")
        state = str(action.get("state") or "")
        return f"• {name}" + (f" on {target}" if target else "") + (f": {state}" if state else "")

    @staticmethod
    def _text_section(title: str, content: str, *, code: bool = False) -> dict[str, Any]:
        """A section of ``title`` then ``content`` (escaped; in a code block when ``code``), within 3,000."""
        fence = "```" if code else ""
        room = SECTION_LIMIT - len(title) - 2 * len(fence)
        text = f"{title}{fence}{truncate(escape(content), room)}{fence}"
        return {"type": "section", "text": {"type": "mrkdwn", "text": text}}
