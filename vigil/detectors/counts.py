"""The window state of plain ``count`` rules in compiled code, with the pure-Python state as the fallback.

Why. A plain count rule (``count`` with ``at_least`` only) is the commonest windowed rule, and its per-event
update was the largest share of a windowed replay: about 2 us at a million open keys in generated Python
(``fastpath.py``), most of it a dict probe missing the cache several times around a few dozen bytecodes.
``_counttable.c`` keeps each group in one 32-byte slot of open-addressed arrays (256 shards, grown one at a
time) and does the update in C: about three times faster per update (``bench/stateful.py`` reports which
path ran). Everything else (the general path for gaps and late events, expiry, snapshots, the key limit)
is the same Python as for every other rule, through :class:`CountState`, whose packed values are exactly
:class:`~vigil.detectors.state.KeyedState`'s, so snapshots move freely between the two.

The extension is optional: ``pip install`` builds it where a C compiler and the Python headers exist, and
goes on without it otherwise. :data:`NATIVE` says whether it is in use; ``VIGIL_PURE_PYTHON=1`` turns it off
(to compare, or to rule it out when chasing a problem). The same tests run both paths against a brute-force
recount (``tests/detectors``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Final

from vigil.detectors.state import DEFAULT_MAX_KEYS, SHARDS, Packed

try:
    from vigil.detectors._counttable import CountTable
except ImportError:  # built without a C compiler: the pure-Python state and generated updates run instead
    CountTable = None  # type: ignore[assignment, misc]

#: whether plain count rules use the compiled table (the extension is built and not turned off)
NATIVE: Final = CountTable is not None and os.environ.get("VIGIL_PURE_PYTHON", "") not in ("1", "true", "yes")

_M24: Final = (1 << 24) - 1


def pack(bucket: int, cur: int, prev: int) -> int:
    """The packed value of a count window: ``bucket << 48 | cur << 24 | prev`` (as KeyedState keeps it)."""
    return (bucket << 48) | (cur << 24) | prev


class BucketBelow:
    """The expiry test of a count window: its bucket is below ``oldest`` (both buckets are behind the
    window, the estimate is zero). Packed ints order by bucket first, so it is one comparison; a
    :class:`CountState` runs it in C over a whole shard instead of calling it per key."""

    __slots__ = ("below", "oldest")

    def __init__(self, oldest: int) -> None:
        self.oldest = oldest
        self.below = oldest << 48

    def __call__(self, value: Packed) -> bool:
        return value < self.below  # type: ignore[operator]


class CountState:
    """One plain count rule's windows in a compiled :class:`CountTable`, with the interface of
    :class:`~vigil.detectors.state.KeyedState` that the engine, expiry and snapshots use (packed ints in
    and out). The hot path does not come through here: the generated update calls :attr:`table`'s
    ``update`` directly (``fastpath.py``)."""

    __slots__ = ("_cursor", "_generation", "_todo", "table")

    def __init__(self, window_ms: int, low: float, limit: int = DEFAULT_MAX_KEYS) -> None:
        if CountTable is None:
            raise RuntimeError("the compiled count table is not built (see vigil/detectors/counts.py)")
        self.table = CountTable(window_ms, float(low), limit)
        self._cursor = 0
        self._generation = -1
        self._todo = SHARDS

    @property
    def size(self) -> int:
        return self.table.size

    @property
    def limit(self) -> int:
        return self.table.limit

    @limit.setter
    def limit(self, value: int) -> None:
        self.table.limit = value

    @property
    def limited(self) -> int:
        return self.table.limited

    def get(self, key: str) -> Packed | None:
        got = self.table.get(key)
        return None if got is None else pack(*got)

    def put(self, key: str, value: Packed) -> bool:
        """Store a packed count; False (and counted in ``limited``) for a new key past the limit."""
        if type(value) is not int or value < 0:
            raise ValueError(f"a count window is a packed non-negative int, not {type(value).__name__}")
        return self.table.set(key, value >> 48, (value >> 24) & _M24, value & _M24)

    def pop(self, key: str) -> Packed | None:
        value = self.get(key)
        if value is not None:
            self.table.discard(key)
        return value

    def items(self) -> Iterator[tuple[str, Packed]]:
        for i in range(SHARDS):
            for key, bucket, cur, prev in self.table.shard_items(i):
                yield key, pack(bucket, cur, prev)

    def pending(self, generation: int) -> bool:
        """As :meth:`KeyedState.pending`."""
        return generation != self._generation or self._todo > 0

    def sweep(self, dead: Callable[[Packed], bool], shards: int = 1, generation: int | None = None) -> int:
        """As :meth:`KeyedState.sweep`: drop the ``dead`` keys of the next ``shards`` shards."""
        if generation is not None:
            if generation != self._generation:
                self._generation, self._todo = generation, SHARDS
            shards = min(shards, self._todo)
            self._todo -= shards
        removed = 0
        table = self.table
        for _ in range(min(shards, SHARDS)):
            if type(dead) is BucketBelow:
                removed += table.expire(self._cursor, dead.oldest)
            else:
                for key, bucket, cur, prev in table.shard_items(self._cursor):
                    if dead(pack(bucket, cur, prev)) and table.discard(key):
                        removed += 1
            self._cursor = (self._cursor + 1) % SHARDS
        return removed

    def sweep_all(self, dead: Callable[[Packed], bool]) -> int:
        return self.sweep(dead, SHARDS)

    def clear(self) -> None:
        self.table.clear()
