"""Build of the one compiled module; everything else is in pyproject.toml.

``vigil.detectors._windows`` holds the window state of plain count and distinct rules
(``vigil/detectors/compiled.py`` says why). It is optional: without a C compiler and the Python headers the
build goes on without it, and Vigil runs the same rules in pure Python (slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[Extension("vigil.detectors._windows", ["vigil/detectors/_windows.c"], optional=True)],
)
