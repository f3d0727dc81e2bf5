"""The response stage: findings the detect stage committed become proposals for the response engine.

Where its input comes from: the ``findings`` table of the daemon's store, read after a cursor, the
table's ``rowid``. Findings are inserted in commit order, and retention never deletes the newest row
(``incidents.prune``), so rowids only grow and "everything after the cursor" is exactly what is new. The
stage reads through its own read-only SQLite connection (WAL lets it read while the pipeline writes) and
touches nothing of :mod:`vigil.store.sqlite` but its public offsets.

For each new finding whose rule (in the rule set loaded *now*) has ``remediate`` actions:

* the triggering event is the first of the finding's ``event_ids``, read from the event log
  (:func:`~vigil.store.eventlog.lookup`: decoded and validated, or its batch's raw bytes normalised again);
* the action's target template (``{{ node.id }}``, ``kv-{{ raw.vault.name }}``) and templated parameters
  are resolved against it (``templates.py``): each placeholder is a dotted path through the event's fields
  and ``raw``/``labels`` mappings, and must give a non-empty string or number. A placeholder that does not
  resolve (field missing, event pruned) gives a
  proposal that the engine *refuses* with the reason, never a crash and never a silently dropped finding
  (its target is the template itself, so a rule whose template never resolves makes one refusal per
  idempotency window, not one per finding);
* the incident is the one the finding was filed into, stored with it (incidents are filed in the same
  transaction as their findings, so it is there as soon as the finding is).

Proposals are gathered per rule for ``batch_window`` seconds from the first one, so a storm of findings
is judged as one batch against the blast-radius caps, then submitted. **The cursor is saved only after
every finding up to it was submitted** (offset ``response:findings``); a crash in between re-reads them,
and the engine's idempotency keys make the second submission a no-op. On the very first start (no saved
cursor) the stage begins at the end of the table, so enabling the response engine on a store full of old
findings does not remediate history; ``from_start=True`` (tools, tests) begins at the beginning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import orjson

from vigil.events.model import Event
from vigil.response.engine import ResponseEngine
from vigil.response.policy import Proposal
from vigil.response.templates import bind
from vigil.rules.model import RemediateAction, Rule, RuleSet
from vigil.store import eventlog
from vigil.store.sidecar import read_only
from vigil.store.sqlite import Store

log = logging.getLogger(__name__)

OFFSET: Final = "response:findings"
#: findings read per step
READ_LIMIT: Final = 1000
#: how often the engine's timers run (expiry, held and deferred actions)
TICK_SECONDS: Final = 1.0


@dataclass(slots=True)
class _Batch:
    """Proposals of one rule gathered since ``first`` (monotonic), from findings with rowid >= ``low``."""

    first: float
    low: int
    proposals: list[Proposal] = field(default_factory=list)


class ResponseStage:
    """Feeds committed findings to the engine (see the module docstring)."""

    def __init__(
        self,
        engine: ResponseEngine,
        event_store: Store,
        rules: Callable[[], RuleSet],
        *,
        batch_window: float,
        clock: Callable[[], float] = time.monotonic,
        from_start: bool = False,
    ) -> None:
        self.engine = engine
        self.event_store = event_store
        self.rules = rules
        self.batch_window = batch_window
        self._clock = clock
        self._db = read_only(event_store.path)
        #: the event log's last batch read (eventlog.lookup): a finding's event is looked up by id
        self._batch_cache: dict[int, dict[int, Event]] = {}
        saved = event_store.offset(OFFSET)
        if saved is None:
            start = 0 if from_start else self._max_rowid()
            event_store.set_offset(OFFSET, str(start))
            saved = str(start)
        self.cursor = int(saved)  # saved: every finding up to here is submitted
        self._read = self.cursor  # read: findings up to here are in a batch or skipped
        self._pending: dict[str, _Batch] = {}
        self._last_tick = float("-inf")

    def __repr__(self) -> str:
        return f"ResponseStage(cursor={self.cursor}, pending={len(self._pending)})"

    def close(self) -> None:
        self._db.close()

    def _max_rowid(self) -> int:
        return int(self._db.execute("SELECT coalesce(max(rowid), 0) FROM findings").fetchone()[0])

    # -- one step ----------------------------------------------------------------------------------------

    async def step(self) -> int:
        """Read new findings into batches, submit the batches whose window has passed, save the cursor.
        Returns the number of proposals submitted."""
        ruleset = self.rules()
        rows = self._db.execute(
            "SELECT rowid, id, rule, incident, time_ms, body FROM findings WHERE rowid > ? "
            "ORDER BY rowid LIMIT ?",
            (self._read, READ_LIMIT),
        ).fetchall()
        now = self._clock()
        for rowid, fid, rule_id, incident, time_ms, body in rows:
            rule = ruleset.get(rule_id)
            actions = [a for a in rule.actions if isinstance(a, RemediateAction)] if rule else []
            if rule is not None and actions:
                proposals = self._proposals(rule, actions, fid, incident, time_ms, orjson.loads(body))
                batch = self._pending.setdefault(rule_id, _Batch(now, rowid))
                batch.proposals += proposals
            self._read = rowid
        submitted = 0
        for rule_id, batch in list(self._pending.items()):
            if now - batch.first >= self.batch_window:
                await self.engine.submit(batch.proposals)  # raises: the batch stays for the next step
                submitted += len(batch.proposals)
                del self._pending[rule_id]
        done = min((b.low for b in self._pending.values()), default=self._read + 1) - 1
        if done > self.cursor:
            # (in a thread: an ingestion commit may hold the store's lock, and the loop must not wait)
            await asyncio.to_thread(self.event_store.set_offset, OFFSET, str(done))
            self.cursor = done
        return submitted

    def _proposals(
        self,
        rule: Rule,
        actions: list[RemediateAction],
        finding_id: str,
        incident: str | None,
        time_ms: int,
        finding: Mapping[str, Any],
    ) -> list[Proposal]:
        event_ids = finding.get("event_ids") or [""]
        event = self._event(str(event_ids[0]))
        out = []
        for action in actions:
            bound = bind(action, event, str(event_ids[0]))
            out.append(
                Proposal(
                    rule.id,
                    rule.status,
                    rule.author,
                    action,
                    finding_id,
                    incident,
                    bound.target,
                    time_ms / 1000,
                    bound.problem,
                    bound.params,
                    bound.binding,
                )
            )
        return out

    def _event(self, event_id: str) -> Event | None:
        try:  # (None: pruned by retention, or never stored: the target will not resolve)
            return eventlog.lookup(self._db, event_id, self._batch_cache)
        except (msgspec.ValidationError, orjson.JSONDecodeError) as exc:
            log.error("event %s in the store does not validate: %s", event_id, exc)
            return None

    # -- the loop ----------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        """Step whenever ``wake`` is set (the detect stage committed) and at least every second, and tick
        the engine every second, until ``stop``. A failing step (audit log or store down) is logged and
        retried: its findings stay after the saved cursor."""
        while not stop.is_set():
            wake.clear()
            try:
                await self.step()
            except Exception:
                log.exception("response stage: step failed; its findings will be read again")
            if self._clock() - self._last_tick >= TICK_SECONDS:
                self._last_tick = self._clock()
                try:
                    await self.engine.tick()
                except Exception:
                    log.exception("response engine: tick failed")
            timeout = TICK_SECONDS
            if self._pending:
                first = min(b.first for b in self._pending.values())
                timeout = min(timeout, max(0.0, first + self.batch_window - self._clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_first(stop, wake), timeout)


async def _first(*events: asyncio.Event) -> None:
    """Return as soon as one of ``events`` is set."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
