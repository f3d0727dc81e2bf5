"""Positions: where a value, a key, or a character inside a scalar was written in the YAML source.

Rule problems are reported at ``line:col`` (1-based) where the analyst can fix them. :func:`locate` follows a
validation error's path through ruamel's node tree; :func:`scalar_offset_position` maps a character offset
inside a scalar's *value* (what an expression error reports) back to the source, through quotes, escapes,
line folding and block-scalar indentation.
"""

from __future__ import annotations

from typing import Any, Final

Pos = tuple[int, int]


def _lc(pair: Any) -> Pos:
    return (pair[0] + 1, pair[1] + 1)


def locate(node: Any, loc: tuple[Any, ...], start: Pos, *, key: bool = False) -> tuple[Pos, str]:
    """Walk a pydantic ``loc`` through the ruamel tree: the position and the dotted path it reached.

    Parts that are not in the tree (union tags, a missing key) are skipped; ``[key]`` (a bad mapping key)
    points at the key.
    """
    kpos = vpos = start
    path = ""
    cur = node
    for part in loc:
        lc = getattr(cur, "lc", None)
        if part == "[key]":
            return kpos, path
        if isinstance(cur, dict) and lc is not None and isinstance(part, str | int) and part in cur:
            kpos = _lc(lc.key(part))
            vpos = kpos if cur[part] is None else _lc(lc.value(part))
            path = f"{path}.{part}" if path else str(part)
            cur = cur[part]
        elif isinstance(cur, list) and lc is not None and isinstance(part, int) and 0 <= part < len(cur):
            kpos = vpos = _lc(lc.item(part))
            path = f"{path}[{part}]"
            cur = cur[part]
    return (kpos if key else vpos), path


_ESCAPE_LEN: Final = {"x": 4, "u": 6, "U": 10}


def scalar_offset_position(text: str, start: Pos, value: str, offset: int) -> Pos:
    """Map a 0-based character offset in a scalar's value to the ``(line, col)`` where the analyst wrote it.

    ``start`` is where the scalar begins in ``text`` (its quote, its block indicator, or its first
    character). Handles plain and quoted scalars (escapes, ``''``, folded line breaks) and literal/folded
    block scalars; if the source cannot be followed, the scalar's own position is returned.
    """
    lines = text.split("\n")
    row, col = start[0] - 1, start[1] - 1
    if row >= len(lines) or offset < 0:
        return start
    first = lines[row][col : col + 1]
    if first in {"|", ">"}:
        return _block_position(lines, row, value, offset) or start
    quote = first if first in {'"', "'"} else ""
    r, c, i = row, col + (1 if quote else 0), 0
    while r < len(lines):
        line = lines[r]
        while c < len(line):
            ch = line[c]
            if quote and ch == quote:
                if quote == "'" and line[c + 1 : c + 2] == "'":
                    if i == offset:
                        return (r + 1, c + 1)
                    i, c = i + 1, c + 2
                    continue
                return (r + 1, c + 1) if i == offset else start
            if quote == '"' and ch == "\\":
                if c + 1 >= len(line):  # escaped line break: continues without a space
                    break
                if i == offset:
                    return (r + 1, c + 1)
                i, c = i + 1, c + _ESCAPE_LEN.get(line[c + 1], 2)
                continue
            if i < len(value) and ch == value[i]:
                if i == offset:
                    return (r + 1, c + 1)
                i, c = i + 1, c + 1
            elif ch in " \t":
                c += 1  # trailing spaces dropped by line folding
            elif not quote and ch == "#":
                break
            else:
                return start
        if i >= len(value):
            return (r + 1, c + 1) if i == offset else start
        r += 1
        if r < len(lines):
            c = len(lines[r]) - len(lines[r].lstrip(" \t"))
            if lines[r].strip() and value[i] in " \n":
                if i == offset:
                    return (r + 1, c + 1)
                i += 1
    return start


def _block_position(lines: list[str], row: int, value: str, offset: int) -> Pos | None:
    """Literal (``|``) and folded (``>``) scalars: follow the content lines below the indicator."""
    first = next((ln for ln in lines[row + 1 :] if ln.strip()), None)
    head = value.lstrip("\n")
    if first is None:
        return None
    # the block's indentation: the least that leaves the first content line a prefix of the value
    indent = next(
        (n for n in range(len(first)) if not first[:n].strip() and head.startswith(first[n:])), None
    )
    if indent is None:
        return None
    i = 0
    for r in range(row + 1, len(lines)):
        line = lines[r]
        if line.strip() and len(line) - len(line.lstrip(" ")) < indent:
            return None  # the block ended before the offset
        content = line[indent:]
        if value[i : i + len(content)] != content:
            return None
        if offset < i + len(content):
            return (r + 1, indent + offset - i + 1)
        i += len(content)
        if i < len(value) and value[i] in " \n":
            if i == offset:
                return (r + 1, indent + len(content) + 1)
            i += 1
    return None
