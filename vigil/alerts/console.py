"""The console sink of the embedded default: one JSON line per alert, appended to a file or to stdout.

A single machine with no chat or paging account still needs its alerts somewhere durable and greppable.
Each alert becomes one line of JSON Lines, the same document the generic webhook posts
(:meth:`Alert.to_json` plus ``"version": 1`` and the notification ``id``), so ``jq`` and any log shipper
read it and a later webhook receiver sees the same shape.

**Durability.** With a ``path``, the line is written with one ``write`` on a descriptor opened with
``O_APPEND`` (so lines from concurrent writers never interleave) and fsynced before ``send`` reports
``sent``: the outbox deletes its copy on ``sent``, so an unsynced line could be lost to a power cut with no
copy left anywhere. The file is created with mode 0600 (alerts describe security findings) and reopened
for every alert, which survives log rotation. The write runs in a worker thread, so a slow disk does not
stall the event loop. Without a path (``path`` empty or ``-``), lines go to standard output.

Outcomes: ``sent`` once written; ``retry`` if the write fails (a full disk, a missing mount, a closed
stdout), since the same line can be written later. There is no remote side, hence no limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson

from vigil.alerts.model import Alert, Delivery, Sink
from vigil.alerts.webhook import notification_id


class ConsoleSink(Sink):
    """JSON Lines to ``path`` (appended, fsynced, 0600) or to stdout. Config: optional ``path``."""

    kind = "console"

    def __init__(self, name: str, config: dict[str, Any]) -> None:
        super().__init__(name, config)
        raw = config.get("path")
        self.path: Path | None = None if raw in (None, "", "-") else Path(str(raw)).expanduser()
        self._lock = threading.Lock()

    def render(self, alert: Alert) -> dict[str, Any]:
        return {**alert.to_json(), "version": 1, "id": notification_id(alert)}

    async def send(self, client: httpx.AsyncClient, alert: Alert) -> Delivery:
        try:
            line = orjson.dumps(self.render(alert), option=orjson.OPT_APPEND_NEWLINE)
        except TypeError as exc:  # not JSON-ready: writing it again cannot help
            return Delivery("dead", f"cannot encode the alert: {exc}")
        try:
            await asyncio.to_thread(self._write, line)
        except (OSError, ValueError) as exc:  # ValueError: stdout closed
            where = str(self.path) if self.path else "stdout"
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return Delivery("retry", f"cannot write to {where}: {type(exc).__name__}: {detail}")
        return Delivery("sent")

    def _write(self, line: bytes) -> None:
        with self._lock:
            if self.path is None:
                sys.stdout.write(line.decode())
                sys.stdout.flush()
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                start = os.fstat(fd).st_size
                try:
                    view = memoryview(line)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                except OSError:
                    # no half line may stay behind to corrupt the file: the retry writes it whole
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                    raise
            finally:
                os.close(fd)
