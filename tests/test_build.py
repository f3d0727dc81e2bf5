"""The build: ``make setup`` compiles the window tables (``vigil/detectors/_windows.c``), the event ids
(``vigil/events/_ids.c``), the Activity Log's fast path (``vigil/events/_activity.c``) and redaction's
literal screen (``vigil/alerts/_screen.c``).

The extensions are optional for users (no compiler: Vigil runs pure Python), so a failed build would not
stop the package from working, and every test of the compiled paths would quietly skip. This test makes
such a build fail the suite where it matters: on the machines that run it.
"""

from __future__ import annotations

import pytest

from vigil.detectors import compiled
from vigil.events import fields
from vigil.runtime import PURE_PYTHON

HOW = (
    "was not built: install a C compiler and the Python headers and run `make setup` again "
    "(or set VIGIL_PURE_PYTHON=1 to test the pure-Python path only)"
)


@pytest.fixture(autouse=True)
def _native_asked_for() -> None:
    if PURE_PYTHON:
        pytest.skip("VIGIL_PURE_PYTHON is set: the pure-Python path was asked for")


def test_the_compiled_window_tables_are_built_and_in_use() -> None:
    assert compiled.CountTable is not None, f"vigil/detectors/_windows.c {HOW}"
    assert compiled.NATIVE


def test_the_compiled_event_ids_are_built_and_in_use() -> None:
    assert fields.NATIVE_IDS, f"vigil/events/_ids.c {HOW}"
    assert fields.time_id is not fields._time_id and fields.to_ms is not fields._to_ms


def test_the_compiled_activity_path_is_built_and_in_use() -> None:
    from vigil.events.normalizers import activity

    assert activity._native is not None, f"vigil/events/_activity.c {HOW}"


def test_the_compiled_redaction_screen_is_built_and_in_use() -> None:
    from vigil.alerts import redact

    assert redact._screen is not None, f"vigil/alerts/_screen.c {HOW}"
