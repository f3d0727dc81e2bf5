"""Snapshots of a :class:`~vigil.detectors.engine.Detector`'s open state, so a restart forgets nothing.

A snapshot holds, per stateful rule (and per rule's suppression), the rule's content hash and every
``key -> packed value`` entry, plus the clock's watermark. Restoring loads the entries of every rule whose
text is unchanged; a rule that changed (or disappeared) starts empty — its old windows would mean
something else — and is reported. The format is JSON (packed ints as decimal strings, since they outgrow
64 bits; bytes as base64), versioned, written atomically (temporary file, fsync, rename), so a crash
while saving leaves the previous snapshot. ``vigil replay --state FILE`` uses a file; the daemon will keep
it in its store.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from vigil.detectors.compiled import CountState, DistinctState
from vigil.detectors.engine import SUPPRESS_SUFFIX, Detector
from vigil.detectors.threshold import distinct_from_v1
from vigil.errors import VigilError
from vigil.fsutil import atomic_write

VERSION: Final = 2
#: versions :func:`restore` reads: 1 laid ``distinct`` states out as current + previous bucket (converted)
READS: Final = frozenset({1, 2})


@dataclass
class RestoreReport:
    """What a restore did."""

    keys: int = 0
    rules: int = 0
    #: rules in the snapshot whose text changed or that are no longer loaded: their state was dropped
    dropped: list[str] = field(default_factory=list)


def _encode(value: object) -> list[Any]:
    # packed ints outgrow 64 bits (a bucket index shifted by 48), which JSON readers turn into floats:
    # they are written as decimal strings
    if type(value) is bytes:
        return ["b", base64.b64encode(value).decode("ascii")]
    if type(value) is int:
        return ["i", str(value)]
    return ["s", value]


def _decode(tag: Any, value: Any) -> int | bytes | str:
    if type(value) is not str:
        raise ValueError(f"entry value is a {type(value).__name__}, not a string")
    if tag == "b":
        return base64.b64decode(value, validate=True)
    if tag == "i":
        return int(value)
    if tag == "s":
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
    return orjson.dumps(doc)


def restore(detector: Detector, data: bytes, *, exact_clock: bool = False) -> RestoreReport:
    """Load a snapshot into a fresh detector; VigilError if it is not a snapshot this version reads."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise VigilError(f"detector snapshot is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("version") not in READS:
        raise VigilError(
            f"detector snapshot version {doc.get('version') if isinstance(doc, dict) else '?'}"
            f" is not one of {sorted(READS)}"
        )
    try:
        loaded = _read(detector, doc, exact_clock)
    except (ValueError, TypeError, AttributeError, KeyError, binascii.Error) as exc:
        detector.reset()  # nothing half-restored
        raise VigilError(f"detector snapshot is corrupt: {exc}") from exc
    detector.rearm()
    return loaded


def _read(detector: Detector, doc: dict[str, Any], exact_clock: bool = False) -> RestoreReport:
    """Decode every entry first, then load: a corrupt entry anywhere leaves the detector untouched."""
    report = RestoreReport()
    current = detector.states()
    states = doc.get("states") or {}
    if not isinstance(states, dict):
        raise ValueError("'states' is not an object")
    staged = []
    for name, saved in states.items():
        target = current.get(name)
        if target is None or target[0].content_hash != saved.get("hash"):
            report.dropped.append(name)
            continue
        spec = target[0].threshold
        convert = (
            doc["version"] == 1
            and spec is not None
            and spec.measure == "distinct"
            and not name.endswith(SUPPRESS_SUFFIX)  # (a suppression's state is the same in both)
        )
        # (a compiled table takes only its own kind of value: checked here, before anything is loaded)
        compiled = target[1] if isinstance(target[1], CountState | DistinctState) else None
        entries = []
        for entry in saved.get("entries", ()):
            key, tag, value = entry
            if type(key) is not str:
                raise ValueError(f"{name}: key is not a string")
            packed = _decode(tag, value)
            if convert:
                if type(packed) is not bytes:
                    raise ValueError(f"{name}: a distinct state is not bytes")
                packed = distinct_from_v1(packed)
            problem = compiled.problem(packed) if compiled is not None else None
            if problem is not None:
                raise ValueError(f"{name}: {problem}")
            entries.append((key, packed))
        staged.append((target[1], entries))
    clock = doc.get("clock", {})
    if not isinstance(clock, dict) or not all(type(v) is int for v in clock.values()):
        raise ValueError("'clock' is not an object of integers")
    for state, entries in staged:
        report.rules += 1
        for key, value in entries:
            if state.put(key, value):
                report.keys += 1
    detector.clock.restore(clock, exact=exact_clock)
    return report


def save(detector: Detector, path: str | Path) -> None:
    """Write a snapshot atomically."""
    atomic_write(Path(path), snapshot(detector))


def load(detector: Detector, path: str | Path) -> RestoreReport | None:
    """Restore from ``path`` if it exists (None when there is no snapshot yet)."""
    target = Path(path)
    if not target.exists():
        return None
    return restore(detector, target.read_bytes())
