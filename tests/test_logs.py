"""``vigil.logs.sampled``: which occurrences of a repeating fault are logged."""

from __future__ import annotations

from vigil.logs import sampled


def test_the_first_and_every_power_of_ten_are_logged() -> None:
    assert [n for n in range(0, 100_001) if sampled(n)] == [1, 10, 100, 1000, 10_000, 100_000]
