"""Storm control: many matches become a few notifications that say how many they stand for.

Alertmanager-style grouping, with ``group_wait`` 0 because a page must not wait:

* **Per group** — alerts with the same ``(rule, dedup_key, kind)``. The first goes out at once. Later ones
  within ``window`` seconds are held and folded; when the window closes, *one* update goes out with the
  latest details, ``count`` = matches since the group opened and ``details["grouping"]`` saying how many
  are new since the last notification. A group that keeps matching sends one update per window; a group
  quiet for a whole window is forgotten, so its next match goes out at once again.
* **Per rule** — a storm spreads over many groups (one per source IP, per blob). After ``max_groups``
  distinct new groups of one rule within a rule window, further new groups of that rule are folded into one
  *storm summary* per window (``dedup_key(rule, "vigil:storm")``: one page that updates): matches, distinct
  groups, a sample of their group keys. While a window sees more than ``max_groups`` new groups, the next
  one starts in storm mode too, so a storm lasting an hour is one summary a minute, not a burst a minute.

  Bound: per rule and window, at most ``max_groups`` first alerts + ``max_groups`` group updates + one
  summary, so ``2 * max_groups + 1`` notifications per sink (9 with the default 4; reliability D5 asks
  5,000 matches in a minute to become at most 10). Nothing is dropped silently: every match is in a first
  alert, an update's ``new`` count or a summary's ``matches`` (falco#1333 dropped without a trace).
* **Stale alerts** — an alert whose ``time`` (when the finding happened) is more than ``stale_after``
  seconds old when offered is a backlog: the daemon was down or far behind. Replaying them one by one is the
  elastalert#2711 flood (about 200 mails after a restart), so they are folded into one summary per rule
  (``dedup_key(rule, "vigil:stale")``) sent when its window closes. For this to work the caller must set
  :attr:`Alert.time` to the finding's time, not to the time the alert was built.

Acknowledge and resolve are never held (people and remediations act on them), only repeats within the
window are dropped. A resolve also discards the held trigger update of its dedup key: flushed after the
resolve, it would re-open the page that was just resolved. Callers must therefore pass resolves through
:meth:`Grouper.offer` too, not around it.

The class is pure logic with an injectable clock: :meth:`Grouper.offer` returns what to send now,
:meth:`Grouper.flush` what became due (call it every second or at :meth:`Grouper.next_flush`). It is not
thread-safe; the alert stage owns one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Final

from vigil.alerts.model import Alert, AlertKind, dedup_key

#: severities in rising order (a summary takes the highest it folded)
SEVERITIES: Final = ("informational", "low", "medium", "high", "critical")
#: distinct groups remembered per storm or backlog summary (the count goes on; the set stops growing)
MAX_TRACKED: Final = 10_000
_PASS: Final = frozenset({AlertKind.ACKNOWLEDGE, AlertKind.RESOLVE})

GroupKey = tuple[str, str, AlertKind]


def _higher(a: str, b: str) -> str:
    rank = {s: i for i, s in enumerate(SEVERITIES)}
    return a if rank.get(a, 2) >= rank.get(b, 2) else b


@dataclass(slots=True)
class _Group:
    start: float
    first_seen: float
    latest: Alert
    count: int = 1
    pending: int = 0


@dataclass(slots=True)
class _Fold:
    """Alerts of one rule folded into a summary (a storm window or a backlog)."""

    start: float
    latest: Alert
    storm: bool = False
    individual: set[str] = field(default_factory=set)
    matches: int = 0
    groups: set[str] = field(default_factory=set)
    sample: list[dict[str, str]] = field(default_factory=list)
    severity: str = "informational"
    triggers: bool = False
    oldest: float = float("inf")
    newest: float = float("-inf")

    def add(self, alert: Alert, sample: int) -> None:
        self.matches += 1
        self.latest = alert
        self.severity = _higher(alert.severity, self.severity)
        self.triggers = self.triggers or alert.kind is AlertKind.TRIGGER
        self.oldest, self.newest = min(self.oldest, alert.time), max(self.newest, alert.time)
        if alert.dedup_key not in self.groups and len(self.groups) < MAX_TRACKED:
            self.groups.add(alert.dedup_key)
            if len(self.sample) < sample:
                self.sample.append(dict(alert.group) or {"dedup_key": alert.dedup_key})


class Grouper:
    """Folds alerts per group and per rule (see the module docstring)."""

    def __init__(
        self,
        window: float = 60.0,
        *,
        max_groups: int = 4,
        stale_after: float = 600.0,
        sample: int = 10,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.window = window
        self.max_groups = max(1, max_groups)
        self.stale_after = stale_after
        self.sample = sample
        self._clock = clock
        self._groups: dict[GroupKey, _Group] = {}
        self._rules: dict[str, _Fold] = {}
        self._stale: dict[str, _Fold] = {}
        self._passed: dict[GroupKey, float] = {}
        self.counters = {
            "offered": 0, "immediate": 0, "held": 0, "updates": 0, "storm_folded": 0, "storm_summaries": 0,
            "stale_folded": 0, "stale_summaries": 0, "duplicates": 0, "superseded": 0,
        }  # fmt: skip

    def __repr__(self) -> str:
        return f"Grouper(window={self.window}, groups={len(self._groups)}, rules={len(self._rules)})"

    def offer(self, alert: Alert) -> list[Alert]:
        """What to send now: ``alert`` itself when it opens a group, nothing when it is held or folded, and
        any held update whose window closed meanwhile (:meth:`flush`)."""
        now = self._clock()
        out = self.flush(now)
        self.counters["offered"] += 1
        key: GroupKey = (alert.rule, alert.dedup_key, alert.kind)
        if alert.kind in _PASS:
            return out + self._pass(key, alert, now)
        if now - alert.time > self.stale_after:
            fold = self._stale.setdefault(alert.rule, _Fold(start=now, latest=alert))
            fold.add(alert, self.sample)
            self.counters["stale_folded"] += 1
            return out
        group = self._groups.get(key)
        if group is not None:
            group.count += 1
            group.pending += 1
            group.latest = alert
            self.counters["held"] += 1
            return out
        rule = self._rules.setdefault(alert.rule, _Fold(start=now, latest=alert))
        if rule.storm or len(rule.individual) >= self.max_groups:
            rule.storm = True
            rule.add(alert, self.sample)
            self.counters["storm_folded"] += 1
            return out
        rule.individual.add(alert.dedup_key)
        self._groups[key] = _Group(start=now, first_seen=now, latest=alert)
        self.counters["immediate"] += 1
        return [*out, alert]

    def snapshot(self) -> tuple[Any, ...]:
        """The grouping state, for :meth:`restore` when what was offered could not be stored: the stage
        offers alerts before the outbox commit, and after a failed commit it offers them again, which must
        not find their groups already open (the first alert would then wait a window as an update)."""
        folds = (self._rules, self._stale)
        copies = [
            {k: replace(f, individual=set(f.individual), groups=set(f.groups)) for k, f in d.items()}
            for d in folds
        ]
        groups = {k: replace(g) for k, g in self._groups.items()}
        return groups, *copies, dict(self._passed), dict(self.counters)

    def restore(self, state: tuple[Any, ...]) -> None:
        """Go back to a :meth:`snapshot`."""
        self._groups, self._rules, self._stale, self._passed, self.counters = state

    def _pass(self, key: GroupKey, alert: Alert, now: float) -> list[Alert]:
        for kind in (AlertKind.TRIGGER, AlertKind.NOTICE):
            held = self._groups.pop((alert.rule, alert.dedup_key, kind), None)
            if held is not None and held.pending:
                self.counters["superseded"] += held.pending
        if key in self._passed:
            self.counters["duplicates"] += 1
            return []
        self._passed[key] = now
        self.counters["immediate"] += 1
        return [alert]

    def flush(self, now: float | None = None) -> list[Alert]:
        """Held updates, storm summaries and backlog summaries whose window closed by ``now``."""
        now = self._clock() if now is None else now
        out: list[Alert] = []
        for key, group in list(self._groups.items()):
            if now < group.start + self.window:
                continue
            if group.pending:
                out.append(self._update(group, now))
                group.start, group.pending = now, 0
                self.counters["updates"] += 1
            else:
                del self._groups[key]
        for name, rule in list(self._rules.items()):
            if now < rule.start + self.window:
                continue
            del self._rules[name]
            if rule.matches:
                out.append(self._storm(name, rule, now))
                self.counters["storm_summaries"] += 1
            if len(rule.individual) + len(rule.groups) > self.max_groups:
                self._rules[name] = _Fold(start=now, latest=rule.latest, storm=True)  # the storm goes on
        for name, fold in list(self._stale.items()):
            if now >= fold.start + self.window:
                del self._stale[name]
                out.append(self._backlog(name, fold))
                self.counters["stale_summaries"] += 1
        self._passed = {k: t for k, t in self._passed.items() if now < t + self.window}
        return out

    def next_flush(self) -> float | None:
        """The earliest time :meth:`flush` may have something to do (None: nothing is held)."""
        starts = [g.start for g in self._groups.values()] + [f.start for f in self._rules.values()]
        starts += [f.start for f in self._stale.values()]
        return min(starts) + self.window if starts else None

    # -- what is sent ------------------------------------------------------------------------------------

    def _update(self, group: _Group, now: float) -> Alert:
        grouping = {
            "matches": group.count, "new": group.pending, "first_seen": group.first_seen,
            "window_seconds": self.window, "flushed_at": now,
        }  # fmt: skip
        details: dict[str, Any] = {**group.latest.details, "grouping": grouping}
        return replace(group.latest, count=group.count, details=details)

    def _storm(self, rule: str, fold: _Fold, now: float) -> Alert:
        groups = f"{len(fold.groups)}{'+' if len(fold.groups) >= MAX_TRACKED else ''}"
        summary = (
            f"Alert storm: {fold.matches} matches of {rule} in {groups} further groups within "
            f"{self.window:.0f}s, folded into this summary (the first {self.max_groups} groups went alone)"
        )
        storm = {
            "matches": fold.matches, "groups": len(fold.groups), "sample": fold.sample,
            "window_start": fold.start, "window_end": now, "window_seconds": self.window,
        }  # fmt: skip
        return self._summary(rule, fold, "vigil:storm", f"Alert storm: {fold.latest.title}", summary, storm)

    def _backlog(self, rule: str, fold: _Fold) -> Alert:
        summary = (
            f"Backlog: {fold.matches} alerts of {rule} in {len(fold.groups)} groups are older than "
            f"{self.stale_after:.0f}s (Vigil was down or behind); summarised here instead of replayed"
        )
        stale = {
            "matches": fold.matches, "groups": len(fold.groups), "sample": fold.sample,
            "oldest": fold.oldest, "newest": fold.newest, "stale_after_seconds": self.stale_after,
        }  # fmt: skip
        return self._summary(rule, fold, "vigil:stale", f"Backlog: {fold.latest.title}", summary, stale)

    def _summary(
        self, rule: str, fold: _Fold, what: str, title: str, summary: str, info: dict[str, Any]
    ) -> Alert:
        return Alert(
            kind=AlertKind.TRIGGER if fold.triggers else AlertKind.NOTICE,
            dedup_key=dedup_key(rule, what),
            rule=rule,
            title=title,
            severity=fold.severity,
            summary=summary,
            time=fold.latest.time,
            group={"summary": what.split(":")[1]},
            count=fold.matches,
            details={what.split(":")[1]: info, "latest": fold.latest.details},
            links={k: v for k, v in fold.latest.links.items() if k != "incident"},
        )
