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
    """Input that is not a plain line: an over-long line, or a whole multi-line document.

    ``value`` holds a parsed document (it stands for every line of the stream); otherwise ``head`` holds the
    first bytes of a line, or of a document, that exceeded its cap.
    """

    line: int
    offset: int
    length: int
    value: Any = NOT_PARSED
    head: bytes = b""
    #: set on the single item that stands for a document larger than ``max_document_bytes``
    too_large_document: bool = False


def read_items(
    stream: IO[bytes], *, max_record_bytes: int, max_document_bytes: int
) -> Iterator[bytes | Item]:
    """Yield each physical line of ``stream`` as bytes (newline included, blank lines too, so that the
    consumer can number lines and offsets by counting), or an :class:`Item` for an over-long line (which
    stands for exactly one physical line) or for a whole document (which stands for all of them).
    """
    lines = _physical(stream, max_record_bytes)
    first_line = 1
    first_offset = 0
    for first in lines:
        if type(first) is bytes and first.isspace():
            first_line += 1
            first_offset += len(first)
            yield first
            continue
        break
    else:
        return
    if type(first) is not bytes or _parses(first) or first.lstrip()[:1] not in (b"{", b"["):
        yield first
        yield from lines  # the JSON Lines hot path: plain delegation, no per-line Python work here
        return
    # A multi-line document: gather up to the cap and try it whole.
    buffered: list[bytes | Item] = [first]
    size = len(first)
    for item in lines:
        buffered.append(item)
        size += _length(item)
        if isinstance(item, Item) or size > max_document_bytes:
            rest = sum(_length(i) for i in lines)
            yield Item(first_line, first_offset, size + rest, head=first[:1024], too_large_document=True)
            return
    try:
        value = orjson.loads(b"".join(buffered))  # type: ignore[arg-type]
    except orjson.JSONDecodeError:
        yield from buffered
        return
    yield Item(first_line, first_offset, size, value=value)


def _length(item: bytes | Item) -> int:
    return item.length if isinstance(item, Item) else len(item)


def _parses(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def _physical(stream: IO[bytes], cap: int) -> Iterator[bytes | Item]:
    readline = stream.readline
    line_no = 0
    offset = 0
    while True:
        data = readline(cap + 1)
        if not data:
            return
        line_no += 1
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
            yield Item(line_no, offset, size, head=head)
        else:
            yield data
        offset += size


@contextmanager
def open_source(path: str) -> Iterator[IO[bytes]]:
    """Open a file for binary reading, or standard input for ``-``."""
    if path == "-":
        yield sys.stdin.buffer
        return
    with Path(path).open("rb", buffering=1 << 20) as fh:
        yield fh
