"""The streaming object format of the local secure storage: AES-256-GCM chunks bound to one object.

Why chunks: an object can be far larger than memory, and a reader must be able to use the first megabyte
before the last one is read, yet never see a byte that is not authenticated. Each object gets a fresh random
256-bit data key (DEK, :func:`new_data_key`) that only ever leaves the process wrapped by the key vault.

Layout (all integers big-endian)::

    header   magic "VGLE" | version u8 = 1 | header length u16 | chunk size u32 | nonce prefix (4 bytes)
             | container, name, object id: each u16 length + UTF-8
    chunk i  AES-256-GCM(DEK, nonce = prefix || i as u64, AAD = SHA-256(header) || i as u64 || final u8)
             = ciphertext || 16-byte tag; every chunk but the last holds exactly chunk size bytes, the
             last (final = 1) holds the rest: 0 to chunk size - 1 bytes

Invariants, each enforced by the AAD or the nonce rather than by a check someone could forget:

* the nonce is unique per DEK (the chunk index never repeats, and the DEK is never reused);
* the header is authenticated by every chunk (its digest is in each AAD), so an edited chunk size, prefix or
  object identity fails every chunk, and a file moved to another object fails at once (other identity,
  other DEK);
* a chunk moved to another position fails (index in nonce and AAD); every object ends with exactly one
  final chunk, shorter than a full one (an empty one when the size is a multiple of the chunk size), so a
  stream that stops at a chunk boundary has lost its end (truncation), and bytes after the final chunk turn
  it into a full chunk opened as non-final (extension).

Because a full chunk is never the final one, neither side holds a chunk back until it knows whether more
follows: each full chunk (record, when opening) is sealed (opened) as soon as it is complete, and only the
short tail waits for ``finish``. Per chunk the work is two small ``bytes`` concatenations and one
``encrypt_into``/``decrypt_into`` into a preallocated buffer; input is sliced through ``memoryview``
without copying, except a chunk split across two fed blocks. Views returned point into those reused
buffers and are valid until the next call on the same object (:meth:`Decryptor.update_bytes` returns
chunks to keep instead). ``bench/storage.py`` measures this against raw AES-GCM of the same chunks.

Reading and writing envelopes to data files, off the event loop, is :mod:`.sealed_files`.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vigil.platform.errors import IntegrityError

MAGIC: Final = b"VGLE"
VERSION: Final = 1
TAG_SIZE: Final = 16
KEY_SIZE: Final = 32
MIN_CHUNK: Final = 64 * 1024
MAX_CHUNK: Final = 64 * 1024 * 1024
DEFAULT_CHUNK: Final = 1024 * 1024
#: plaintext bytes sealed or opened per worker-thread hop by write_file/read_file
BATCH_BYTES: Final = 8 * 1024 * 1024

_FIXED: Final = struct.Struct(">4sBHI4s")  # magic, version, header length, chunk size, nonce prefix
#: the bytes of a header that give its whole length (:func:`header_length`)
FIXED_HEADER: Final = _FIXED.size
_LEN: Final = struct.Struct(">H")

#: what update() accepts: any contiguous bytes-like object
Buffer: TypeAlias = bytes | bytearray | memoryview


def new_data_key() -> bytes:
    """A fresh random 256-bit data key, one per object."""
    return os.urandom(KEY_SIZE)


@dataclass(frozen=True, slots=True)
class ObjectIdentity:
    """Which object a ciphertext belongs to; written into the header and so bound to every chunk."""

    container: str
    name: str
    object_id: str

    @property
    def label(self) -> str:
        return f"{self.container}/{self.name} (object {self.object_id})"

    def encode(self) -> bytes:
        parts = [part.encode() for part in (self.container, self.name, self.object_id)]
        return b"".join(_LEN.pack(len(raw)) + raw for raw in parts)


def encode_header(identity: ObjectIdentity, chunk_size: int, prefix: bytes) -> bytes:
    """The header bytes for an object (see module docstring)."""
    ident = identity.encode()
    return _FIXED.pack(MAGIC, VERSION, _FIXED.size + len(ident), chunk_size, prefix) + ident


def header_length(fixed: bytes) -> int:
    """The whole header's length, from its first :data:`FIXED_HEADER` bytes (checked when opened)."""
    return int(_FIXED.unpack(fixed[:FIXED_HEADER])[2])


