"""Build of the compiled modules; everything else is in pyproject.toml.

``vigil.detectors._windows`` holds the window state of plain count and distinct rules
(``vigil/detectors/compiled.py`` says why); ``vigil.events._ids`` computes event ids and event times in
milliseconds (``vigil/events/fields.py``); ``vigil.events._activity`` is the Activity Log's fast
normalisation path (``vigil/events/normalizers/activity.py``); ``vigil.alerts._screen`` is the literal
screen of alert redaction (``vigil/alerts/redact.py``). All are optional: without a C compiler and the Python headers
the build goes on without them, and Vigil runs the same code in pure Python (slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("vigil.detectors._windows", ["vigil/detectors/_windows.c"], optional=True),
        Extension("vigil.events._ids", ["vigil/events/_ids.c"], optional=True),
        Extension("vigil.alerts._screen", ["vigil/alerts/_screen.c"], optional=True),
        Extension(
            "vigil.events._activity",
            ["vigil/events/_activity.c", "vigil/events/_jsonscan.c"],
            depends=["vigil/events/_jsonscan.h"],
            optional=True,
        ),
    ],
)
