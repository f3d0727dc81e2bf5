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
from vigil.detectors.compiled import NATIVE, BucketBelow, CountState, DistinctState
from vigil.detectors.finding import Finding, field_getter, finding, group_from_key, key_function
from vigil.detectors.state import SHARDS, KeyedState, Packed, WindowState
from vigil.events.model import Event
from vigil.rules.model import Rule

M24: Final = (1 << 24) - 1
NO_TIMER: Final = 1 << 62
_SUM: Final = struct.Struct("<qdd")
#: header of a ``distinct`` state: bucket, number of previous-bucket hashes, how many of those are not in
#: the current bucket (see :func:`distinct_parts`)
_DIST: Final = struct.Struct("<qII")
_SHARD_MASK: Final = SHARDS - 1


def value_hash(value: object) -> bytes:
    """8-byte stable hash of a value (stable across restarts, so snapshots stay valid)."""
    return text_hash(value if type(value) is str else repr(value))


_BLAKE2B_8: Final = hashlib.blake2b(digest_size=8)


@functools.lru_cache(maxsize=65536)
def text_hash(text: str) -> bytes:
    """Memoised (LRU, evicted one entry at a time): several distinct rules usually count the same field
    of an event, and busy values repeat. A copy of a ready hash object costs about half a new one."""
    h = _BLAKE2B_8.copy()
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.digest()


def _has(blob: bytes, h: bytes, lo: int, hi: int | None = None) -> bool:
    """Whether 8-byte hash ``h`` is one of the hashes in ``blob[lo:hi]`` (``lo`` a multiple of 8)."""
    i = blob.find(h, lo, hi)
    while i >= 0:
        if i % 8 == 0:
            return True
        i = blob.find(h, i + 1, hi)
    return False


def distinct_parts(st: bytes) -> tuple[int, bytes, bytes, int]:
    """(bucket, previous bucket's hashes, current bucket's hashes, how many previous ones are not in the
    current bucket) of a ``distinct`` state: ``<q bucket><I n previous><I only> + previous + current``."""
    kb, nprev, only = _DIST.unpack_from(st)
    split = 16 + 8 * nprev
    return kb, st[16:split], st[split:], only


def distinct_from_v1(st: bytes) -> bytes:
    """A ``distinct`` state as snapshot version 1 laid it out (``<q bucket><I n current><I only> + current +
    previous``) in today's layout."""
    kb, ncur, only = _DIST.unpack_from(st)
    split = 16 + 8 * ncur
    return _DIST.pack(kb, (len(st) - split) >> 3, only) + st[split:] + st[16:split]


