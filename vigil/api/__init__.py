"""Vigil's HTTP API (FastAPI).

For now the operational endpoints only (:mod:`vigil.api.health`): liveness, readiness, Prometheus metrics
and a status document. Later issues add the REST API, authentication, RBAC and the web console to the same
app, which is why :func:`create_app` is the single factory every runner and test goes through.
"""

from __future__ import annotations

from vigil.api.health import create_app

__all__ = ["create_app"]
