"""The window state of plain ``count`` and ``distinct`` rules in compiled code, with the pure-Python state
as the fallback.

Why. Plain count and distinct rules (``at_least`` only) are the commonest windowed rules, and their
per-event updates were the largest share of a windowed replay (``bench/stateful.py``: about nine updates
per event; 2 us each for a count at a million open keys, 7 us for a distinct). In Python an update is a dict
probe that misses the cache several times around a few dozen bytecodes (and, for distinct, a new bytes
value per new hash). ``_windows.c`` keeps each group in one 40-byte slot of open-addressed arrays (256
shards, grown one at a time) and does the update in C. The replay benchmark runs 26–32 % faster with it
(paired, docs/rules.md has the figures).

Everything else stays the Python that every other rule uses: the general path for what the compiled
update hands back (late events), expiry, snapshots and the key limit, through :class:`CountState` and
:class:`DistinctState`, which give the tables the interface of
:class:`~vigil.detectors.state.KeyedState` with exactly its packed values, so snapshots move freely between
the two kinds.

The extension is optional: ``pip install`` builds it where a C compiler and the Python headers exist and
goes on without it otherwise. :data:`NATIVE` says whether it is in use; ``VIGIL_PURE_PYTHON=1`` turns it
off (to compare, or to rule it out when chasing a problem). The same brute-force tests run both paths.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final, Protocol

from vigil.detectors.state import DEFAULT_MAX_KEYS, SHARDS, Packed, ShardSweep
from vigil.runtime import PURE_PYTHON

try:
    from vigil.detectors._windows import SHARDS as _C_SHARDS
    from vigil.detectors._windows import CountTable, DistinctTable
except ImportError:  # built without a C compiler: the pure-Python state and updates run instead
    CountTable = DistinctTable = None  # type: ignore[assignment, misc]
    _C_SHARDS = SHARDS
if _C_SHARDS != SHARDS:  # (items and sweeps walk SHARDS shards: a stale build must not hide keys)
    raise ImportError(f"vigil/detectors/_windows.c has {_C_SHARDS} shards, state.py {SHARDS}: rebuild it")

#: whether the compiled tables are built, and whether plain count and distinct rules use them (not turned off)
BUILT: Final = CountTable is not None
NATIVE: Final = BUILT and not PURE_PYTHON

_M24: Final = (1 << 24) - 1


def pack(bucket: int, cur: int, prev: int) -> int:
    """The packed value of a count window: ``bucket << 48 | cur << 24 | prev`` (as KeyedState keeps it)."""
    return (bucket << 48) | (cur << 24) | prev


class BucketBelow:
    """The expiry test of a threshold window (count, sum or distinct): its bucket is below ``oldest``, so
    both its buckets are behind the window and the estimate is zero. A compiled state runs it in C over a
    whole shard instead of calling it per key."""

    __slots__ = ("below", "oldest")

    def __init__(self, oldest: int) -> None:
        self.oldest = oldest
        self.below = oldest << 48

    def __call__(self, value: Packed) -> bool:
        if type(value) is int:
            return value < self.below  # packed counts order by bucket first
        assert type(value) is bytes  # sum and distinct states start with the bucket (<q)
        return int.from_bytes(value[:8], "little", signed=True) < self.oldest


class _Table(Protocol):
    """What CountTable and DistinctTable share."""

    @property
    def size(self) -> int: ...

    @property
    def limited(self) -> int: ...

    def get(self, key: str, /) -> object: ...

    def discard(self, key: str, /) -> bool: ...

    def shard_items(self, shard: int, /) -> list[tuple[str, object]]: ...

    def expire(self, shard: int, oldest: int, /) -> int: ...

    def clear(self) -> None: ...


class _Compiled(ShardSweep):
    """The KeyedState interface over a compiled table."""

    __slots__ = ("table",)

    def __init__(self, table: _Table) -> None:
        super().__init__()
        self.table = table

    @property
    def size(self) -> int:
        return self.table.size

    @property
    def limited(self) -> int:
        return self.table.limited

    def _value(self, raw: object) -> Packed:
        raise NotImplementedError

    def problem(self, value: Packed) -> str | None:
        """Why ``value`` cannot be stored here (snapshots check every entry before loading any)."""
        raise NotImplementedError

    def _set(self, key: str, value: Packed) -> bool:
        raise NotImplementedError

    def put(self, key: str, value: Packed) -> bool:
        """Store a packed value; False (and counted in ``limited``) for a new key past the limit;
        ValueError for a value this table cannot hold (:meth:`problem`)."""
        problem = self.problem(value)
        if problem is not None:
            raise ValueError(problem)
        return self._set(key, value)

    def get(self, key: str) -> Packed | None:
        raw = self.table.get(key)
        return None if raw is None else self._value(raw)

    def pop(self, key: str) -> Packed | None:
        value = self.get(key)
        if value is not None:
            self.table.discard(key)
        return value

    def items(self) -> Iterator[tuple[str, Packed]]:
        for i in range(SHARDS):
            for key, raw in self.table.shard_items(i):
                yield key, self._value(raw)

    def _sweep_shard(self, i: int, dead: Callable[[Packed], bool]) -> int:
        table = self.table
        if type(dead) is BucketBelow:  # (every threshold window's test: run in C over the shard)
            return table.expire(i, dead.oldest)
        return sum(1 for key, raw in table.shard_items(i) if dead(self._value(raw)) and table.discard(key))

    def clear(self) -> None:
        self.table.clear()


class CountState(_Compiled):
    """One plain count rule's windows in a :class:`CountTable`. The hot path does not come through here:
    the generated update calls ``table.update`` directly (``fastpath.py``)."""

    __slots__ = ("counts",)

    def __init__(self, window_ms: int, low: float, limit: int = DEFAULT_MAX_KEYS) -> None:
        if CountTable is None:
            raise RuntimeError("the compiled window tables are not built (see vigil/detectors/compiled.py)")
        self.counts = CountTable(window_ms, float(low), limit)
        super().__init__(self.counts)

    def _value(self, raw: object) -> Packed:
        assert type(raw) is tuple
        return pack(*raw)

    def problem(self, value: Packed) -> str | None:
        if type(value) is not int or not -(1 << 63) <= value >> 48 < 1 << 63:
            return "a count window is not a packed int (bucket << 48 | count << 24 | count)"
        return None

    def _set(self, key: str, value: Packed) -> bool:
        assert type(value) is int
        return self.counts.set(key, value >> 48, (value >> 24) & _M24, value & _M24)


class DistinctState(_Compiled):
    """One plain distinct rule's windows in a :class:`DistinctTable` (values: the packed bytes of
    ``threshold.distinct_parts``); ``ThresholdDetector`` calls ``table.update`` itself."""

    __slots__ = ("cap", "values")

    def __init__(self, window_ms: int, low: float, limit: int, cap: int) -> None:
        if DistinctTable is None:
            raise RuntimeError("the compiled window tables are not built (see vigil/detectors/compiled.py)")
        self.cap = cap
        self.values = DistinctTable(window_ms, float(low), limit, cap)
        super().__init__(self.values)

    def _value(self, raw: object) -> Packed:
        assert type(raw) is bytes
        return raw

    def problem(self, value: Packed) -> str | None:
        if type(value) is not bytes or len(value) < 16 or len(value) % 8:
            return "a distinct window is not packed bytes"
        n = (len(value) - 16) >> 3
        nprev, only = int.from_bytes(value[8:12], "little"), int.from_bytes(value[12:16], "little")
        if not only <= nprev <= min(n, self.cap) or n - nprev > self.cap:
            return "a distinct window does not fit this rule (more values than it keeps)"
        return None

    def _set(self, key: str, value: Packed) -> bool:
        assert type(value) is bytes
        return self.values.set(key, value)
