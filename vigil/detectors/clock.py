"""Event time for the stateful detectors: the watermark, allowed lateness, and timestamps not to trust.

Windows, sequences and flatlines run on the events' own ``time``, not on arrival, so a replay of last week
gives last week's findings and a backlog drained after an outage is judged by when things happened. The
*watermark* is the newest event time seen minus the allowed lateness: time up to the watermark is taken as
complete, so timers (a flatline, an ``absent`` step, an ``at_most`` window) fire only once the watermark
has passed their due time.

Timestamps are checked before they are used:

* an event older than the watermark is **late**: it is counted (``late``) and applied at the watermark time,
  so it still counts in the windows that are open but cannot reopen closed ones;
* a time more than ``max_future`` ahead of now is **clamped** to now and counted (``future``), so one bad
  clock cannot push the watermark into the future and expire every window;
* a time before 2000-01-01 (an unset clock, the 1970 epoch) is **clamped** to the newest time seen (or now)
  and counted (``ancient``).

"Now" comes from a wall-clock reading taken once at start-up plus the monotonic clock's progress since, so
a wall-clock jump (NTP step, an operator's ``date -s``) moves neither windows nor timers. In ``live`` mode
(the daemon) the watermark also follows now minus the lateness, so a flatline fires even when every source
has gone silent; in replay it follows the events only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from vigil.events.fields import to_ms

__all__ = ["FLOOR_MS", "NEVER", "EventClock", "from_ms", "to_ms"]

#: 2000-01-01T00:00:00Z in milliseconds: earlier event times are taken as unset clocks
FLOOR_MS: Final = 946_684_800_000
NEVER: Final = -(1 << 62)


def from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


class EventClock:
    """The watermark and the checks on incoming event times (see module docstring)."""

    __slots__ = (
        "_horizon",
        "_mono",
        "_mono_anchor",
        "_wall_anchor_ms",
        "ancient",
        "future",
        "late",
        "lateness_ms",
        "live",
        "max_future_ms",
        "max_seen",
        "watermark",
    )

    def __init__(
        self,
        lateness: timedelta = timedelta(minutes=5),
        *,
        max_future: timedelta = timedelta(minutes=10),
        live: bool = False,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.lateness_ms = int(lateness.total_seconds() * 1000)
        self.max_future_ms = int(max_future.total_seconds() * 1000)
        self.live = live
        self._mono = mono
        self._mono_anchor = mono()
        self._wall_anchor_ms = int(wall() * 1000)
        self._horizon = NEVER
        #: newest admitted event time (ms), and the watermark derived from it
        self.max_seen = NEVER
        self.watermark = NEVER
        self.late = 0
        self.future = 0
        self.ancient = 0
        if live:
            self.tick()

    def now_ms(self) -> int:
        """Wall time at start-up advanced by the monotonic clock: immune to wall-clock jumps."""
        return self._wall_anchor_ms + int((self._mono() - self._mono_anchor) * 1000)

    def admit(self, t: int) -> int:
        """The time (ms) to use for an event stamped ``t``, after the checks; advances the watermark."""
        if t > self._horizon:
            self._horizon = self.now_ms() + self.max_future_ms
            if t > self._horizon:
                self.future += 1
                t = self._horizon - self.max_future_ms
        if t < FLOOR_MS:
            self.ancient += 1
            t = self.max_seen if self.max_seen != NEVER else self.now_ms()
        if t < self.watermark:
            self.late += 1
            t = self.watermark
        if t > self.max_seen:
            self.max_seen = t
            self.watermark = max(self.watermark, t - self.lateness_ms)
        return t

    def tick(self) -> int:
        """Live mode: let the watermark follow now minus the lateness (timers fire in silence)."""
        if self.live:
            self.watermark = max(self.watermark, self.now_ms() - self.lateness_ms)
        return self.watermark

    def advance_to(self, t: int) -> int:
        """Declare event time complete through ``t`` inclusive (end of a test case, ``--advance``): the
        watermark moves just past it, so a timer due at exactly ``t`` fires (timers fire once the watermark
        is later than their due time; an event stamped at the watermark itself is not late)."""
        self.max_seen = max(self.max_seen, t)
        self.watermark = max(self.watermark, t + 1)
        return self.watermark

    def state(self) -> dict[str, int]:
        return {"max_seen": self.max_seen, "watermark": self.watermark}

    def restore(self, state: dict[str, int], *, exact: bool = False) -> None:
        """Take a saved clock: never backwards, or (``exact``, a recovery that re-processes events) exactly
        as saved, so the events meet the watermark they met before."""
        max_seen, watermark = int(state.get("max_seen", NEVER)), int(state.get("watermark", NEVER))
        self.max_seen = max_seen if exact else max(self.max_seen, max_seen)
        self.watermark = watermark if exact else max(self.watermark, watermark)

    def counters(self) -> dict[str, int]:
        return {"late": self.late, "future_clamped": self.future, "ancient_clamped": self.ancient}
