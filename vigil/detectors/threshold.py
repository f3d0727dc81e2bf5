"""``threshold`` rules: count, distinct values or sum per group over a sliding window.

Window semantics (documented for analysts in docs/rules.md). Time is cut into buckets of one window length,
aligned to the epoch. Each group keeps two buckets: the current one and the one before it. At event time
``t`` in the current bucket, ``f`` of the way through it, the sliding aggregate over ``(t - window, t]`` is
estimated as::

    estimate = current + previous * (1 - f)

This is the two-bucket approximation (as in rate limiters): the current bucket is exact, and the previous
one is assumed spread evenly. The true value lies between ``current`` and ``current + previous``; the
estimate is at most ``previous * (1 - f)`` above the truth and at most ``previous * f`` below it, and it is
exact whenever the previous bucket is empty (a burst that starts from quiet is counted exactly). In exchange
a group costs one packed int (count), 24 bytes (sum) or 16 bytes plus 8 per kept value (distinct), whatever
the event rate — an exact sliding window would keep every timestamp.

Firing. With ``at_least`` only, a finding fires when an event takes the estimate from below the bound to at
or above it (once per crossing; ``suppress`` spaces findings further). With ``at_most``, windows are judged
whole: when the watermark passes the end of a bucket in which the group had events, the bucket's exact
aggregate is checked against ``[at_least, at_most]`` — "at most 2 heartbeats in 5 minutes". A bucket is also
judged when the group's next event falls in a later bucket, whichever comes first; an event arriving after
its bucket was judged counts in the next one. (A group with no events at all is a ``flatline``.)

Counts saturate at 2**24 - 1 per bucket; ``distinct`` keeps at most max(at_least, at_most + 1) value hashes
per bucket (8-byte BLAKE2b), enough to decide the bound; ``sum`` adds numbers and counts anything else in
``bad_values``. An event so late that it predates both buckets of its group is counted in ``stale``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
from collections.abc import Callable
from typing import Final

from vigil.detectors.clock import from_ms
from vigil.detectors.finding import Finding, field_getter, finding, group_from_key, key_function
from vigil.detectors.state import SHARDS, KeyedState, Packed
from vigil.events.model import Event
from vigil.rules.model import Rule

M24: Final = (1 << 24) - 1
NO_TIMER: Final = 1 << 62
_SUM: Final = struct.Struct("<qdd")
_DIST: Final = struct.Struct("<qII")
_SHARD_MASK: Final = SHARDS - 1


def value_hash(value: object) -> bytes:
    """8-byte stable hash of a value (stable across restarts, so snapshots stay valid)."""
    return _text_hash(value if type(value) is str else repr(value))


@functools.lru_cache(maxsize=65536)
def _text_hash(text: str) -> bytes:
    """Memoised (LRU, evicted one entry at a time): several distinct rules usually count the same field
    of an event, and busy values repeat."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()


def _has(blob: bytes, h: bytes) -> bool:
    i = blob.find(h)
    while i >= 0:
        if i % 8 == 0:
            return True
        i = blob.find(h, i + 1)
    return False