def sealed_size(size: int, chunk_size: int, header_size: int) -> int:
    """The length of the envelope of a ``size``-byte object: header, chunks and one tag per chunk."""
    return header_size + size + (size // chunk_size + 1) * TAG_SIZE


class _Units:
    """Cuts a stream fed in pieces of any size into whole units of ``size`` bytes, keeping the rest: views
    of the input where a unit lies inside one piece, a copy in its own buffer where it spans two."""

    def __init__(self, size: int) -> None:
        self.size, self.buf, self.held = size, bytearray(size), 0

    def most(self, more: int) -> int:
        return (self.held + more) // self.size

    def split(self, src: memoryview) -> Iterator[memoryview]:
        """Each unit must be used before the next is asked for (the spanning one lives in ``buf``)."""
        pos = 0
        if self.held:
            pos = min(len(src), self.size - self.held)
            self.buf[self.held : self.held + pos] = src[:pos]
            self.held += pos
            if self.held < self.size:
                return
            yield memoryview(self.buf)
        while len(src) - pos >= self.size:
            yield src[pos : pos + self.size]
            pos += self.size
        self.held = len(src) - pos
        self.buf[: self.held] = src[pos:]

    def rest(self) -> memoryview:
        return memoryview(self.buf)[: self.held]


class _Cipher:
    """What both directions share: the key, the identity, the chunk index, nonce and AAD."""

    def __init__(self, key: bytes, identity: ObjectIdentity) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"a data key is {KEY_SIZE} bytes")
        self._aead = AESGCM(key)
        self.identity = identity
        self._prefix = self._digest = b""
        self._index = 0
        self._finished = False
        #: plaintext bytes sealed or opened so far
        self.size = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity.label}, chunk={self._index})"

    def _next(self, final: bool) -> tuple[bytes, bytes]:
        """The nonce and AAD of the next chunk."""
        index = self._index.to_bytes(8, "big")
        self._index += 1
        return self._prefix + index, self._digest + index + (b"\x01" if final else b"\x00")

    def _finish(self) -> None:
        if self._finished:
            raise ValueError(f"the {type(self).__name__.lower()} is finished")
        self._finished = True


class Encryptor(_Cipher):
    """Seals one object: write :attr:`header`, then what each :meth:`update` and :meth:`finish` return.

    ``update`` accepts blocks of any size; it returns the sealed chunks it completed as one contiguous view
    into a buffer the encryptor reuses (valid until the next call).
    """

    def __init__(self, key: bytes, identity: ObjectIdentity, *, chunk_size: int = DEFAULT_CHUNK) -> None:
        if not MIN_CHUNK <= chunk_size <= MAX_CHUNK:
            raise ValueError(f"chunk size must be between {MIN_CHUNK} and {MAX_CHUNK} bytes")
        super().__init__(key, identity)
        self.chunk_size = chunk_size
        self._prefix = os.urandom(4)
        self.header = encode_header(identity, chunk_size, self._prefix)
        self._digest = hashlib.sha256(self.header).digest()
        self._units = _Units(chunk_size)
        self._out = bytearray()

    def _reserve(self, chunks: int) -> memoryview:
        if len(self._out) < chunks * (self.chunk_size + TAG_SIZE):
            self._out = bytearray(chunks * (self.chunk_size + TAG_SIZE))
        return memoryview(self._out)

    def update(self, data: Buffer) -> memoryview:
        """Feed plaintext; returns the chunks it completed (possibly none), sealed."""
        if self._finished:
            raise ValueError("the encryptor is finished")
        src = memoryview(data).cast("B")
        self.size += len(src)
        out, o, record = self._reserve(self._units.most(len(src))), 0, self.chunk_size + TAG_SIZE
        for plain in self._units.split(src):
            nonce, aad = self._next(False)
            self._aead.encrypt_into(nonce, plain, aad, out[o : o + record])
            o += record
        return out[:o]

    def finish(self) -> memoryview:
        """Seal the final chunk (the bytes after the last full chunk, possibly none); returns it."""
        self._finish()
        plain = self._units.rest()
        out = self._reserve(1)[: len(plain) + TAG_SIZE]
        nonce, aad = self._next(True)
        self._aead.encrypt_into(nonce, plain, aad, out)
        return out


