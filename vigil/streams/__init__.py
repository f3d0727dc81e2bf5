"""Event sources and the embedded runner that drives them.

Today there is one source, the drop folder (:mod:`vigil.streams.dropfolder`), and one runner,
:func:`vigil.streams.embedded.serve`, which runs it beside the HTTP listener in one asyncio loop. The state
they share with the HTTP API lives here, in plain dataclasses, so that :mod:`vigil.api` can read it without
importing any source: sources write the counters from the event loop thread, the API reads them from the
same loop, and no lock is needed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from vigil import __version__
from vigil.settings import Settings

if TYPE_CHECKING:
    from vigil.detectors.engine import Detector
    from vigil.events.model import Event
    from vigil.response.engine import ResponseEngine
    from vigil.rules.model import RuleSet
    from vigil.store.sqlite import Store
    from vigil.streams.alert_run import AlertRuntime
    from vigil.streams.azure_run import AzureRuntime
    from vigil.streams.pipeline import DetectStats
    from vigil.streams.platform_run import PlatformRuntime
    from vigil.streams.reload import Reloader


@dataclass
class IngestStats:
    """What the drop-folder watcher has done so far; exported by ``/metrics`` and ``/v1/status``."""

    #: the watcher task is alive (set when it starts, cleared when it ends for any reason)
    running: bool = False
    #: completed scans, successful or not
    scans: int = 0
    #: Unix time at which the last scan (listing plus the files it took) ended
    last_scan_at: float | None = None
    last_scan_ok: bool = False
    #: why the last scan failed (an output or listing error; a bad input file is not a scan failure)
    last_error: str | None = None
    #: the file being normalised now, if any
    current_file: str | None = None
    #: candidate files seen in the folder at the last scan, taken or still settling
    pending_files: int = 0
    events: int = 0
    dead_letters: int = 0
    control_records: int = 0
    files_processed: int = 0
    files_failed: int = 0

    def counters(self) -> dict[str, int]:
        """The monotonically increasing counts, by their short names."""
        return {
            "events": self.events,
            "dead_letters": self.dead_letters,
            "control_records": self.control_records,
            "files_processed": self.files_processed,
            "files_failed": self.files_failed,
        }


K = TypeVar("K")


@dataclass
class HttpIngestStats:
    """What the HTTP ingestion endpoints have done, per source; exported by ``/metrics``."""

    accepted: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    controls: dict[str, int] = field(default_factory=dict)
    #: (source, reason) -> rejected calls (401)
    rejected: dict[tuple[str, str], int] = field(default_factory=dict)
    too_large: dict[str, int] = field(default_factory=dict)
    throttled: dict[str, int] = field(default_factory=dict)
    #: requests answered 503 because the store could not commit them
    store_errors: dict[str, int] = field(default_factory=dict)
    #: connections closed at once, past ``http.max_connections`` (``vigil.api.listen``)
    connections_refused: int = 0
    #: connections closed for not sending a request head within ``http.header_timeout``
    header_timeouts: int = 0
    #: connections closed for not sending a request's whole body within ``http.body_timeout``
    body_timeouts: int = 0
    #: bytes of request bodies the ingestion calls in progress hold or may still read
    buffered: int = 0

    @staticmethod
    def bump(counter: dict[K, int], key: K, n: int = 1) -> None:
        counter[key] = counter.get(key, 0) + n


@dataclass
class RunState:
    """Everything the HTTP API reports about a running ``vigil run`` process."""

    settings: Settings
    ingest: IngestStats = field(default_factory=IngestStats)
    started_at: float = field(default_factory=time.time)
    version: str = __version__
    #: the embedded store (findings, dead letters, the event log); None until the runner opened it
    store: Store | None = None
    #: the rule set the detector runs (its hash, rules and warnings)
    ruleset: RuleSet | None = None
    #: the detector (its stats(): late events, open keys, per-rule counters)
    detector: Detector | None = None
    #: the detect stage's counters (events, findings, new findings, snapshots)
    detect: DetectStats | None = None
    http_ingest: HttpIngestStats = field(default_factory=HttpIngestStats)
    #: called after an ingestion request appended events (wakes the detect stage); any thread
    wake: Callable[[], None] | None = None
    #: hands events just committed (their seqs, 0 for duplicates; the events) to the detect stage, which
    #: then need not decode them back from the store
    offer: Callable[[Sequence[int], Sequence[Event]], None] | None = None
    #: events in the store not yet detected (ingestion answers 429 above ``http.max_backlog``)
    backlog: Callable[[], int] | None = None
    #: the local ingestion token, accepted by sources that configure no credentials
    local_token: str | None = None
    #: the rule set's hot reload (``POST /v1/rules/reload``; its last result in ``/v1/rules``)
    reloader: Reloader | None = None
    #: the local platform, the audit log and the platform feed; None until the runner opened them
    platform: PlatformRuntime | None = None
    #: the Azure providers and sources (``azure.enabled``); None otherwise
    azure: AzureRuntime | None = None
    #: the response engine (actions, approvals); None until the runner started it
    response: ResponseEngine | None = None
    #: alerts the response engine raised, by kind (blast_radius, dry_run, approval, failure ...)
    response_alerts: Counter[str] = field(default_factory=Counter)
    #: checks node telemetry signatures against attested keys before HTTP-ingested events are stored
    telemetry_check: Callable[[list[Event]], list[Event]] | None = None
    #: the alert sinks, their outbox and the alert stage; None until the runner started them
    alerting: AlertRuntime | None = None


__all__ = ["HttpIngestStats", "IngestStats", "RunState"]
