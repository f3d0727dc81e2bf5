"""Named crash points, for the crash-safety tests: ``VIGIL_CRASH_AT=name[:n]`` kills the process.

A crash point is a call at a boundary where a crash must lose and double nothing (before and after a
commit, before and after a file moves). With ``VIGIL_CRASH_AT=name`` the process sends itself SIGKILL
the first time it reaches that point (``name:3``: the third time); without the variable every call is a
dictionary look-up and nothing else. :data:`POINTS` lists every registered name, so a test can sweep them.
"""

from __future__ import annotations

import os
import signal
from typing import Final

#: every crash point in the code base (tests/streams/test_crash_points.py kills the process at each one)
POINTS: Final = (
    "dropfolder.before_publish",
    "dropfolder.after_publish",
    "dropfolder.after_move",
    "detect.before_commit",
    "detect.after_commit",
    "http.before_accept",
    "http.after_accept",
    "response.after_running",
    "response.after_plan",
    "response.after_intent",
    "response.after_apply",
    "response.before_done",
    "alerts.after_enqueue",
    "alerts.after_send",
)

_hits: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get("VIGIL_CRASH_AT")
    if not spec:
        return None
    name, _, count = spec.partition(":")
    return name, int(count) if count.isdigit() else 1


_TARGET: Final = _target()


def crash_point(name: str) -> None:
    """SIGKILL this process if ``VIGIL_CRASH_AT`` names this point and this is the n-th hit."""
    if _TARGET is None or _TARGET[0] != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)
