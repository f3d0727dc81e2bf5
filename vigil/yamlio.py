"""Line-aware YAML loading for operator-written files (settings profiles now, rule files next).

Operators must be told *where* a problem is, so files are parsed with ruamel's round-trip loader, which
remembers the line of every key, and the plain data is validated separately; :func:`line_of` maps a
validation error's location back to a line. Error messages never quote the document, which may hold secrets.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

from ruamel.yaml import YAML
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from vigil.errors import ConfigError


class YamlDocument(NamedTuple):
    """A parsed profile: its path, the plain data for validation and the ruamel node tree for line numbers."""

    path: str | None
    data: dict[str, Any]
    node: Any


def read_profile(path: Path) -> YamlDocument:
    """Parse a profile with the round-trip loader, which remembers the line of every key."""
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read settings profile: {exc}", path=where) from None
    try:
        node = YAML(typ="rt", pure=True).load(text)
    except MarkedYAMLError as exc:
        # Only the problem text: str(exc) quotes the document around the error, which may hold a secret.
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        if isinstance(exc, DuplicateKeyError):
            key = re.match(r'found duplicate key "(.*?)" with value', exc.problem or "")
            problem = f"duplicate key {key.group(1)!r}" if key else "duplicate key"
        else:
            problem = exc.problem or "syntax error"
            cm = exc.context_mark
            if exc.context and cm is not None and cm.line + 1 != line:
                problem += f" ({exc.context} started on line {cm.line + 1})"
            elif exc.context:
                problem += f" ({exc.context})"
        raise ConfigError(f"invalid YAML: {problem}", path=where, line=line) from None
    except YAMLError as exc:
        raise ConfigError(f"invalid YAML: {type(exc).__name__}", path=where) from None
    if node is None:
        return YamlDocument(where, {}, None)
    if not isinstance(node, dict):
        raise ConfigError(
            f"expected a mapping of settings at the top level, got {describe_type(node)}", path=where, line=1
        )
    return YamlDocument(where, _plain(node), node)


def line_of(node: Any, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest key of ``loc`` present in the ruamel tree (None if none is)."""
    line = None
    for part in loc:
        lc = getattr(node, "lc", None)
        if isinstance(node, dict) and part in node and lc is not None:
            line = lc.key(part)[0] + 1
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node) and lc is not None:
            line = lc.item(part)[0] + 1
        else:
            break
        node = node[part]
    return line


def plain(value: Any, *, data_keys: frozenset[str] = frozenset()) -> Any:
    """A ruamel tree as plain dicts, lists and scalars; empty mapping values dropped (they mean defaults),
    except below a key in ``data_keys``, whose values are data where ``null`` means null (test events)."""
    return _plain(value, data_keys)


def _plain(value: Any, data_keys: frozenset[str] = frozenset(), keep_null: bool = False) -> Any:
    """ruamel's scalar subclasses as plain Python values; empty values dropped (they mean the default)."""
    if isinstance(value, dict):
        return {
            str(k): _plain(v, data_keys, keep_null or str(k) in data_keys)
            for k, v in value.items()
            if v is not None or keep_null
        }
    if isinstance(value, list):
        return [_plain(v, data_keys, keep_null) for v in value]
    for base in (bool, int, float, str):
        if isinstance(value, base):
            return base(value)
    return value


def describe_type(value: Any) -> str:
    """A YAML value's type in words for messages ("a list", "a string"); never the value itself."""
    names = {
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        dict: "a mapping",
    }
    return next(
        (n for t, n in names.items() if isinstance(value, t)), "nothing" if value is None else "a value"
    )
