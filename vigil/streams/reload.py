"""Hot reload of the rule set: a changed rules folder (or ``POST /v1/rules/reload``) swaps the rules in
without a restart, without losing an event, and never for a broken set.

The watcher polls the modification times and sizes of every ``*.yaml``/``*.yml`` file under
``detect.rules`` (no inotify dependency; a save is seen within ``interval`` seconds). On a change it loads
the whole set in a worker thread, the loader reports every problem at once, and:

* **a set with errors is rejected whole**: the running set stays, and the rejection (diagnostics, time) is
  kept in :attr:`Reloader.last` for ``/v1/rules`` and counted for ``/metrics``;
* **a good set replaces the running one atomically**: a new :class:`~vigil.detectors.engine.Detector` is
  compiled in the worker thread, then — on the event loop, between two batches of the detect stage — it
  adopts the old detector's open state for every rule whose text did not change
  (:meth:`~vigil.detectors.engine.Detector.adopt`) and the stage switches to it. Events are never in
  flight between detectors: they wait in the store's log, and the stage's position does not move.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from vigil.detectors.engine import Detector
from vigil.errors import VigilError
from vigil.rules.lint import with_warnings
from vigil.rules.loader import load_rules
from vigil.rules.model import RuleSet
from vigil.streams import RunState
from vigil.streams.pipeline import DetectStage

log = logging.getLogger(__name__)

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass
class ReloadResult:
    """The outcome of the last reload attempt (what ``/v1/rules`` shows under ``reload``)."""

    ok: bool
    at: float
    rules: int = 0
    hash: str = ""
    kept_state: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def fingerprint(path: Path) -> Fingerprint:
    """(name, size, mtime_ns) of every rule file under ``path`` (a change in any means "reload")."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        out.append((str(f), st.st_size, st.st_mtime_ns))
    return tuple(out)


class Reloader:
    """Watches the rules path and swaps good rule sets into the detect stage (see module docstring)."""

    def __init__(self, state: RunState, stage: DetectStage, *, interval: float = 2.0) -> None:
        self.state = state
        self.stage = stage
        self.path = state.settings.detect.rules
        self.interval = interval
        self.last: ReloadResult | None = None
        self.attempts = 0
        self.failures = 0
        self._seen = fingerprint(self.path)
        self._lock = asyncio.Lock()
        #: awaited with a new rule set before it takes effect (the daemon audits it); raising refuses it
        self.on_load: Callable[[RuleSet], Awaitable[None]] | None = None

    async def reload(self) -> ReloadResult:
        """Load the rules now and apply them if they are good (one reload at a time)."""
        async with self._lock:
            self.attempts += 1
            self._seen = fingerprint(self.path)
            ruleset, detector = await asyncio.to_thread(self._build)
            if detector is None:
                self.failures += 1
                errors = [d.format() for d in ruleset.diagnostics if d.severity == "error"]
                self.last = ReloadResult(ok=False, at=time.time(), errors=errors)
                log.error("rule reload rejected (%d errors); the running set stays:", len(errors))
                for line in errors[:20]:
                    log.error("  %s", line)
                return self.last
            if self.on_load is not None:
                try:  # a rule change must be on record before it takes effect (fail closed)
                    await self.on_load(ruleset)
                except VigilError as exc:
                    self.failures += 1
                    self.last = ReloadResult(ok=False, at=time.time(), errors=[f"not recorded: {exc}"])
                    log.error("rule reload refused, the running set stays: %s", exc)
                    return self.last
            kept = detector.adopt(self.stage.detector)
            self.stage.detector = detector
            self.stage.force_snapshot = True  # the stored snapshot belongs to the old rules
            self.state.detector = detector
            self.state.ruleset = ruleset
            self.last = ReloadResult(
                ok=True, at=time.time(), rules=len(ruleset.rules), hash=ruleset.hash, kept_state=kept
            )
            log.info(
                "rules reloaded: %d rules (%s), state kept for %d",
                len(ruleset.rules),
                ruleset.hash[:12],
                len(kept),
            )
            return self.last

    def _build(self) -> tuple[RuleSet, Detector | None]:
        ruleset = load_rules([self.path])
        if not ruleset.ok:
            return ruleset, None
        ruleset = with_warnings(ruleset)
        old = self.stage.detector
        settings = self.state.settings.detect
        detector = Detector(
            ruleset.rules,
            lateness=timedelta(milliseconds=old.clock.lateness_ms),
            live=old.clock.live,
            max_keys=settings.max_keys,
        )
        return ruleset, detector

    async def watch(
        self, stopping: asyncio.Event, on_error: Callable[[Exception], None] | None = None
    ) -> None:
        """Poll the rules path every ``interval`` seconds until ``stopping``; reload when it changed."""
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=self.interval)
            if stopping.is_set():
                return
            try:
                if await asyncio.to_thread(fingerprint, self.path) != self._seen:
                    await self.reload()
            except Exception as exc:  # a reload must never take the daemon down
                log.exception("rule reload failed")
                if on_error is not None:
                    on_error(exc)
