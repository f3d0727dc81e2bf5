"""The OpenAPI document of Vigil's HTTP API, as committed in ``docs/openapi.json``.

The running daemon serves the same document at ``/openapi.json``; the committed copy lets reviewers see
an API change in a diff, and a test fails when the two drift. Regenerate with
``python -m vigil.api.openapi > docs/openapi.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson

from vigil.api import create_app
from vigil.platform.principals import PrincipalTokens
from vigil.platform.service import platform_router
from vigil.settings import Settings
from vigil.streams import RunState


def document() -> dict[str, Any]:
    """The OpenAPI document of the daemon's app over a default state, with the platform routes (mounted
    when ``platform.enabled``); a route reads its provider only when called, so none is opened here."""
    app = create_app(RunState(settings=Settings(data_dir=Path("var"))))
    unopened: Any = None
    app.include_router(platform_router(unopened, unopened, unopened, PrincipalTokens(Path("unused"))))
    spec: dict[str, Any] = app.openapi()
    return spec


def render() -> bytes:
    return orjson.dumps(document(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


if __name__ == "__main__":
    sys.stdout.buffer.write(render())
