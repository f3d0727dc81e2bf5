"""Vigil's HTTP API (FastAPI).

The operational endpoints (:mod:`vigil.api.health`: liveness, readiness, Prometheus metrics, a status
document) and the read-only REST API (:mod:`vigil.api.read`: findings, dead letters, the loaded rules).
Later issues add writes, authentication, RBAC and the web console to the same app, which is why
:func:`create_app` is the single factory every runner and test goes through.
"""

from __future__ import annotations

from vigil.api.health import create_app

__all__ = ["create_app"]
