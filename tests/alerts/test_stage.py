"""The alert stage over a real store and outbox: an outbox commit that fails (a full disk, a lock held too
long) loses no alert and does not turn the first alert of a group into a late update (reliability H6)."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tests.alerts.test_worker import LoopServer, LoopSink, drive, states
from vigil.alerts.dispatcher import AlertDispatcher
from vigil.alerts.grouping import Grouper
from vigil.alerts.outbox import Outbox
from vigil.alerts.router import Router
from vigil.alerts.stage import AlertStage
from vigil.detectors.finding import Finding
from vigil.events.model import FrozenMap
from vigil.rules.model import RuleSet
from vigil.sections import AlertSettings
from vigil.store.sqlite import Store, StoreError


def _finding(n: int) -> tuple[int, Finding]:
    found = Finding(
        rule="r.exfil",
        title="data leaves",
        severity="high",
        score=70,
        event_ids=(f"e{n}",),
        time=datetime.now(UTC),  # a fresh finding (an old one would be folded into a backlog summary)
        group=FrozenMap({"resource.id": "/r/1"}),
    )
    return n, found


def test_a_failed_outbox_commit_keeps_the_findings_and_the_groups_for_the_next_step(
    tmp_path: Path,
) -> None:
    db = tmp_path / "vigil.db"
    store = Store(db)
    outbox = Outbox(db)

    async def main() -> None:
        with LoopServer() as server:
            async with httpx.AsyncClient(timeout=5) as client:
                dispatcher = AlertDispatcher(outbox, {"pd": LoopSink("pd", {"url": server.url})}, client)
                router = Router(AlertSettings(default=["pd"]), {"pd"})
                stage = AlertStage(
                    dispatcher, router, Grouper(window=3600.0), store, RuleSet, base_url="http://vigil"
                )
                store.commit_detection([_finding(1)], 1, None)
                blocker = sqlite3.connect(db, isolation_level=None)
                blocker.execute("BEGIN IMMEDIATE")  # the outbox cannot commit (as with a full disk)
                outbox._db.execute("PRAGMA busy_timeout = 100")
                try:
                    await stage.step()
                except StoreError as exc:  # the stage's run loop logs it and goes on
                    assert "locked" in str(exc)
                else:
                    raise AssertionError("the outbox commit should have failed")
                assert stage.cursor == 0  # the finding will be read again
                blocker.execute("ROLLBACK")
                blocker.close()
                assert await stage.step() == 1  # the first alert of its group, at once, not a held update
                await drive(dispatcher, lambda: states(outbox, "pd")["sent"] == 1)
                stage.close()
        [(_, body, _)] = server.ledger
        assert body["kind"] == "trigger" and body["count"] == 1

    asyncio.run(main())
    store.close()
