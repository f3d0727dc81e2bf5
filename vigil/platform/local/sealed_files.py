"""Envelopes (:mod:`.envelope`) to and from data files, the crypto off the event loop.

:func:`write_file` and :func:`read_file` stream an envelope to and from a data file, the crypto in a worker
thread several chunks per hop (:data:`.envelope.BATCH_BYTES`), so the hand-off costs little and the event
loop is never blocked for a whole object. cryptography releases the GIL inside each AES call (two threads
decrypt about twice as fast as one), but the framing between calls is Python, so while a transfer runs the
loop can still wait for the GIL up to the interpreter's switch interval (5 ms by default) per wake-up
(``bench/storage.py`` reports the longest stall it sees), and a worker *thread* decrypting beside a loop
busy in Python (a training step) waits as long per chunk: bulk readers use processes
(``bench/training.py``). :func:`read_file_into` opens a whole object in one hop, straight into a buffer
the caller reuses.

:func:`remove_orphans` is the storage's start-up sweep of data files a crash left without a row.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import shutil
import threading
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import IO

from vigil.fsutil import fsync_dir
from vigil.platform.errors import IntegrityError
from vigil.platform.local.envelope import (
    BATCH_BYTES,
    FIXED_HEADER,
    MIN_CHUNK,
    TAG_SIZE,
    Buffer,
    Decryptor,
    Encryptor,
    header_length,
)

log = logging.getLogger(__name__)


def _seal_blocks(out: IO[bytes], enc: Encryptor, blocks: Iterable[Buffer], install: Path | None) -> None:
    """Seal ``blocks`` into ``out``; with ``install``, also the final chunk, fsync, close, rename to it."""
    for block in blocks:
        out.write(enc.update(block))
    if install is not None:
        out.write(enc.finish())
        out.flush()
        os.fsync(out.fileno())
        out.close()
        os.replace(out.name, install)
        fsync_dir(install.parent)


async def write_file(path: Path, enc: Encryptor, data: Buffer | AsyncIterator[bytes]) -> None:
    """Seal ``data`` into ``path`` durably: a temporary file beside it, fsynced, renamed, directory fsynced;
    nothing is left at the temporary path on failure. A stream's blocks are gathered on the loop until they
    add up to :data:`BATCH_BYTES`, then sealed and written in a worker thread."""
    temp = path.with_name(f".{path.name}.tmp")
    try:
        with temp.open("wb") as out:
            out.write(enc.header)
            if isinstance(data, bytes | bytearray | memoryview):
                view = memoryview(data)
                parts = [view[i : i + BATCH_BYTES] for i in range(0, len(view), BATCH_BYTES)]
                await asyncio.to_thread(_seal_blocks, out, enc, parts, path)
            else:
                blocks: list[bytes] = []
                async for block in data:
                    blocks.append(block)
                    if sum(map(len, blocks)) >= BATCH_BYTES:
                        await asyncio.to_thread(_seal_blocks, out, enc, blocks, None)
                        blocks = []
                await asyncio.to_thread(_seal_blocks, out, enc, blocks, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _open_batch(src: io.FileIO, dec: Decryptor, buf: bytearray, last: bool, size: int) -> list[bytes]:
    n = src.readinto(buf) or 0
    chunks = dec.update_bytes(memoryview(buf)[:n])
    if last:
        final = dec.finish()
        chunks += [final] if final else []
        if dec.size != size:
            raise IntegrityError(f"object {dec.identity.label}: {dec.size} bytes, its metadata says {size}")
    elif n < len(buf):
        raise IntegrityError(f"object {dec.identity.label}: the data file shrank while it was read")
    return chunks


_scratch = threading.local()


def _scratch_buffer(size: int) -> bytearray:
    """A read buffer kept per worker thread: a fresh multi-megabyte allocation per object costs page faults
    that can take longer than decrypting it."""
    buf: bytearray | None = getattr(_scratch, "buf", None)
    if buf is None or len(buf) < size:
        buf = _scratch.buf = bytearray(size)
    return buf


def read_file_into(path: Path, dec: Decryptor, size: int, out: bytearray | memoryview) -> None:
    """Decrypt the whole plaintext of ``path``'s envelope into ``out[:size]``, every chunk authenticated, in
    the calling thread: run it in a worker thread (AES-GCM releases the GIL, so several such reads proceed
    in parallel, though each chunk takes the GIL back once) or a worker process. A bytearray ``out`` grows
    when shorter; a shorter memoryview (shared memory, say) is a ValueError. ``size`` as for
    :func:`read_file`. Reusing ``out`` across objects saves the page faults of a fresh buffer each time."""
    if len(out) < size:
        if not isinstance(out, bytearray):
            raise ValueError(f"the output buffer holds {len(out)} bytes; the object has {size}")
        out.extend(bytes(size - len(out)))
    try:
        src = path.open("rb", buffering=0)
    except FileNotFoundError:
        raise IntegrityError(f"object {dec.identity.label}: the data file is missing") from None
    view = memoryview(out)[:size]
    with src:
        buf = _scratch_buffer(BATCH_BYTES + BATCH_BYTES // MIN_CHUNK * TAG_SIZE)
        written = 0
        while n := src.readinto(buf):
            try:
                written += dec.update_into(memoryview(buf)[:n], view[written:])
            except ValueError:  # more whole chunks than the recorded size holds
                raise IntegrityError(f"object {dec.identity.label}: longer than its metadata says") from None
        final = dec.finish()
        if written + len(final) != size:
            raise IntegrityError(f"object {dec.identity.label}: {dec.size} bytes, its metadata says {size}")
        view[written:] = final


async def read_file(path: Path, dec: Decryptor, size: int) -> AsyncIterator[bytes]:
    """Stream the plaintext of ``path``'s envelope chunk by chunk, each authenticated first (``size``: the
    plaintext size the caller's metadata records); chunks are fresh ``bytes`` the consumer may keep. The
    file is opened at the first step, so a reader keeps the version it started with even if the object is
    replaced meanwhile."""
    try:
        src = path.open("rb", buffering=0)
    except FileNotFoundError:
        raise IntegrityError(f"object {dec.identity.label}: the data file is missing") from None
    with src:
        left = os.fstat(src.fileno()).st_size
        head = src.read(FIXED_HEADER)  # the header alone, so that every batch is whole records
        if len(head) == FIXED_HEADER:
            head += src.read(max(0, header_length(head) - FIXED_HEADER))
        dec.update(head)
        left -= len(head)
        records = max(1, BATCH_BYTES // dec.chunk_size) if dec.chunk_size else 1
        buf = bytearray(max(1, min(left, records * (dec.chunk_size + TAG_SIZE))))
        while True:
            last = left <= len(buf)
            for chunk in await asyncio.to_thread(_open_batch, src, dec, buf, last, size):
                yield chunk
            if last:
                return
            left -= len(buf)


def remove_orphans(objects: Path, known: set[str], containers: set[str]) -> None:
    """Remove data files under ``objects`` (``<container>/<object id>``) that are not in ``known`` and
    container folders not in ``containers``: a put or delete cut short by a crash. Warns of the reverse
    (rows without a file: reads of them will fail)."""
    known = set(known)
    removed = 0
    for file in objects.glob("*/*"):
        key = f"{file.parent.name}/{file.name}"
        if key not in known:
            file.unlink()
            removed += 1
        known.discard(key)
    for folder in objects.iterdir():
        if folder.name not in containers:
            shutil.rmtree(folder, ignore_errors=True)
    if removed:
        log.info("storage %s: removed %d orphan data files", objects.parent, removed)
    if known:
        log.warning("storage %s: %d objects have no data file (reads will fail)", objects.parent, len(known))
