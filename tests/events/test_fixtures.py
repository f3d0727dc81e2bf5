"""Every fixture of every format: good_* normalise cleanly under auto-detection, bad_* are dead-lettered."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import EVENT_FIXTURES
from vigil.events.batch import BatchNormalizer

GOOD = sorted(EVENT_FIXTURES.glob("*/good_*.json*"))
BAD = sorted(EVENT_FIXTURES.glob("*/bad_*.json*"))


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def test_every_format_has_good_and_bad_fixtures() -> None:
    formats = {p.name for p in EVENT_FIXTURES.iterdir() if p.is_dir()}
    assert formats >= {"activity"}
    for fmt in formats:
        assert any(p.parent.name == fmt for p in GOOD), f"{fmt}: no good_* fixture"
        assert any(p.parent.name == fmt for p in BAD), f"{fmt}: no bad_* fixture"


@pytest.mark.parametrize("path", GOOD, ids=_id)
def test_good_fixture_normalises_without_dead_letters(path: Path) -> None:
    out = BatchNormalizer("auto").body(path.read_bytes(), str(path))
    assert not out.dead, [d.reason for d in out.dead]
    assert out.events or out.controls


@pytest.mark.parametrize("path", BAD, ids=_id)
def test_bad_fixture_is_dead_lettered_with_a_reason(path: Path) -> None:
    out = BatchNormalizer("auto").body(path.read_bytes(), str(path))
    assert out.dead
    assert all(d.reason and d.source == str(path) for d in out.dead)