class ThresholdDetector:
    """One threshold rule's windows (see module docstring)."""

    def __init__(self, rule: Rule, limit: int, *, native: bool = NATIVE) -> None:
        spec = rule.threshold
        assert spec is not None
        self.rule = rule
        self.fields = spec.group_by
        self.key_of = key_function(spec.group_by)
        self.w = max(1, int(spec.window.total_seconds() * 1000))
        self.low = spec.at_least
        self.high = spec.at_most
        self.measure = spec.measure
        self.cap = int(max(self.low or 0, (self.high or 0) + 1)) if spec.measure == "distinct" else 0
        #: plain count and distinct rules keep their windows in compiled tables where built (compiled.py)
        low, plain = self.low, native and self.high is None
        self.state: WindowState = KeyedState(limit)
        if plain and low is not None and self.measure == "count":
            self.state = CountState(self.w, low, limit)
        elif plain and low is not None and self.measure == "distinct":
            self.state = DistinctState(self.w, low, limit, self.cap)
        self.stale = 0
        self.bad_values = 0
        self._raw_get: Callable[[Event], object] | None = None
        if spec.field:
            self._raw_get = field_getter(spec.field)
        #: earliest watermark at which due() has work (at_most rules judge closed buckets)
        self.next_due = NO_TIMER
        self.on_event: Callable[[Event, int, list[Finding]], None] = {
            "count": self._count,
            "sum": self._sum,
            "distinct": self._distinct_compiled if type(self.state) is DistinctState else self._distinct,
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
        # The general path (generic state API): the hot cases of plain count rules are generated
        # (fastpath.py) or compiled (compiled.py) and come here only for gaps and late events.
        key = self.key_of(event)
        w = self.w
        b = t // w
        state = self.state
        st = state.get(key)
        if st is None:
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
                state.put(key, (kb << 48) | (cur << 24) | min(prev + 1, M24))
                if self._crossed(total, total + 1):
                    out.append(
                        finding(
                            self.rule, (event.id,), event.time, group_from_key(self.fields, key), total + 1
                        )
                    )
                return
        before: float = cur + prev * (1 - (t - kb * w) / w) if prev else cur
        if not state.put(key, (kb << 48) | (min(cur + 1, M24) << 24) | prev):
            return  # a new key past the limit (counted)
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

    def value_hash_of(self, event: Event) -> bytes | None:
        """The 8-byte hash of the counted field's value (None: the event has no value)."""
        assert self._raw_get is not None
        v = self._raw_get(event)
        return None if v is None else text_hash(v if type(v) is str else repr(v))

    def _distinct(self, event: Event, t: int, out: list[Finding]) -> None:
        # Hot path (a share of every event): the state's shard is used directly and the helpers (put, _arm,
        # _crossed) are inlined. The value is ``header + prev + cur`` (see :func:`distinct_parts`), so a new
        # value of the current bucket is one concatenation, ``st + h``, the header unchanged.
        h = self.value_hash_of(event)
        if h is None:
            return
        key = self.key_of(event)
        w = self.w
        b = t // w
        high = self.high
        state = self.state
        assert type(state) is KeyedState  # (plain distinct rules have _distinct_compiled where built)
        shard = state.shards[hash(key) & _SHARD_MASK]
        st = shard.get(key)
        if st is None:  # a new group: its first value (cap is at least 1)
            if state.size >= state.limit:  # a new key past the limit (as KeyedState.put)
                state.limited += 1
                return
            state.size += 1
            shard[key] = _DIST.pack(b, 0, 0) + h
            if high is not None:
                self.next_due = min(self.next_due, (b + 1) * w)
            elif self.low is not None and 0 < self.low <= 1:
                out.append(finding(self.rule, (event.id,), event.time, group_from_key(self.fields, key), 1))
            return
        assert type(st) is bytes
        kb, nprev, only = _DIST.unpack_from(st)
        split = 16 + 8 * nprev
        if b > kb:  # a later bucket: the current one becomes the previous one (or both are forgotten)
            ncur = (len(st) - split) >> 3
            if high is not None:
                self._judge(key, kb, ncur, out)
            rolled = st[split:] if b == kb + 1 else b""  # the hashes that become the previous bucket
            kb = b
            nprev = only = len(rolled) >> 3
            st = _DIST.pack(kb, nprev, only) + rolled
            split = 16 + 8 * nprev
        elif b < kb and high is None:  # (at_most: a judged bucket's late event counts in kb)
            if b < kb - 1:
                self.stale += 1
                return
            self._late_distinct(event, key, st, h, out)
            return
        if len(st) > split and _has(st, h, split):  # already counted in this bucket (never after a roll)
            return
        ncur = (len(st) - split) >> 3
        frac = 1 - (t - kb * w) / w
        before: float = ncur + only * frac
        if ncur < self.cap:
            if only and _has(st, h, 16, split):  # seen in the previous bucket: no longer only there
                only -= 1
                st = _DIST.pack(kb, nprev, only) + st[16:] + h
            else:
                st += h
            ncur += 1
        shard[key] = st
        if high is not None:
            self.next_due = min(self.next_due, (kb + 1) * w)
            return
        low = self.low
        after = ncur + only * frac
        if low is not None and before < low <= after:
            out.append(finding(self.rule, (event.id,), event.time, group_from_key(self.fields, key), after))

    def _distinct_compiled(self, event: Event, t: int, out: list[Finding]) -> None:
        """A plain distinct rule whose windows are in the compiled table: the same semantics as
        :meth:`_distinct` (the same tests run both), late events handed back to the Python path."""
        h = self.value_hash_of(event)
        if h is None:
            return
        key = self.key_of(event)
        state = self.state
        assert type(state) is DistinctState
        got = state.values.update(key, t, h)
        if got is None:
            return
        if got is ...:
            self.late_compiled(event, t, key, h, out)
            return
        out.append(finding(self.rule, (event.id,), event.time, group_from_key(self.fields, key), got))

    def late_compiled(self, event: Event, t: int, key: str, h: bytes, out: list[Finding]) -> None:
        """What the compiled distinct update hands back, a late event: stale, or into the previous bucket
        (also called by the generated update of ``fastpath.py``)."""
        st = self.state.get(key)
        assert type(st) is bytes
        if t // self.w < _DIST.unpack_from(st)[0] - 1:
            self.stale += 1
        else:
            self._late_distinct(event, key, st, h, out)

    def _late_distinct(self, event: Event, key: str, st: bytes, h: bytes, out: list[Finding]) -> None:
        """An event late into the previous bucket: kept there, and all of that bucket is in the window."""
        kb, nprev, only = _DIST.unpack_from(st)
        split = 16 + 8 * nprev
        if _has(st, h, 16):
            return
        late_before = ((len(st) - split) >> 3) + only
        if nprev < self.cap:
            self.state.put(key, _DIST.pack(kb, nprev + 1, only + 1) + st[16:split] + h + st[split:])
        low = self.low
        if low is not None and late_before < low <= late_before + 1:
            group = group_from_key(self.fields, key)
            out.append(finding(self.rule, (event.id,), event.time, group, late_before + 1))

    # -- timers and expiry ---------------------------------------------------------------------------

    def _unpack(self, st: Packed) -> tuple[int, float]:
        """(bucket, aggregate of that bucket) of a state value."""
        if type(st) is int:
            return st >> 48, (st >> 24) & M24
        assert type(st) is bytes
        if self.measure == "sum":
            kb, cur, _ = _SUM.unpack(st)
            return kb, cur
        kb, nprev, _ = _DIST.unpack_from(st)
        return kb, (len(st) - 16 - 8 * nprev) >> 3

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
        return BucketBelow(oldest)

    @property
    def granularity(self) -> int:
        """Milliseconds of watermark progress between two sweeps that can find something new to drop."""
        return self.w

    @property
    def fast_count(self) -> tuple[int, float] | None:
        """(window ms, at_least) of a plain count rule (``count: N`` / ``at_least`` only), whose update is
        generated (``fastpath.py``); None for every other kind of threshold."""
        if self.measure != "count" or self.high is not None or self.low is None:
            return None
        return self.w, self.low
