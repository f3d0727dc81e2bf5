"""Vigil: event-driven security monitoring and auto-remediation for confidential ML platforms."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("vigil-cc")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"

__all__ = ["__version__"]
