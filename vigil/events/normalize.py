"""Normalizer contract, the normalizer registry, and per-record dispatch with auto-detection.

A normalizer turns one decoded source record (a JSON object) into one :class:`~vigil.events.model.Event`, or
into a :class:`~vigil.events.model.Control` for protocol messages. Each source format lives in its own module
under ``vigil/events/normalizers/`` and is registered by name in :data:`normalizers`; third-party formats
register through the ``vigil.normalizers`` entry-point group.

Auto-detection asks each normalizer's ``detect`` in priority order. ``detect`` methods are written to be
mutually exclusive, so the order only decides speed: the dispatcher first retries the normalizer that
matched the previous record, because a stream is almost always homogeneous.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar

import msgspec

from vigil.errors import NormalizeError
from vigil.events.fields import json_type
from vigil.events.model import Control, Event
from vigil.registry import Registry

#: what :meth:`Normalizer.from_json` returns: an event, an envelope's records, or ``None`` ("use dicts")
FastResult = Event | list[msgspec.Raw] | None


class Normalizer(ABC):
    """One source format. Subclasses set the class attributes and implement ``detect`` and ``normalize``."""

    #: registry name, used by ``vigil normalize --format NAME``
    name: ClassVar[str]
    #: the canonical ``kind`` of the events it makes
    kind: ClassVar[str]
    #: one line for ``vigil normalize --list-formats``
    summary: ClassVar[str]
    #: auto-detection order (lower first); only speed depends on it, since ``detect`` methods are exclusive
    priority: ClassVar[int] = 100

    @abstractmethod
    def detect(self, record: Mapping[str, Any]) -> bool:
        """Cheaply say whether ``record`` is in this format (a few key look-ups, no parsing)."""

    @abstractmethod
    def normalize(self, record: dict[str, Any]) -> Event | Control:
        """Build the canonical event; raise :class:`NormalizeError` with a precise reason if it cannot."""

    #: whether :meth:`from_json` is implemented (the batch layer only tries fast paths that exist)
    has_fast_path: ClassVar[bool] = False

    def from_json(self, data: bytes | msgspec.Raw) -> FastResult:
        """Optional fast path for high-volume formats: normalise straight from one JSON object's bytes.

        Return the event; or, when ``data`` is a ``{"records": [...]}`` envelope, the raw records; or
        ``None`` whenever anything is unusual, so the dict path (with its precise errors) decides. It must
        produce exactly the event :meth:`normalize` would, and never raise.
        """
        return None


normalizers: Registry[type[Normalizer]] = Registry("vigil.normalizers")

# Built-in formats, referenced lazily so that importing Vigil imports none of them.
_BUILTIN = {
    "activity": "vigil.events.normalizers.activity:ActivityLogNormalizer",
    "keyvault": "vigil.events.normalizers.keyvault:KeyVaultAuditNormalizer",
    "storage": "vigil.events.normalizers.storage:StorageLogNormalizer",
    "sentinel-alert": "vigil.events.normalizers.sentinel:SecurityAlertNormalizer",
    "sentinel-incident": "vigil.events.normalizers.sentinel:SentinelIncidentNormalizer",
    "monitor-alert": "vigil.events.normalizers.monitor:CommonAlertNormalizer",
    "eventgrid": "vigil.events.normalizers.eventgrid:EventGridNormalizer",
    "cloudevents": "vigil.events.normalizers.eventgrid:CloudEventNormalizer",
    "attestation": "vigil.events.normalizers.attestation:AttestationNormalizer",
    "telemetry": "vigil.events.normalizers.telemetry:TelemetryNormalizer",
    "platform": "vigil.events.normalizers.platform:PlatformNormalizer",
    "generic": "vigil.events.normalizers.generic:GenericNormalizer",
}
for _name, _ref in _BUILTIN.items():
    normalizers.add(_name, _ref)

#: errors a normalizer may hit on a record of an unexpected shape; they become dead letters, never crashes
_SHAPE_ERRORS = (KeyError, TypeError, AttributeError, ValueError, IndexError, OverflowError)


class Dispatcher:
    """Routes records to normalizers: one forced format, or auto-detection per record."""

    def __init__(self, fmt: str = "auto") -> None:
        if fmt == "auto":
            self._order = sorted(
                (cls() for _, cls in normalizers.items()), key=lambda n: (n.priority, n.name)
            )
            self._forced: Normalizer | None = None
        else:
            self._forced = normalizers.get(fmt)()
            self._order = [self._forced]
        self._last: Normalizer | None = self._forced
        #: the normalizer whose :meth:`~Normalizer.from_json` the batch layer tries first, if any
        self.fast: Normalizer | None = next((n for n in self._order if n.has_fast_path), None)
        #: name of the normalizer that handled (or failed on) the last record, for dead-letter entries
        self.last_format: str | None = None

    def detect(self, record: Any) -> Normalizer:
        """Return the normalizer for ``record`` or raise :class:`NormalizeError` saying why none fits."""
        if not isinstance(record, dict):
            raise NormalizeError(f"expected a JSON object, got {json_type(record)}")
        if self._forced is not None:
            return self._forced
        last = self._last
        if last is not None and last.detect(record):
            return last
        for norm in self._order:
            if norm is not last and norm.detect(record):
                self._last = norm
                return norm
        keys = ", ".join(sorted(str(k) for k in record)[:12]) or "none"
        raise NormalizeError(f"no normalizer recognises this record (top-level keys: {keys})")

    def normalize(self, record: Any) -> Event | Control:
        """Detect and normalise one record; every failure is a :class:`NormalizeError` with a reason."""
        self.last_format = None
        norm = self.detect(record)
        self.last_format = norm.name
        try:
            return norm.normalize(record)
        except NormalizeError:
            raise
        except RecursionError:
            raise NormalizeError(f"{norm.name}: record nested too deeply") from None
        except _SHAPE_ERRORS as exc:
            raise NormalizeError(f"{norm.name}: malformed record: {type(exc).__name__}: {exc}") from None
