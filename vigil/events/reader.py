"""Split a byte stream into JSON records: JSON Lines, or one JSON document, with bounded memory.

Input may be JSON Lines (each line any JSON value), or a single JSON document spread over many lines (a
pretty-printed array or records envelope). The reader decides from the first non-blank line: if it parses on
its own, the stream is JSON Lines and is read line by line forever; if it does not, the reader collects the
stream up to ``max_document_bytes`` and parses it as one document, falling back to JSON Lines when that
fails too (so a JSONL file with a broken first line still yields its good lines).

No line longer than ``max_record_bytes`` is ever held in memory: the reader keeps its first bytes and skips
to the next newline, and the caller dead-letters it with its offset and length.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Final, NamedTuple

import orjson

NOT_PARSED: Final[Any] = object()
_DRAIN_CHUNK: Final = 1 << 20


class Item(NamedTuple):
    """One unit of input.

    Exactly one of these holds: ``value`` is a parsed document (document mode); ``data`` holds the line's
    bytes (JSON Lines mode, not yet parsed); ``data`` is ``None`` and ``head`` holds the first bytes of a line
    that exceeded the cap.
    """

    line: int
    offset: int
    length: int
    data: bytes | None
    value: Any = NOT_PARSED
    head: bytes = b""
    #: set on the single item that stands for a document larger than ``max_document_bytes``
    too_large_document: bool = False


def read_items(stream: IO[bytes], *, max_record_bytes: int, max_document_bytes: int) -> Iterator[Item]:
    """Yield the items of ``stream`` (see module docstring)."""
    lines = _lines(stream, max_record_bytes)
    for item in lines:
        if item.data is None:
            yield item
            continue
        if item.data.isspace():
            continue
        first = item
        break
    else:
        return
    data = first.data
    assert data is not None
    if _parses(data) or data.lstrip()[:1] not in (b"{", b"["):
        yield first
        for item in lines:  # the JSON Lines hot loop: one generator level, no per-line calls
            data = item.data
            if data is None or not data.isspace():
                yield item
        return
    # A multi-line document: gather up to the cap and try it whole.
    buffered = [first]
    size = first.length
    for item in lines:
        buffered.append(item)
        size += item.length
        if item.data is None or size > max_document_bytes:
            rest = sum(i.length for i in lines)
            yield Item(
                line=first.line,
                offset=first.offset,
                length=size + rest,
                data=None,
                head=data,
                too_large_document=True,
            )
            return
    whole = b"".join(i.data for i in buffered if i.data is not None)
    try:
        value = orjson.loads(whole)
    except orjson.JSONDecodeError:
        yield from _non_blank(iter(buffered))
        return
    yield Item(line=first.line, offset=first.offset, length=size, data=None, value=value)


def _parses(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def _non_blank(items: Iterator[Item]) -> Iterator[Item]:
    for item in items:
        if item.data is None or not item.data.isspace():
            yield item


def _lines(stream: IO[bytes], cap: int) -> Iterator[Item]:
    readline = stream.readline
    line_no = 0
    offset = 0
    while True:
        data = readline(cap + 1)
        if not data:
            return
        line_no += 1
        start = offset
        size = len(data)
        if size > cap and data[-1:] != b"\n":
            head = data[:1024]
            while True:
                more = readline(_DRAIN_CHUNK)
                if not more:
                    break
                size += len(more)
                if more[-1:] == b"\n":
                    break
            offset += size
            yield Item(line_no, start, size, None, NOT_PARSED, head)
            continue
        offset += size
        yield Item(line_no, start, size, data)


@contextmanager
def open_source(path: str) -> Iterator[IO[bytes]]:
    """Open a file for binary reading, or standard input for ``-``."""
    if path == "-":
        yield sys.stdin.buffer
        return
    with Path(path).open("rb", buffering=1 << 20) as fh:
        yield fh
