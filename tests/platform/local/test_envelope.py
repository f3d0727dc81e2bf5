"""The envelope format: round trips at the chunk boundaries, and every kind of damage is an IntegrityError."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vigil.platform.errors import IntegrityError
from vigil.platform.local.envelope import (
    MIN_CHUNK,
    TAG_SIZE,
    Decryptor,
    Encryptor,
    ObjectIdentity,
    new_data_key,
    sealed_size,
)
from vigil.platform.local.sealed_files import read_file, read_file_into, write_file

C = MIN_CHUNK
IDENT = ObjectIdentity("data", "shards/0001", "a" * 32)


def seal(key: bytes, data: bytes, ident: ObjectIdentity = IDENT, block: int = 0) -> bytes:
    """The whole envelope of ``data``, fed in ``block``-sized pieces (0: random sizes)."""
    enc = Encryptor(key, ident, chunk_size=C)
    out = bytearray(enc.header)
    rng = random.Random(len(data))
    pos = 0
    while pos < len(data):
        step = block or rng.randint(1, 3 * C)
        out += enc.update(data[pos : pos + step])
        pos += step
    out += enc.finish()
    return bytes(out)


def open_(key: bytes, sealed: bytes, ident: ObjectIdentity = IDENT, block: int = 0) -> bytes:
    dec = Decryptor(key, ident)
    out = bytearray()
    rng = random.Random(len(sealed))
    pos = 0
    while pos < len(sealed):
        step = block or rng.randint(1, 3 * C)
        for view in dec.update(sealed[pos : pos + step]):
            out += view
        pos += step
    out += dec.finish()
    return bytes(out)


def chunks_of(sealed: bytes, header: int) -> list[bytes]:
    body = sealed[header:]
    return [body[i : i + C + TAG_SIZE] for i in range(0, len(body), C + TAG_SIZE)]


@pytest.mark.parametrize("size", [0, 1, C - 1, C, C + 1, 2 * C, 5 * C + 7])
@pytest.mark.parametrize("block", [0, 1000, C, 10 * C])
def test_round_trip_at_chunk_boundaries(size: int, block: int) -> None:
    key, data = new_data_key(), os.urandom(size)
    sealed = seal(key, data, block=block)
    header = len(Encryptor(key, IDENT, chunk_size=C).header)
    assert len(sealed) == sealed_size(size, C, header)
    assert open_(key, sealed, block=block) == data
    assert open_(key, sealed, block=7) == data  # ciphertext fed in other pieces than it was written
    assert len(chunks_of(sealed, header)) == size // C + 1  # the final chunk is never a full one


def test_each_object_has_its_own_nonce_prefix_and_no_plaintext_shows() -> None:
    key, data = new_data_key(), b"secret " * 20_000
    one, two = seal(key, data), seal(key, data)
    assert one != two and one[11:15] != two[11:15]  # the 4-byte prefix in the header
    assert b"secret secret" not in one


def damage(sealed: bytes, header: int, how: str) -> bytes:
    parts = chunks_of(sealed, header)
    head = sealed[:header]
    if how == "byte":
        raw = bytearray(sealed)
        raw[header + C + 100] ^= 0x01  # chunk 1
        return bytes(raw)
    if how == "tag":
        raw = bytearray(sealed)
        raw[header + C + TAG_SIZE - 1] ^= 0x80  # last tag byte of chunk 0
        return bytes(raw)
    if how == "swap":
        parts[1], parts[2] = parts[2], parts[1]
    elif how == "drop_final":
        parts.pop()
    elif how == "drop_middle":
        parts.pop(1)
    elif how == "append":
        parts.append(parts[1])
    elif how == "cut":
        parts[-1] = parts[-1][:-5]
    elif how == "extra_bytes":
        parts[-1] += b"\x00" * 5
    return head + b"".join(parts)


@pytest.mark.parametrize(
    ("how", "chunk"),
    [
        ("byte", "chunk 1 "),
        ("tag", "chunk 0 "),
        ("swap", "chunk 1 "),
        ("drop_final", "chunk 3 "),
        ("drop_middle", "chunk 1 "),
        ("append", "chunk 3 "),
        ("cut", "chunk 3 "),
        ("extra_bytes", "chunk 3 "),
    ],
)
def test_damage_is_detected_and_names_the_chunk(how: str, chunk: str) -> None:
    key = new_data_key()
    sealed = seal(key, os.urandom(3 * C + 10))  # four chunks: three full, one short final
    header = len(Encryptor(key, IDENT, chunk_size=C).header)
    with pytest.raises(IntegrityError, match=chunk) as err:
        open_(key, damage(sealed, header, how))
    assert IDENT.label in str(err.value)


def test_aligned_object_ends_with_an_empty_final_chunk() -> None:
    key = new_data_key()
    sealed = seal(key, os.urandom(3 * C))  # three full chunks and an empty final one
    header = len(Encryptor(key, IDENT, chunk_size=C).header)
    assert len(chunks_of(sealed, header)[-1]) == TAG_SIZE
    with pytest.raises(IntegrityError, match="truncated at chunk 3 "):
        open_(key, damage(sealed, header, "drop_final"))
    with pytest.raises(IntegrityError, match="chunk 3 "):
        open_(key, damage(sealed, header, "append"))
    with pytest.raises(IntegrityError, match="truncated at chunk 2 "):  # a whole chunk and the end gone
        open_(key, sealed[: header + 2 * (C + TAG_SIZE)])


def test_header_damage_and_other_objects() -> None:
    key = new_data_key()
    sealed = seal(key, os.urandom(C + 5))
    with pytest.raises(IntegrityError, match="not a Vigil envelope"):
        open_(key, b"XXXX" + sealed[4:])
    with pytest.raises(IntegrityError, match="out of range"):
        open_(key, sealed[:7] + b"\x00\x00\x00\x10" + sealed[11:])  # chunk size 16
    bigger = sealed[:7] + (2 * C).to_bytes(4, "big") + sealed[11:]  # in range, but authenticated
    with pytest.raises(IntegrityError, match="chunk 0 "):
        open_(key, bigger)
    prefix = bytearray(sealed)
    prefix[12] ^= 1
    with pytest.raises(IntegrityError, match="chunk 0 "):
        open_(key, bytes(prefix))
    with pytest.raises(IntegrityError, match="another object"):
        open_(key, sealed, ObjectIdentity("data", "shards/0002", "a" * 32))
    with pytest.raises(IntegrityError, match="chunk 0 "):
        open_(new_data_key(), sealed)
    with pytest.raises(IntegrityError, match="truncated header"):
        open_(key, sealed[:20])
    with pytest.raises(IntegrityError, match="no final chunk"):
        open_(key, sealed[: len(seal(key, b"")) - TAG_SIZE])


def test_chunks_spliced_between_objects_under_one_key_fail() -> None:
    """Even if two objects shared a data key (they never do), their chunks would not move between them."""
    key = new_data_key()
    other = ObjectIdentity("data", "shards/0002", "b" * 32)
    a, b = seal(key, os.urandom(2 * C + 1)), seal(key, os.urandom(2 * C + 1), other)
    header = len(Encryptor(key, IDENT, chunk_size=C).header)
    mixed = a[:header] + b"".join([chunks_of(a, header)[0], chunks_of(b, header)[1], chunks_of(a, header)[2]])
    with pytest.raises(IntegrityError, match="chunk 1 "):
        open_(key, mixed)


def test_misuse_and_secrets() -> None:
    key = new_data_key()
    with pytest.raises(ValueError, match="chunk size"):
        Encryptor(key, IDENT, chunk_size=C - 1)
    with pytest.raises(ValueError, match="32 bytes"):
        Encryptor(key[:16], IDENT)
    enc = Encryptor(key, IDENT, chunk_size=C)
    enc.finish()
    with pytest.raises(ValueError, match="finished"):
        enc.update(b"x")
    dec = Decryptor(key, IDENT)
    for text in (repr(enc), repr(dec)):
        assert key.hex() not in text and "data/shards/0001" in text


def test_files_round_trip_and_leave_nothing_on_failure(tmp_path: Path) -> None:
    key, data = new_data_key(), os.urandom(3 * C + 3)

    async def blocks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 9999):
            yield data[i : i + 9999]

    async def broken() -> AsyncIterator[bytes]:
        yield b"x" * 100
        raise OSError("source went away")

    async def main() -> None:
        await write_file(tmp_path / "a", Encryptor(key, IDENT, chunk_size=C), data)
        await write_file(tmp_path / "b", Encryptor(key, IDENT, chunk_size=C), blocks())
        for name in ("a", "b"):
            got = [chunk async for chunk in read_file(tmp_path / name, Decryptor(key, IDENT), len(data))]
            assert b"".join(got) == data
            assert all(len(chunk) == C for chunk in got[:-1])
        with pytest.raises(IntegrityError, match="metadata says"):
            async for _ in read_file(tmp_path / "a", Decryptor(key, IDENT), len(data) + 1):
                pass
        with pytest.raises(OSError, match="went away"):
            await write_file(tmp_path / "c", Encryptor(key, IDENT, chunk_size=C), broken())
        with pytest.raises(IntegrityError, match="missing"):
            async for _ in read_file(tmp_path / "c", Decryptor(key, IDENT), 0):
                pass

    asyncio.run(main())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]


@pytest.mark.parametrize("size", [0, 1, C, 3 * C + 10, 4 * C])
def test_whole_object_read_matches_the_stream(tmp_path: Path, size: int) -> None:
    """read_file_into (one hop, decrypted in place) gives what the chunk stream gives; a wrong size in the
    metadata and every kind of damage are IntegrityErrors naming the same chunk as the stream does."""
    key, data = new_data_key(), os.urandom(size)
    path = tmp_path / "obj"
    asyncio.run(write_file(path, Encryptor(key, IDENT, chunk_size=C), data))
    out = bytearray()
    read_file_into(path, Decryptor(key, IDENT), size, out)
    assert out == data
    reused = bytearray(b"x" * (size + 100))  # a longer buffer keeps its tail
    read_file_into(path, Decryptor(key, IDENT), size, reused)
    assert reused[:size] == data and reused[size:] == b"x" * 100
    for wrong in (size + 1, max(0, size - 1)):
        if wrong != size:
            with pytest.raises(IntegrityError, match="metadata says"):
                read_file_into(path, Decryptor(key, IDENT), wrong, bytearray())
    with pytest.raises(IntegrityError, match="missing"):
        read_file_into(tmp_path / "absent", Decryptor(key, IDENT), size, bytearray())


@pytest.mark.parametrize(
    ("how", "chunk"),
    [
        ("byte", "chunk 1 "),
        ("swap", "chunk 1 "),
        ("drop_final", "chunk 3 "),
        ("append", "chunk 3 "),
        ("cut", "chunk 3 "),
        ("extra_bytes", "chunk 3 "),
    ],
)
def test_whole_object_read_detects_damage(tmp_path: Path, how: str, chunk: str) -> None:
    key, data = new_data_key(), os.urandom(3 * C + 10)
    sealed = seal(key, data)
    header = len(Encryptor(key, IDENT, chunk_size=C).header)
    path = tmp_path / "obj"
    path.write_bytes(damage(sealed, header, how))
    with pytest.raises(IntegrityError, match=chunk):
        read_file_into(path, Decryptor(key, IDENT), len(data), bytearray())


def test_update_into_refuses_an_output_too_small_only_after_authenticating() -> None:
    key = new_data_key()
    sealed = seal(key, os.urandom(2 * C + 1))
    out = bytearray(C)
    dec = Decryptor(key, IDENT)
    with pytest.raises(ValueError, match="too small"):
        dec.update_into(sealed, memoryview(out))
    raw = bytearray(sealed)
    raw[-(C + 1 + 2 * TAG_SIZE)] ^= 1  # inside chunk 1, the one that does not fit
    with pytest.raises(IntegrityError, match="chunk 1 "):
        Decryptor(key, IDENT).update_into(bytes(raw), memoryview(bytearray(C)))