class ThresholdDetector:
    """One threshold rule's windows (see module docstring)."""

    def __init__(self, rule: Rule, limit: int) -> None:
        spec = rule.threshold
        assert spec is not None
        self.rule = rule
        self.fields = spec.group_by
        self.key_of = key_function(spec.group_by)
        self.w = max(1, int(spec.window.total_seconds() * 1000))
        self.low = spec.at_least
        self.high = spec.at_most
        self.state = KeyedState(limit)
        self.stale = 0
        self.bad_values = 0
        self.cap = int(max(self.low or 0, (self.high or 0) + 1)) if spec.measure == "distinct" else 0
        self._raw_get: Callable[[Event], object] | None = None
        if spec.field:
            self._raw_get = field_getter(spec.field)
        #: earliest watermark at which due() has work (at_most rules judge closed buckets)
        self.next_due = NO_TIMER
        self.measure = spec.measure
        self.on_event: Callable[[Event, int, list[Finding]], None] = {
            "count": self._count,
            "sum": self._sum,
            "distinct": self._distinct,
        }[spec.measure]

    # -- firing --------------------------------------------------------------------------------------

    def _crossed(self, before: float, after: float) -> bool:
        low = self.low
        return self.high is None and low is not None and before < low <= after

    def _judge(self, key: str, bucket: int, agg: float, out: list[Finding]) -> None:
        """``at_most`` rules: a closed bucket's exact aggregate against [at_least, at_most]."""
        low = self.low if self.low is not None else -math.inf
        if agg and low <= agg <= (self.high if self.high is not None else math.inf):
            end = from_ms((bucket + 1) * self.w)
            out.append(finding(self.rule, (), end, group_from_key(self.fields, key), agg))

    def _arm(self, bucket: int) -> None:
        if self.high is not None:
            self.next_due = min(self.next_due, (bucket + 1) * self.w)

    # -- count ---------------------------------------------------------------------------------------

    def _count(self, event: Event, t: int, out: list[Finding]) -> None:
        key = self.key_of(event)
        w = self.w
        b = t // w
        shard = self.state.shard(key)
        st = shard.get(key)
        if st is None:
            if not self.state.admit(shard):
                return
            kb, cur, prev = b, 0, 0
        else:
            assert type(st) is int
            kb, cur, prev = st >> 48, (st >> 24) & M24, st & M24
            if b > kb:
                if self.high is not None:
                    self._judge(key, kb, cur, out)
                prev = cur if b == kb + 1 else 0
                cur, kb = 0, b
            elif b < kb and self.high is None:  # (at_most: a judged bucket's late event counts in kb)
                if b < kb - 1:
                    self.stale += 1
                    return
                total = cur + prev  # late into the previous bucket: all of it is still in the window
                shard[key] = (kb << 48) | (cur << 24) | min(prev + 1, M24)
                if self._crossed(total, total + 1):
                    out.append(
                        finding(
                            self.rule, (event.id,), event.time, group_from_key(self.fields, key), total + 1
                        )
                    )
                return
        before: float = cur + prev * (1 - (t - kb * w) / w) if prev else cur
        shard[key] = (kb << 48) | (min(cur + 1, M24) << 24) | prev
        if self.high is not None:
            self._arm(kb)
        elif self._crossed(before, before + 1):
            out.append(
                finding(self.rule, (event.id,), event.time, group_from_key(self.fields, key), before + 1)
            )

    # -- sum -----------------------------------------------------------------------------------------

    def _sum(self, event: Event, t: int, out: list[Finding]) -> None:
        assert self._raw_get is not None
        v = self._raw_get(event)
        if v is None:
            return
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            self.bad_values += 1
            return
        key = self.key_of(event)
        w = self.w
        b = t // w
        st = self.state.get(key)
        if st is None:
            kb, cur, prev = b, 0.0, 0.0
        else:
            assert type(st) is bytes
            kb, cur, prev = _SUM.unpack(st)
            if b > kb:
                if self.high is not None:
                    self._judge(key, kb, cur, out)
                prev = cur if b == kb + 1 else 0.0
                cur, kb = 0.0, b
            elif b < kb - 1 and self.high is None:
                self.stale += 1
                return
        if b < kb and self.high is None:  # late into the previous bucket
            before = cur + prev
            prev += v
        else:
            before = cur + prev * (1 - (t - kb * w) / w)
            cur += v
        if not self.state.put(key, _SUM.pack(kb, cur, prev)):
            return
        self._arm(kb)
        if self._crossed(before, before + v):
            out.append(
                finding(self.rule, (event.id,), event.time, group_from_key(self.fields, key), before + v)
            )

    # -- distinct ------------------------------------------------------------------------------------

    def _distinct(self, event: Event, t: int, out: list[Finding]) -> None:
        # Hot path (a share of every event): the state's shard is used directly and the helpers
        # (put, _arm, _crossed, _has of an empty bucket) are inlined; the logic is that of the other forms.
        assert self._raw_get is not None
        v = self._raw_get(event)
        if v is None:
            return
        h = _text_hash(v if type(v) is str else repr(v))
        key = self.key_of(event)
        w = self.w
        b = t // w
        high = self.high
        shard = self.state.shards[hash(key) & _SHARD_MASK]
        st = shard.get(key)
        if st is None:
            kb, cur, prev, only = b, b"", b"", 0
        else:
            assert type(st) is bytes
            kb, ncur, only = _DIST.unpack_from(st)
            split = 16 + 8 * ncur
            cur, prev = st[16:split], st[split:]
            if b > kb:
                if high is not None:
                    self._judge(key, kb, ncur, out)
                prev = cur if b == kb + 1 else b""
                cur, kb, only = b"", b, len(prev) // 8 if b == kb + 1 else 0
            elif b < kb - 1 and high is None:
                self.stale += 1
                return
        if st is None:
            state = self.state
            if state.size >= state.limit:  # a new key past the limit (as KeyedState.put)
                state.limited += 1
                return
        if (
            b < kb and high is None
        ):  # late into the previous bucket: kept there, and all of it is in the window
            if (prev and _has(prev, h)) or (cur and _has(cur, h)):
                return
            late_before = len(cur) // 8 + only
            if len(prev) // 8 < self.cap:
                prev += h
                only += 1
            if st is None:
                self.state.size += 1
            shard[key] = _DIST.pack(kb, len(cur) // 8, only) + cur + prev
            low = self.low
            if low is not None and late_before < low <= late_before + 1:
                group = group_from_key(self.fields, key)
                out.append(finding(self.rule, (event.id,), event.time, group, late_before + 1))
            return
        if cur and _has(cur, h):
            return
        ncur = len(cur) // 8
        frac = 1 - (t - kb * w) / w
        before: float = ncur + only * frac
        if ncur < self.cap:
            if prev and _has(prev, h):
                only -= 1
            cur += h
            ncur += 1
        after = ncur + only * frac
        if st is None:
            self.state.size += 1
        shard[key] = _DIST.pack(kb, ncur, only) + cur + prev
        if high is not None:
            self.next_due = min(self.next_due, (kb + 1) * w)
        else:
            low = self.low
            if low is not None and before < low <= after:
                out.append(
                    finding(self.rule, (event.id,), event.time, group_from_key(self.fields, key), after)
                )

    # -- timers and expiry ---------------------------------------------------------------------------

    def _unpack(self, st: Packed) -> tuple[int, float]:
        """(bucket, aggregate of that bucket) of a state value."""
        if type(st) is int:
            return st >> 48, (st >> 24) & M24
        assert type(st) is bytes
        if self.measure == "sum":
            kb, cur, _ = _SUM.unpack(st)
            return kb, cur
        kb, ncur, _ = _DIST.unpack_from(st)
        return kb, ncur

    def due(self, watermark: int, out: list[Finding]) -> None:
        """``at_most`` rules: judge every bucket that closed by ``watermark`` (and drop it)."""
        if watermark < self.next_due:
            return
        open_bucket = watermark // self.w
        self.next_due = NO_TIMER
        closed: list[tuple[str, int, float]] = []
        for key, st in self.state.items():
            kb, agg = self._unpack(st)
            if kb < open_bucket:
                closed.append((key, kb, agg))
            else:
                self.next_due = min(self.next_due, (kb + 1) * self.w)
        for key, kb, agg in closed:
            self.state.pop(key)
            self._judge(key, kb, agg, out)

    def dead(self, watermark: int) -> Callable[[Packed], bool]:
        """Which values the expiry sweep may drop: groups whose both buckets are behind the watermark
        (their estimate is zero). ``at_most`` groups are dropped by :meth:`due` instead."""
        oldest = watermark // self.w - 1
        if self.high is not None:
            return lambda st: False
        if self.measure == "count":
            below = oldest << 48  # packed ints order by bucket first
            return lambda st: st < below  # type: ignore[operator]
        return lambda st: self._unpack(st)[0] < oldest

    @property
    def granularity(self) -> int:
        """Milliseconds of watermark progress between two sweeps that can find something new to drop."""
        return self.w

    @property
    def fast_count(self) -> tuple[list[dict[str, Packed]], int, float] | None:
        """(shards, window ms, at_least) for the engine's inlined same-bucket update of a plain count rule
        (``count: N`` / ``at_least`` only), or None for every other kind of threshold."""
        if self.measure != "count" or self.high is not None or self.low is None:
            return None
        return self.state.shards, self.w, self.low