class Decryptor(_Cipher):
    """Opens one object's envelope: feed the bytes in any blocks, then call :meth:`finish`.

    ``identity`` is the object the caller expects; a header naming another one is an
    :class:`~vigil.platform.errors.IntegrityError`, as is any chunk that fails authentication (naming the
    chunk index) and a stream that ends before its final chunk.
    """

    def __init__(self, key: bytes, identity: ObjectIdentity) -> None:
        super().__init__(key, identity)
        self._head = bytearray()
        self._header_len = 0
        self.chunk_size = 0  # known once the header is read
        self._units = _Units(0)
        self._out = bytearray()

    def _fail(self, what: str) -> IntegrityError:
        return IntegrityError(f"object {self.identity.label}: {what}")

    def _read_header(self, src: memoryview) -> memoryview:
        """Collect the header from the start of the stream; returns what follows it."""
        if len(self._head) < _FIXED.size:
            take = min(len(src), _FIXED.size - len(self._head))
            self._head += src[:take]
            src = src[take:]
            if len(self._head) < _FIXED.size:
                return src
            magic, version, length, chunk, prefix = _FIXED.unpack_from(self._head)
            if magic != MAGIC or version != VERSION:
                raise self._fail("not a Vigil envelope of a known version")
            if not MIN_CHUNK <= chunk <= MAX_CHUNK or length < _FIXED.size:
                raise self._fail("header out of range")
            self._header_len, self.chunk_size, self._prefix = length, chunk, prefix
        take = min(len(src), self._header_len - len(self._head))
        self._head += src[:take]
        src = src[take:]
        if len(self._head) < self._header_len:
            return src
        if bytes(self._head[_FIXED.size :]) != self.identity.encode():
            raise self._fail("the data belongs to another object")
        self._digest = hashlib.sha256(self._head).digest()
        self._units = _Units(self.chunk_size + TAG_SIZE)  # a full record is never the final one
        return src

    def _open(self, sealed: memoryview, final: bool, out: memoryview | None = None) -> bytes:
        """Authenticate and decrypt one record: into ``out``, or (without it) into fresh bytes returned."""
        index = self._index
        nonce, aad = self._next(final)
        try:
            if out is None:
                return self._aead.decrypt(nonce, sealed, aad)
            self._aead.decrypt_into(nonce, sealed, aad, out)
            return b""
        except InvalidTag:
            raise self._fail(
                f"chunk {index} failed authentication (tampered, reordered, truncated or extended)"
            ) from None

    def _feed(self, data: Buffer) -> memoryview | None:
        """The fed data after the header; None while the header is incomplete."""
        if self._finished:
            raise ValueError("the decryptor is finished")
        src = memoryview(data).cast("B")
        if not self._digest:
            src = self._read_header(src)
        return src if self._digest else None

    def update(self, data: Buffer) -> list[memoryview]:
        """Feed ciphertext; returns the plaintext chunks it completed, authenticated, as views into a buffer
        the decryptor reuses (valid until the next call; no allocation per chunk)."""
        src = self._feed(data)
        if src is None:
            return []
        chunk = self.chunk_size
        if len(self._out) < self._units.most(len(src)) * chunk:
            self._out = bytearray(self._units.most(len(src)) * chunk)
        out = memoryview(self._out)
        views: list[memoryview] = []
        for sealed in self._units.split(src):
            views.append(out[len(views) * chunk : (len(views) + 1) * chunk])
            self._open(sealed, False, views[-1])
        self.size += len(views) * chunk
        return views

    def update_into(self, data: Buffer, out: memoryview) -> int:
        """As :meth:`update`, but the completed chunks are decrypted straight into ``out``, one after another
        from its start; returns the bytes written. For a reader that wants the whole object in one buffer:
        no copy after the decryption. A chunk that does not fit is still authenticated first (so damage is
        reported as such), then ValueError."""
        src = self._feed(data)
        if src is None:
            return 0
        chunk = self.chunk_size
        written = 0
        for sealed in self._units.split(src):
            if written + chunk > len(out):
                if len(self._out) < chunk:
                    self._out = bytearray(chunk)
                self._open(sealed, False, memoryview(self._out)[:chunk])
                raise ValueError("the output buffer is too small for the completed chunks")
            self._open(sealed, False, out[written : written + chunk])
            written += chunk
        self.size += written
        return written

    def update_bytes(self, data: Buffer) -> list[bytes]:
        """As :meth:`update`, but each chunk is fresh ``bytes`` the caller may keep (for consumers that hold
        chunks, such as a stream handed to another task: no copy out of a shared buffer)."""
        src = self._feed(data)
        if src is None:
            return []
        chunks = [self._open(sealed, False) for sealed in self._units.split(src)]
        self.size += len(chunks) * self.chunk_size
        return chunks

    def finish(self) -> bytes:
        """Open the final chunk; IntegrityError when the stream ended before it."""
        self._finish()
        if not self._digest:
            raise self._fail("truncated header")
        if len(self._units.rest()) < TAG_SIZE:
            raise self._fail(f"truncated at chunk {self._index} (no final chunk)")
        plain = self._open(self._units.rest(), True)
        self.size += len(plain)
        return plain
