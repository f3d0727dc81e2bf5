"""The exception tree of Vigil.

Every error Vigil raises on purpose derives from :class:`VigilError`, so callers can tell our own, explained
failures apart from bugs. Errors about input carry where the input came from, because an analyst or operator
must be able to find and fix it::

    VigilError
    ├── ConfigError          a settings profile or environment override is wrong (path:line: key)
    ├── NormalizeError       one record cannot become a canonical event (dead-lettered, never fatal)
    └── RegistryError        a plug-in name is unknown or its reference does not load
"""

from __future__ import annotations


class VigilError(Exception):
    """Root of every error Vigil raises deliberately."""


class ConfigError(VigilError):
    """A settings profile or an environment override is invalid.

    ``path`` and ``line`` point at the offending key when it came from a YAML profile, so the message reads
    like a compiler diagnostic: ``config/local.yaml:12: ingest.drop_dir: ...``.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        self.path = path
        self.line = line
        self.message = message
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(f"{where}{message}")


class NormalizeError(VigilError):
    """A record cannot be normalised; ``reason`` goes verbatim into the dead-letter entry."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class RegistryError(VigilError):
    """A plug-in name is not registered, or its lazy reference cannot be imported."""
