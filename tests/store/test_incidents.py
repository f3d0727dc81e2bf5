"""Incidents: grouping by rule and group over a window, states and timeline, exactly once on replay;
and the API over them."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.detectors.stateful_helpers import at
from vigil.api import create_app
from vigil.detectors.finding import Finding
from vigil.events.model import FrozenMap
from vigil.settings import load_settings
from vigil.store import incidents as incidents_mod
from vigil.store import sqlite as sqlite_mod
from vigil.store.incidents import IncidentError
from vigil.store.sqlite import Store
from vigil.streams import RunState

HOUR = 3600


def _f(seconds: float, eid: str, rule: str = "r.burst", node: str = "n1") -> tuple[int, Finding]:
    found = Finding(
        rule=rule,
        title=f"title of {rule}",
        severity="high",
        score=70,
        event_ids=(eid,),
        time=at(seconds),
        group=FrozenMap({"node.id": node}),
    )
    return 1, found


def test_findings_group_into_incidents_by_rule_group_and_window(tmp_path: Path) -> None:
    store = Store(tmp_path / "vigil.db", incident_window_ms=HOUR * 1000)
    batch = [
        _f(0, "e1"),
        _f(600, "e2"),  # same rule and node, 10 minutes later: same incident
        _f(0, "e3", node="n2"),  # another node: another incident
        _f(0, "e4", rule="r.other"),  # another rule: another incident
        _f(600 + 2 * HOUR, "e5"),  # two hours after the last: a new incident
    ]
    assert store.commit_detection(batch, 5, None) == 5
    open_ = store.incidents(state="open")
    assert sorted((i["rule"], i["group"]["node.id"], i["findings"]) for i in open_) == [
        ("r.burst", "n1", 1),
        ("r.burst", "n1", 2),
        ("r.burst", "n2", 1),
        ("r.other", "n1", 1),
    ]
    # a replay of the same findings changes nothing
    assert store.commit_detection(batch, 5, None) == 0
    assert sum(i["findings"] for i in store.incidents()) == 5


def test_open_incident_lookup_searches_the_index(tmp_path: Path) -> None:
    """Each detection commit looks up the open incidents of its findings' groups; that must be an index
    search per group, not a scan of a table that only grows while the daemon runs."""
    store = Store(tmp_path / "vigil.db", incident_window_ms=HOUR * 1000)
    for open_only in (True, False):
        sql = incidents_mod._lookup_sql(3, open_only)
        plan = " / ".join(r[3] for r in store._db.execute("EXPLAIN QUERY PLAN " + sql, ["r", "g"] * 3))
        assert "SEARCH i USING INDEX incidents_key (rule=? AND group_key=?)" in plan, plan
        assert "SCAN i" not in plan and "SCAN incidents" not in plan, plan
    # and it finds what it should across more than one statement's worth of groups: 300 nodes, then a
    # finding for each of them again an hour later joins its open incident (a resolved one would not)
    first = [_f(0, f"a{i}", node=f"n{i}") for i in range(300)]
    assert store.commit_detection(first, 1, None) == 300
    resolved = next(i for i in store.incidents() if i["group"]["node.id"] == "n7")
    store.set_incident_state(resolved["id"], "resolved", "tester")
    again = [_f(HOUR - 1, f"b{i}", node=f"n{i}") for i in range(300)]
    assert store.commit_detection(again, 2, None) == 300
    counts = sorted(i["findings"] for i in store.incidents(limit=1000))
    assert counts == [1, 1] + [2] * 299


def test_states_and_timeline(tmp_path: Path) -> None:
    store = Store(tmp_path / "vigil.db")
    store.commit_detection([_f(0, "e1"), _f(60, "e2")], 2, None)
    (incident,) = store.incidents()
    iid = incident["id"]
    store.set_incident_state(iid, "acknowledged", "alice", "looking")
    with pytest.raises(IncidentError, match="cannot become acknowledged"):
        store.set_incident_state(iid, "acknowledged", "bob")
    store.commit_detection([_f(120, "e3")], 3, None)  # an acknowledged incident still takes findings
    store.set_incident_state(iid, "resolved", "alice")
    store.commit_detection([_f(180, "e4")], 4, None)  # a resolved one does not: a new incident opens
    full = store.incident(iid)
    assert full is not None and full["state"] == "resolved" and full["findings"] == 3
    kinds = [(e["kind"], e["actor"]) for e in full["timeline"]]
    assert kinds == [
        ("opened", "system"),
        ("finding", "rule:r.burst"),
        ("finding", "rule:r.burst"),
        ("acknowledged", "alice"),
        ("finding", "rule:r.burst"),
        ("resolved", "alice"),
    ]
    assert full["timeline"][3]["note"] == "looking"
    assert len(store.incidents(state="open")) == 1
    with pytest.raises(IncidentError, match="no incident"):
        store.set_incident_state("nope", "resolved", "x")


def test_incident_api(tmp_path: Path) -> None:
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"data_dir: {tmp_path / 'var'}\n", encoding="utf-8")
    store = Store(tmp_path / "vigil.db")
    store.commit_detection([_f(0, "e1")], 1, None)
    state = RunState(settings=load_settings(profile, env={}), store=store)
    state.local_token = "tok"
    iid = store.incidents()[0]["id"]

    async def calls() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=create_app(state))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            auth = {"Authorization": "Bearer tok"}
            return [
                await c.get("/v1/incidents"),
                await c.get(f"/v1/incidents/{iid}"),
                await c.get("/v1/incidents/unknown"),
                await c.post(f"/v1/incidents/{iid}/acknowledge"),
                await c.post(f"/v1/incidents/{iid}/acknowledge", headers=auth, json={"note": "on it"}),
                await c.post(f"/v1/incidents/{iid}/acknowledge", headers=auth),
                await c.post(f"/v1/incidents/{iid}/resolve", headers=auth),
                await c.get("/v1/incidents", params={"state": "resolved"}),
            ]

    listing, one, missing, unauth, ack, again, resolved, after = asyncio.run(calls())
    assert listing.status_code == 200 and listing.json()["count"] == 1
    assert one.json()["timeline"][0]["kind"] == "opened"
    assert missing.status_code == 404
    assert unauth.status_code == 401
    assert ack.json() == {"id": iid, "state": "acknowledged"}
    assert again.status_code == 409
    assert resolved.status_code == 200
    assert [i["id"] for i in after.json()["incidents"]] == [iid]


def test_retention_deletes_resolved_incidents_with_their_findings_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "vigil.db", incident_window_ms=HOUR * 1000)
    old = [_f(i, f"a{i}", rule="r.old") for i in range(5)]  # resolved, long ago: goes
    working = [_f(i, f"b{i}", rule="r.working") for i in range(3)]  # acknowledged, as old: stays
    still_open = [_f(0, "c0", rule="r.open")]  # open, as old: stays
    recent = [_f(10 * 365 * 86400, "d0", rule="r.recent")]  # resolved, but its finding is after the cut
    store.commit_detection([*old, *working, *still_open, *recent], 1, None)
    ids = {i["rule"]: i["id"] for i in store.incidents()}
    store.set_incident_state(ids["r.old"], "resolved", "alice")
    store.set_incident_state(ids["r.working"], "acknowledged", "bob")
    store.set_incident_state(ids["r.recent"], "resolved", "alice")
    cut = int(time.time() * 1000) + 1000  # after every state change above

    # one step with room for two findings: the incident stays until its last finding is gone
    with store._lock, store._db:
        assert incidents_mod.prune(store._db, cut, 2) == (0, 2)
    assert store.incident(ids["r.old"]) is not None and store.count_findings() == 8

    monkeypatch.setattr(sqlite_mod, "PRUNE_SLICE", 2)  # the rest in steps of two findings
    assert store.prune_incidents(cut) == (1, 3)
    assert store.incident(ids["r.old"]) is None
    assert (
        store._db.execute(
            "SELECT count(*) FROM incident_timeline WHERE incident = ?", (ids["r.old"],)
        ).fetchone()[0]
        == 0
    )
    assert sorted(f["rule"] for f in store.findings(limit=100)) == [
        "r.open", "r.recent", "r.working", "r.working", "r.working"
    ]  # fmt: skip
    assert {i["rule"] for i in store.incidents()} == {"r.working", "r.open", "r.recent"}
    assert store.prune_incidents(cut) == (0, 0)
    # old findings, resolved just now: the resolution is activity after an earlier cut, so it stays
    store.commit_detection([_f(0, "e0", rule="r.late")], 2, None)
    late = next(i["id"] for i in store.incidents() if i["rule"] == "r.late")
    store.set_incident_state(late, "resolved", "alice")
    assert store.prune_incidents(int(time.time() * 1000) - HOUR * 1000) == (0, 0)
    assert store.incident(late) is not None
    store.commit_detection([_f(0, "f0", rule="r.newer")], 3, None)  # (r.late's is no longer the newest)
    assert store.prune_incidents(int(time.time() * 1000) + 1000) == (1, 1)


def test_retention_keeps_the_newest_finding_so_rowid_cursors_never_go_back(tmp_path: Path) -> None:
    """The alert and response stages read findings after a rowid; SQLite gives a new row the largest rowid
    plus one, so if retention deleted the largest, the next finding could take a rowid they have passed."""
    store = Store(tmp_path / "vigil.db")
    store.commit_detection([_f(0, "a0", rule="r.a"), _f(0, "b0", rule="r.b")], 1, None)
    for incident in store.incidents():
        store.set_incident_state(incident["id"], "resolved", "alice")
    rowid = "SELECT max(rowid) FROM findings"
    cursor = store._db.execute(rowid).fetchone()[0]  # where the stages stand: they have read both
    assert store.prune_incidents(int(time.time() * 1000) + 1000) == (1, 1)  # r.a goes, r.b (newest) stays
    assert [f["rule"] for f in store.findings()] == ["r.b"]
    store.commit_detection([_f(60, "c0", rule="r.c")], 2, None)
    assert store._db.execute("SELECT rowid FROM findings WHERE rule = 'r.c'").fetchone()[0] > cursor


def test_retention_deletes_old_findings_of_no_incident(tmp_path: Path) -> None:
    """A store migrated from schema 1 keeps a null incident on findings no timeline named: retention takes
    them by their own time (oldest first, in slices, never the newest row), and leaves newer ones."""
    store = Store(tmp_path / "vigil.db")
    store.commit_detection([_f(i, f"a{i}", rule="r.old") for i in range(3)], 1, None)
    store.commit_detection([_f(10 * 365 * 86400, "n0", rule="r.new")], 2, None)
    store.commit_detection([_f(0, "z0", rule="r.last")], 3, None)
    with store._lock, store._db:  # as the migration leaves findings that no timeline names
        store._db.execute("UPDATE findings SET incident = NULL WHERE rule != 'r.last'")
        store._db.execute("DELETE FROM incident_timeline")
        store._db.execute("DELETE FROM incidents")
    with store._lock, store._db:
        assert incidents_mod.prune(store._db, int(time.time() * 1000), 2) == (0, 2)
    assert store.prune_incidents(int(time.time() * 1000)) == (0, 1)
    assert sorted(f["rule"] for f in store.findings(limit=100)) == ["r.last", "r.new"]
    # the newest row is kept even when it is an old orphan
    with store._lock, store._db:
        store._db.execute("UPDATE findings SET incident = NULL")
    assert store.prune_incidents(int(time.time() * 1000)) == (0, 0)
    assert sorted(f["rule"] for f in store.findings(limit=100)) == ["r.last", "r.new"]
