"""Storm control on a fake clock: the first alert at once, one update per window with counts, a rule storm
folded into one summary, 5,000 matches in a minute as at most 10 notifications per sink (also end to end,
through the dispatcher to loopback sinks), a restart backlog summarised, resolves never held."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from tests.alerts.fakes import ROUTING_KEY, FakePagerDuty, FakeTeams
from tests.alerts.test_worker import FakeClock, drive, states
from vigil.alerts.dispatcher import AlertDispatcher
from vigil.alerts.grouping import Grouper
from vigil.alerts.model import Alert, AlertKind, Sink, dedup_key
from vigil.alerts.outbox import Outbox
from vigil.alerts.pagerduty import PagerDutySink
from vigil.alerts.teams import TeamsSink

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def finding(
    group: str,
    *,
    rule: str = "t.burst",
    kind: AlertKind = AlertKind.TRIGGER,
    when: float | None = None,
    n: int = 0,
) -> Alert:
    return Alert(
        kind=kind, dedup_key=dedup_key(rule, group), rule=rule, title=f"{rule} on {group}", severity="high",
        summary=f"match {n}", time=T0 if when is None else when, group={"ip": group}, details={"n": n},
    )  # fmt: skip


def matches_in(out: list[Alert]) -> int:
    """Matches a list of notifications accounts for: first alerts, updates' new ones, summaries' matches."""
    total = 0
    for a in out:
        if "grouping" in a.details:
            total += a.details["grouping"]["new"]
        elif "storm" in a.details or "stale" in a.details:
            total += a.count
        else:
            total += 1
    return total


def test_first_at_once_then_one_update_per_window() -> None:
    clock = Clock()
    g = Grouper(window=60.0, clock=clock)
    first = finding("10.0.0.1", n=0)
    assert g.offer(first) == [first]  # a page must not wait
    for n in range(1, 6):
        clock.now += 5
        assert g.offer(finding("10.0.0.1", n=n)) == []
    assert g.flush(T0 + 59.9) == []
    assert g.next_flush() == T0 + 60.0
    (update,) = g.flush(T0 + 60.0)
    assert update.dedup_key == first.dedup_key and update.count == 6
    assert update.details["n"] == 5 and update.details["grouping"]["new"] == 5  # the latest details
    clock.now = T0 + 70
    assert g.offer(finding("10.0.0.1", n=6)) == []  # the group lives on: held for the next window
    (second,) = g.flush(T0 + 120.0)
    assert second.count == 7 and second.details["grouping"]["new"] == 1
    assert g.flush(T0 + 180.0) == []  # a quiet window: the group is forgotten ...
    clock.now = T0 + 181
    again = finding("10.0.0.1", n=7)
    assert g.offer(again) == [again]  # ... and its next match goes out at once


def test_groups_are_rule_dedup_key_and_kind() -> None:
    clock = Clock()
    g = Grouper(clock=clock)
    a, b = finding("a"), finding("b")
    other_rule = finding("a", rule="t.other")
    notice = finding("a", kind=AlertKind.NOTICE)
    assert [g.offer(x) for x in (a, b, other_rule, notice)] == [[a], [b], [other_rule], [notice]]
    assert g.offer(finding("a")) == []


def test_an_expired_window_is_flushed_by_the_next_offer() -> None:
    clock = Clock()
    g = Grouper(window=10.0, clock=clock)
    g.offer(finding("a", n=0))
    g.offer(finding("a", n=1))
    clock.now += 11
    other = finding("b")
    out = g.offer(other)
    assert [x.details.get("grouping", {}).get("new") for x in out] == [1, None] and out[1] == other


@pytest.mark.parametrize("spread", ["one group", "50 groups", "5000 groups", "random"])
def test_5000_matches_in_a_minute_are_at_most_10_notifications(spread: str) -> None:
    clock = Clock()
    g = Grouper(window=60.0, clock=clock)
    rng = random.Random(5)
    pick = {
        "one group": lambda i: "10.0.0.1",
        "50 groups": lambda i: f"10.0.0.{i % 50}",
        "5000 groups": lambda i: f"10.0.{i // 250}.{i % 250}",
        "random": lambda i: f"10.0.0.{rng.randrange(300)}",
    }[spread]
    out: list[Alert] = []
    for i in range(5000):
        clock.now = T0 + i * 59.99 / 5000
        out += g.offer(finding(pick(i), n=i))
    for later in (60.0, 120.0, 180.0, 240.0):
        out += g.flush(T0 + later)
    assert 1 <= len(out) <= 10, [a.title for a in out]
    assert matches_in(out) == 5000  # every match is accounted for: never a silent drop
    storms = [a for a in out if "storm" in a.details]
    if spread != "one group":
        (storm,) = storms
        assert storm.dedup_key == dedup_key("t.burst", "vigil:storm") and storm.kind is AlertKind.TRIGGER
        assert storm.details["storm"]["groups"] >= 1 and len(storm.details["storm"]["sample"]) <= 10
        assert storm.count == storm.details["storm"]["matches"] and str(storm.count) in storm.summary


def test_a_lasting_storm_is_one_summary_per_window() -> None:
    clock = Clock()
    g = Grouper(window=60.0, max_groups=4, clock=clock)
    out: list[Alert] = []
    for i in range(600 * 10):  # ten minutes, ten distinct groups a second
        clock.now = T0 + i / 10
        out += g.offer(finding(f"host-{i}", n=i))
    out += g.flush(T0 + 700) + g.flush(T0 + 800)
    storms = [a for a in out if "storm" in a.details]
    assert len(out) - len(storms) == 4  # only the first window's first groups went alone
    assert 9 <= len(storms) <= 11  # one per window
    assert len({a.dedup_key for a in storms}) == 1  # one page, updated
    assert matches_in(out) == 6000


def test_a_restart_backlog_is_summarised_per_rule() -> None:
    clock = Clock()
    g = Grouper(window=60.0, stale_after=600.0, clock=clock)
    out: list[Alert] = []
    for i in range(200):  # twelve hours of downtime: findings from long ago, replayed at once
        rule = "t.burst" if i % 2 else "t.delete"
        out += g.offer(finding(f"h{i % 7}", rule=rule, when=T0 - 12 * 3600 + i * 60, n=i))
    fresh = finding("new-host", when=T0)
    out += g.offer(fresh)
    assert out == [fresh]  # nothing stale goes out one by one
    summaries = g.flush(T0 + 60)
    assert sorted(a.rule for a in summaries) == ["t.burst", "t.delete"]
    for summary in summaries:
        stale = summary.details["stale"]
        assert summary.count == stale["matches"] == 100 and stale["groups"] == 7
        assert stale["oldest"] < stale["newest"] < T0 - 600
        assert (
            summary.dedup_key == dedup_key(summary.rule, "vigil:stale")
            and "older than 600s" in summary.summary
        )


def test_resolve_is_never_held_and_discards_the_held_update() -> None:
    clock = Clock()
    g = Grouper(clock=clock)
    g.offer(finding("a", n=0))
    g.offer(finding("a", n=1))  # held
    resolve = finding("a", kind=AlertKind.RESOLVE)
    assert g.offer(resolve) == [resolve]
    assert g.offer(resolve) == []  # the same resolve again within the window
    assert g.flush(T0 + 60) == []  # the held trigger would re-open the page: gone
    assert g.counters["superseded"] == 1 and g.counters["duplicates"] == 1
    clock.now = T0 + 61
    ack = finding("a", kind=AlertKind.ACKNOWLEDGE)
    assert g.offer(ack) == [ack]
    assert g.offer(resolve) == [resolve]  # a new window


def test_summaries_take_the_highest_severity_and_notice_kind() -> None:
    clock = Clock()
    g = Grouper(window=60.0, max_groups=1, clock=clock)
    g.offer(replace(finding("a", kind=AlertKind.NOTICE), severity="low"))
    g.offer(replace(finding("b", kind=AlertKind.NOTICE), severity="critical"))
    g.offer(replace(finding("c", kind=AlertKind.NOTICE), severity="medium"))
    (storm,) = g.flush(T0 + 60)
    assert storm.kind is AlertKind.NOTICE and storm.severity == "critical" and storm.count == 2


def test_a_storm_end_to_end_is_at_most_10_requests_per_sink(tmp_path: Path) -> None:
    """5,000 matches in a minute → grouper → outbox → PagerDuty and Teams workers → the fakes' ledgers."""
    clock = FakeClock(T0)
    grouper = Grouper(window=60.0, clock=clock)
    outbox = Outbox(tmp_path / "vigil.db", clock=clock)

    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            with FakePagerDuty(clock=clock) as pd, FakeTeams(clock=clock) as teams:
                sinks: dict[str, Sink] = {
                    "pd": PagerDutySink("pd", {"routing_key": ROUTING_KEY, "url": pd.enqueue_url}),
                    "teams": TeamsSink("teams", {"url": teams.webhook_url}),
                }
                d = AlertDispatcher(outbox, sinks, client, clock=clock, sleep=clock.sleep)
                for i in range(5000):
                    clock.now = T0 + i * 59.99 / 5000
                    for out in grouper.offer(finding(f"10.0.{i % 9}.{i % 13}", n=i)):
                        await d.submit(list(sinks), out)
                for out in grouper.flush(T0 + 60) + grouper.flush(T0 + 120):
                    await d.submit(list(sinks), out)
                total = len(outbox.list(limit=1000)) // 2
                await drive(
                    d, lambda: states(outbox, "pd")["sent"] == states(outbox, "teams")["sent"] == total
                )
                assert 1 <= total <= 10
                assert len(pd.received()) == len(teams.received()) == len(teams.posted) == total
                storm = dedup_key("t.burst", "vigil:storm")
                (page,) = pd.incidents_for(storm)  # one storm page stating how many matches it stands for
                assert page.events[-1]["payload"]["custom_details"]["count"] > 4000
                assert len(pd.incidents) <= 1 + grouper.max_groups

    asyncio.run(scenario())
