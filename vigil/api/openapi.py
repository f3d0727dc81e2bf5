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
from vigil.settings import Settings
from vigil.streams import RunState


def document() -> dict[str, Any]:
    """The OpenAPI document of an app over a default state (routes do not depend on the state)."""
    spec: dict[str, Any] = create_app(RunState(settings=Settings(data_dir=Path("var")))).openapi()
    return spec


def render() -> bytes:
    return orjson.dumps(document(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


if __name__ == "__main__":
    sys.stdout.buffer.write(render())
