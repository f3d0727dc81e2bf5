"""The build: ``make setup`` compiles the window tables (``vigil/detectors/_windows.c``).

The extension is optional for users (no compiler: Vigil runs pure Python), so a failed build would not
stop the package from working, and every test of the compiled path would quietly skip. This test makes
such a build fail the suite where it matters: on the machines that run it.
"""

from __future__ import annotations

import os

import pytest

from vigil.detectors import compiled


def test_the_compiled_window_tables_are_built_and_in_use() -> None:
    if os.environ.get("VIGIL_PURE_PYTHON"):
        pytest.skip("VIGIL_PURE_PYTHON is set: the pure-Python path was asked for")
    assert compiled.CountTable is not None, (
        "vigil/detectors/_windows.c was not built: install a C compiler and the Python headers and run "
        "`make setup` again (or set VIGIL_PURE_PYTHON=1 to test the pure-Python path only)"
    )
    assert compiled.NATIVE
