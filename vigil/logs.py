"""Logging set-up for long-running processes: human text, or one JSON object per line for log shippers.

``log_format: json`` writes ``{"time", "level", "logger", "message"}`` plus ``exception`` when there is
one, each record on one line, so Loki, Elastic or Azure Monitor's agent can parse it without a grok pattern.
Secrets never reach the log in either format: the code that could see them (authentication, settings)
logs reasons, never values.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Final, Literal

import orjson

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LogFormat = Literal["text", "json"]


class JsonFormatter(logging.Formatter):
    """One JSON object per record."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def sampled(n: int) -> bool:
    """Whether the ``n``-th occurrence of a repeating fault is logged: the 1st, 10th, 100th ... A fault that
    recurs on every event (a broken rule, a bug on a kind of input) must stay visible without flooding the
    log; its counter in ``/metrics`` has every occurrence."""
    return n > 0 and str(n).rstrip("0") == "1"


def configure(level: str, fmt: LogFormat = "text") -> None:
    """Log to stderr at ``level`` in ``fmt`` unless the embedding program configured logging already."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
        root.addHandler(handler)
        root.setLevel(logging.WARNING)
    logging.getLogger("vigil").setLevel(level)
    # httpx logs every request's full URL at INFO; alert webhook URLs carry their credential (Teams' sig=,
    # Slack's path), so its request lines never reach Vigil's log whatever the level asked for
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
