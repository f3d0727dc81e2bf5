"""Snapshots of a :class:`~vigil.detectors.engine.Detector`'s open state, so a restart forgets nothing.

A snapshot holds, per stateful rule (and per rule's suppression), the rule's content hash and every
``key -> packed value`` entry, plus the clock's watermark. Restoring loads the entries of every rule whose
text is unchanged; a rule that changed (or disappeared) starts empty — its old windows would mean
something else — and is reported. The format is JSON (arbitrary-size ints, bytes as base64), versioned,
written atomically (temporary file, fsync, rename), so a crash while saving leaves the previous snapshot.
The daemon keeps it in its store; ``vigil replay --state FILE`` uses a file.
"""

from __future__ import annotations

import base64
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from vigil.detectors.engine import Detector
from vigil.errors import VigilError

VERSION: Final = 1


@dataclass
class RestoreReport:
    """What a restore did."""

    keys: int = 0
    rules: int = 0
    #: rules in the snapshot whose text changed or that are no longer loaded: their state was dropped
    dropped: list[str] = field(default_factory=list)


def _encode(value: object) -> list[Any]:
    if type(value) is bytes:
        return ["b", base64.b64encode(value).decode("ascii")]
    return ["i" if type(value) is int else "s", value]


def _decode(tag: str, value: Any) -> int | bytes | str:
    if tag == "b":
        return base64.b64decode(value)
    if tag == "i" and type(value) is int:
        return value
    if tag == "s" and type(value) is str:
        return value
    raise ValueError(f"bad entry tag {tag!r}")


def snapshot(detector: Detector) -> bytes:
    """The detector's open state as bytes (see module docstring)."""
    states = {
        name: {"hash": rule.content_hash, "entries": [[k, *_encode(v)] for k, v in state.items()]}
        for name, (rule, state) in detector.states().items()
        if state.size
    }
    doc = {"version": VERSION, "clock": detector.clock.state(), "states": states}
    return orjson.dumps(doc, option=orjson.OPT_PASSTHROUGH_DATACLASS)


def restore(detector: Detector, data: bytes) -> RestoreReport:
    """Load a snapshot into a fresh detector; VigilError if it is not a snapshot this version reads."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise VigilError(f"detector snapshot is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise VigilError(
            f"detector snapshot version {doc.get('version') if isinstance(doc, dict) else '?'}"
            f" is not {VERSION}"
        )
    report = RestoreReport()
    current = detector.states()
    for name, saved in (doc.get("states") or {}).items():
        target = current.get(name)
        if target is None or target[0].content_hash != saved.get("hash"):
            report.dropped.append(name)
            continue
        state = target[1]
        for key, tag, value in saved.get("entries", ()):
            if state.put(key, _decode(tag, value)):
                report.keys += 1
        report.rules += 1
    clock = doc.get("clock")
    if isinstance(clock, dict):
        detector.clock.restore(clock)
    detector.rearm()
    return report


def save(detector: Detector, path: str | Path) -> None:
    """Write a snapshot atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(snapshot(detector))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(detector: Detector, path: str | Path) -> RestoreReport | None:
    """Restore from ``path`` if it exists (None when there is no snapshot yet)."""
    target = Path(path)
    if not target.exists():
        return None
    return restore(detector, target.read_bytes())
