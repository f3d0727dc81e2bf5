"""Keyed detector state that stays small and pause-free with a million open keys.

Each stateful rule keeps one :class:`KeyedState`: its group keys (strings) mapped to *packed* values — an
``int`` for counts and times, ``bytes`` or ``str`` for the rest — never a list, dict or object per key.
Those values are not tracked by the garbage collector, so a full collection does not walk a million window
states (reference/performance.md §4: list-per-key state took p99 to 94 ms; packed ints to about 1 ms). The
keys are spread over 256 dict shards, so growing one shard never resizes (and copies) the whole table in
one go.

State is bounded twice: idle keys are swept out incrementally (a few shards per call, see :meth:`sweep`),
and each rule has a key limit; a new key past the limit is not tracked, and :attr:`KeyedState.limited`
counts every time that happens so the operator sees it in the metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final, Protocol

#: the packed value of one key: never a container
Packed = int | bytes | str

SHARDS: Final = 256
#: default number of keys one rule may hold
DEFAULT_MAX_KEYS: Final = 1_000_000


class ShardSweep:
    """The incremental expiry both kinds of state share: :meth:`sweep` visits a few of the 256 shards per
    call, round robin, so no single event pays for a scan of a million keys; subclasses drop one shard's
    dead keys in :meth:`_sweep_shard`."""

    __slots__ = ("_cursor", "_generation", "_todo")

    def __init__(self) -> None:
        self._cursor = 0
        self._generation = -1
        self._todo = SHARDS

    def pending(self, generation: int) -> bool:
        """Whether a sweep for ``generation`` has shards left to visit (see :meth:`sweep`)."""
        return generation != self._generation or self._todo > 0

    def sweep(self, dead: Callable[[Packed], bool], shards: int = 1, generation: int | None = None) -> int:
        """Remove the keys whose value is ``dead`` from the next ``shards`` shards (round robin).

        With a ``generation`` (say, the watermark's window number: nothing new can have died until it
        changes), each shard is visited once per generation and further calls are free.
        """
        if generation is not None:
            if generation != self._generation:
                self._generation, self._todo = generation, SHARDS
            shards = min(shards, self._todo)
            self._todo -= shards
        removed = 0
        for _ in range(min(shards, SHARDS)):
            removed += self._sweep_shard(self._cursor, dead)
            self._cursor = (self._cursor + 1) % SHARDS
        return removed

    def sweep_all(self, dead: Callable[[Packed], bool]) -> int:
        return self.sweep(dead, SHARDS)

    def _sweep_shard(self, i: int, dead: Callable[[Packed], bool]) -> int:
        raise NotImplementedError


class KeyedState(ShardSweep):
    """Sharded ``key -> packed value`` with a key limit and incremental expiry."""

    __slots__ = ("limit", "limited", "shards", "size")

    def __init__(self, limit: int = DEFAULT_MAX_KEYS) -> None:
        super().__init__()
        self.shards: list[dict[str, Packed]] = [{} for _ in range(SHARDS)]
        self.limit = limit
        self.size = 0
        self.limited = 0

    def get(self, key: str) -> Packed | None:
        return self.shards[hash(key) & (SHARDS - 1)].get(key)

    def put(self, key: str, value: Packed) -> bool:
        """Store ``value``; False (and counted in :attr:`limited`) for a new key past the limit."""
        shard = self.shards[hash(key) & (SHARDS - 1)]
        if key not in shard:
            if self.size >= self.limit:
                self.limited += 1
                return False
            self.size += 1
        shard[key] = value
        return True

    def pop(self, key: str) -> Packed | None:
        value = self.shards[hash(key) & (SHARDS - 1)].pop(key, None)
        if value is not None:
            self.size -= 1
        return value

    def items(self) -> Iterator[tuple[str, Packed]]:
        for shard in self.shards:
            yield from shard.items()

    def _sweep_shard(self, i: int, dead: Callable[[Packed], bool]) -> int:
        shard = self.shards[i]
        gone = [k for k, v in shard.items() if dead(v)]
        for k in gone:
            del shard[k]
        self.size -= len(gone)
        return len(gone)

    def clear(self) -> None:
        for shard in self.shards:
            shard.clear()
        self.size = 0


class WindowState(Protocol):
    """What the engine, expiry and snapshots use of a rule's keyed state: :class:`KeyedState`, or for a
    plain count or distinct rule a compiled state (:mod:`vigil.detectors.compiled`, same packed values)."""

    @property
    def size(self) -> int: ...

    @property
    def limited(self) -> int: ...

    def get(self, key: str) -> Packed | None: ...

    def put(self, key: str, value: Packed) -> bool: ...

    def pop(self, key: str) -> Packed | None: ...

    def items(self) -> Iterator[tuple[str, Packed]]: ...

    def pending(self, generation: int) -> bool: ...

    def sweep(
        self, dead: Callable[[Packed], bool], shards: int = 1, generation: int | None = None
    ) -> int: ...

    def sweep_all(self, dead: Callable[[Packed], bool]) -> int: ...

    def clear(self) -> None: ...
