"""Types of the compiled module ``_activity.c`` (the Activity Log fast path; see normalizers/activity.py)."""

from collections.abc import Callable, Set
from typing import Any

from vigil.events.model import Event

def configure(
    *,
    event: type,
    actor: type,
    frozen_map: type,
    no_actor: Any,
    categories: Set[str],
    normalize_error: type[BaseException],
    parse_time: Callable[..., Any],
    parse_resource_id: Callable[[str], Any],
    time_id: Callable[[str, str, int], str],
    to_ms: Callable[[Any], int],
    outcome: Callable[[Any], str],
    severity: Callable[[Any], str | None],
    strip_port: Callable[[Any], str | None],
    resource_cache: dict[str, Any],
    outcomes: dict[str, Any],
    severities: dict[str, Any],
) -> None: ...
def normalize(data: Any, /) -> Event | None: ...
def json_path(data: Any, keys: tuple[str, ...], /) -> Any: ...  # bytes, None or NotImplemented
