"""The committed OpenAPI document is the one the daemon serves (regenerate: see vigil/api/openapi.py)."""

from __future__ import annotations

from pathlib import Path

import orjson

from vigil.api.openapi import document, render

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_committed_openapi_matches_the_app() -> None:
    assert COMMITTED.read_bytes() == render(), "run: python -m vigil.api.openapi > docs/openapi.json"


def test_every_endpoint_is_documented() -> None:
    paths = document()["paths"]
    for path in ("/v1/events", "/v1/webhooks/eventgrid", "/v1/findings", "/v1/rules", "/v1/rules/reload"):
        assert path in paths
    assert "options" in paths["/v1/webhooks/eventgrid"]
    assert orjson.loads(COMMITTED.read_bytes())["info"]["title"] == "Vigil"
