"""The alerting stage of the daemon: findings, incident changes, verified remediations and response notices
become alerts, grouped against storms, stored in the outbox, delivered by one worker per sink.

Where alerts come from:

* **findings**, read from the store after this stage's own cursor (``alerts:findings``, the findings table's
  rowid): one ``trigger`` per finding, keyed by rule and group, so every finding of one incident updates the
  same page (PagerDuty folds by ``dedup_key``);
* **remediations that verified**: an action that reaches ``succeeded`` resolves the page of its finding's rule
  and group (cursor ``alerts:actions`` over the actions' timeline);
* **incident changes** made by a person (``POST /v1/incidents/{id}/acknowledge|resolve``): acknowledge or
  resolve the page, through :meth:`AlertStage.incident_changed`;
* **response notices** (a blast radius refused, an approval waiting, a dry-run plan, a failure), through
  :meth:`AlertStage.notice`.

Everything passes the :class:`~vigil.alerts.grouping.Grouper` (the first alert of a group at once, the rest
of the window as one update with a count; storms of one rule folded into a summary) and is written to the
outbox before the stage moves its cursor: a crash re-reads findings, and the outbox's dedup keys and the
sinks' own dedup make a re-sent trigger one page, not two.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson

from vigil.alerts.dispatcher import AlertDispatcher
from vigil.alerts.grouping import Grouper
from vigil.alerts.model import Alert, AlertKind, dedup_key
from vigil.alerts.router import Router, finding_alert, incident_alert, notice_alert
from vigil.rules.model import RuleSet
from vigil.store import incidents as book
from vigil.store.sidecar import read_only
from vigil.store.sqlite import Store

log = logging.getLogger(__name__)

FINDINGS: Final = "alerts:findings"
ACTIONS: Final = "alerts:actions"
READ_LIMIT: Final = 1000
TICK: Final = 1.0


class AlertStage:
    """Turns what happened into alerts (see the module docstring); :meth:`run` until stopped."""

    def __init__(
        self,
        dispatcher: AlertDispatcher,
        router: Router,
        grouper: Grouper,
        event_store: Store,
        rules: Callable[[], RuleSet],
        *,
        base_url: str,
    ) -> None:
        self.dispatcher = dispatcher
        self.router = router
        self.grouper = grouper
        self.store = event_store
        self.rules = rules
        self.base_url = base_url
        self._db = read_only(event_store.path)
        self.cursor = self._start(FINDINGS, "SELECT coalesce(max(rowid), 0) FROM findings")
        self.action_cursor = self._start(ACTIONS, "SELECT coalesce(max(seq), 0) FROM action_log")
        self.sent = 0

    def _start(self, name: str, newest: str) -> int:
        """A saved cursor, or the newest row at the very first start: no flood of old findings."""
        saved = self.store.offset(name)
        if saved is not None:
            return int(saved)
        try:
            start = int(self._db.execute(newest).fetchone()[0])
        except sqlite3.OperationalError:  # the table is made by another component that has not run yet
            start = 0
        self.store.set_offset(name, str(start))
        return start

    def close(self) -> None:
        self._db.close()

    # -- sources -------------------------------------------------------------------------------------------

    async def step(self) -> int:
        """Alerts for new findings and newly verified remediations; held group updates whose window closed.
        Returns the number of alerts handed to the outbox."""
        sent = await self._grouped(self._findings) + await self._grouped(self._verified)
        sent += await self._grouped(self._flush)
        self.sent += sent
        return sent

    async def _grouped(self, source: Callable[[], Awaitable[int]]) -> int:
        """Run one source; if it fails (the outbox could not commit: a full disk), the grouper goes back to
        where it was, so that the rows read again meet the groups as they were, not as if sent."""
        saved = self.grouper.snapshot()
        try:
            return await source()
        except Exception:
            self.grouper.restore(saved)
            raise

    async def _flush(self) -> int:
        sent = 0
        for alert in self.grouper.flush(time.time()):
            sent += await self._send(alert)
        return sent

    async def _findings(self) -> int:
        rows = self._db.execute(
            "SELECT rowid, id, rule, group_key, body FROM findings WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (self.cursor, READ_LIMIT),
        ).fetchall()
        sent = 0
        # one look-up for the batch's incidents (each finding's, filed by the detection commit)
        incidents = book.newest(self._db, list({(r[2], r[3]): None for r in rows}))
        ready: list[Alert] = []
        for _rowid, finding_id, rule_id, group_key, body in rows:
            incident = incidents.get((rule_id, group_key))
            # (redacted by the outbox when stored: most are folded by the grouper and never are)
            alert = finding_alert(
                orjson.loads(body),
                group_key,
                finding_id,
                incident[0] if incident else None,
                self.base_url,
                redacted=False,
            )
            ready += self.grouper.offer(alert)
        # one outbox transaction for the batch's alerts, committed before the cursor moves past them
        sent += await self._send_many(ready)
        if rows:
            self.cursor = rows[-1][0]
            # (in a thread: an ingestion commit may hold the store's lock, and the loop must not wait)
            await asyncio.to_thread(self.store.set_offset, FINDINGS, str(self.cursor))
        return sent

    async def _verified(self) -> int:
        try:
            rows = self._db.execute(
                "SELECT l.seq, a.rule, f.group_key, a.incident_id, a.remediation, a.target "
                "FROM action_log l JOIN actions a ON a.id = l.action_id "
                "LEFT JOIN findings f ON f.id = a.finding_id "
                "WHERE l.seq > ? AND l.state = 'succeeded' ORDER BY l.seq LIMIT ?",
                (self.action_cursor, READ_LIMIT),
            ).fetchall()
        except sqlite3.OperationalError:  # no action store yet
            return 0
        sent = 0
        for seq, rule, group_key, incident_id, remediation, target in rows:
            if group_key is not None:
                summary = f"{remediation} on {target} verified: resolved by Vigil"
                alert = Alert(
                    kind=AlertKind.RESOLVE, dedup_key=dedup_key(rule, group_key), rule=rule, title=summary,
                    severity="informational", summary=summary, time=time.time(), incident_id=incident_id,
                    details={"remediation": remediation, "target": target},
                )  # fmt: skip
                for out in self.grouper.offer(alert):  # a resolve also drops the held trigger update
                    sent += await self._send(out)
            self.action_cursor = seq
        if rows:
            await asyncio.to_thread(self.store.set_offset, ACTIONS, str(self.action_cursor))
        return sent

    async def incident_changed(self, incident: dict[str, Any], to: str, note: str) -> None:
        """A person acknowledged or resolved an incident in Vigil: acknowledge or resolve its page."""
        kind = AlertKind.ACKNOWLEDGE if to == "acknowledged" else AlertKind.RESOLVE
        for out in self.grouper.offer(incident_alert(incident, kind, note, self.base_url)):
            await self._send(out)

    async def notice(self, kind: str, message: str, details: dict[str, Any]) -> None:
        """The response engine's alert hook."""
        for out in self.grouper.offer(notice_alert(kind, message, details, self.base_url)):
            await self._send(out)

    # -- delivery ------------------------------------------------------------------------------------------

    async def _send(self, alert: Alert) -> int:
        return await self._send_many([alert])

    async def _send_many(self, alerts: list[Alert]) -> int:
        """Route each alert and store it for its sinks (one transaction for all); the number routed."""
        rules = self.rules()
        routed = [(names, a) for a in alerts if (names := self.router.route(rules.get(a.rule), a.severity))]
        if routed:
            await self.dispatcher.submit_many(routed)
        return len(routed)

    async def run(self, stop: asyncio.Event) -> None:
        """Step every second until ``stop``; a failing step is logged and its rows read again."""
        while not stop.is_set():
            try:
                await self.step()
            except Exception:
                log.exception("alert stage: step failed; its findings will be read again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK)
