"""Benchmark: the secure storage's encryption against raw AES-256-GCM of the same chunks.

Three paths over ``--size`` bytes (default 1 GiB) cut into ``--chunk`` chunks (default 1 MiB), run
``--repeats`` times (default 3; medians reported):

- **raw**: ``AESGCM.encrypt_into`` / ``decrypt_into`` of each chunk into preallocated buffers, with a
  12-byte nonce and 41 bytes of associated data like the envelope's: the ceiling, no framing at all;
- **envelope**: the same bytes through :class:`~vigil.platform.local.envelope.Encryptor` and
  :class:`~vigil.platform.local.envelope.Decryptor` (framing, hold-back of the last chunk, nonce and AAD
  per chunk), in memory: the CPU path. Each sealed block is opened right away, so the whole object is never
  held; encryption and decryption are timed separately, call by call;
- **storage**: ``LocalStorage.put`` from an async stream and ``get`` to the end, over the real
  ``LocalKeyVault`` in a temporary folder (``--dir``): worker-thread hops, file writes, the fsync and the
  SQLite commit (``synchronous=FULL``) included. ``put`` is usually bound by the disk (the fsync of the
  whole file); ``get`` right after ``put`` reads mostly from the page cache, and yields fresh ``bytes``
  per chunk as the Storage contract asks, so it also pays the allocator (fresh pages for every 1 MiB
  chunk), which the in-memory path avoids by decrypting into one reused buffer.

The source is one random 8 MiB buffer reused for every block, so memory stays small at any ``--size``.
The raw and envelope paths alternate block by block (one core, pinned, CPU time), so both see the same
load on a noisy machine; each repetition's ratio is raw time / envelope time, and the ratio reported is
the median over repetitions. The storage path is wall time, its ratio is against the raw rate of the same
repetition.

Target (issue 7): envelope / raw >= 0.8 for both directions.

Run: ``.venv/bin/python bench/storage.py [--size 256MiB] [--chunk 1MiB] [--repeats 3] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from vigil.platform.local.envelope import TAG_SIZE, Decryptor, Encryptor, ObjectIdentity, new_data_key
from vigil.platform.local.keyvault import LocalKeyVault
from vigil.platform.local.masterkey import MasterKey
from vigil.platform.local.storage import LocalStorage

BLOCK = 8 << 20
UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
}
IDENT = ObjectIdentity("bench", "object", "0" * 32)


def size_arg(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1GiB, 256MiB, 65536)")
    return int(match.group(1)) * UNITS[match.group(2).lower()]


def blocks(size: int, source: memoryview) -> list[memoryview]:
    """The blocks that add up to ``size``: views of the one source buffer."""
    return [source[: min(BLOCK, size - pos)] for pos in range(0, size, BLOCK)]


def cpu_paths(size: int, chunk: int, source: memoryview) -> dict[str, float]:
    """One repetition of raw and envelope, alternating block by block; CPU seconds per path."""
    key = new_data_key()
    aead = AESGCM(key)
    sealed = bytearray(BLOCK // chunk * (chunk + TAG_SIZE) + chunk + TAG_SIZE)
    plain = bytearray(BLOCK)
    out, back = memoryview(sealed), memoryview(plain)
    prefix, aad = os.urandom(4), os.urandom(41)
    enc, dec = Encryptor(key, IDENT, chunk_size=chunk), Decryptor(key, IDENT)
    dec.update(enc.header)
    spent = dict.fromkeys(("raw_encrypt", "raw_decrypt", "envelope_encrypt", "envelope_decrypt"), 0.0)
    clock = time.process_time
    index = 0
    for block in blocks(size, source):
        first = index
        t0 = clock()
        o = 0
        for pos in range(0, len(block), chunk):
            piece = block[pos : pos + chunk]
            aead.encrypt_into(
                prefix + index.to_bytes(8, "big"), piece, aad, out[o : o + len(piece) + TAG_SIZE]
            )
            index += 1
            o += len(piece) + TAG_SIZE
        t1 = clock()
        o = 0
        for pos in range(0, len(block), chunk):
            n = min(chunk, len(block) - pos)
            nonce = prefix + (first + pos // chunk).to_bytes(8, "big")
            aead.decrypt_into(nonce, out[o : o + n + TAG_SIZE], aad, back[pos : pos + n])
            o += n + TAG_SIZE
        t2 = clock()
        ciphertext = enc.update(block)
        t3 = clock()
        dec.update(ciphertext)
        t4 = clock()
        spent["raw_encrypt"] += t1 - t0
        spent["raw_decrypt"] += t2 - t1
        spent["envelope_encrypt"] += t3 - t2
        spent["envelope_decrypt"] += t4 - t3
    t0 = clock()
    last = enc.finish()
    t1 = clock()
    dec.update(last)
    dec.finish()
    t2 = clock()
    spent["envelope_encrypt"] += t1 - t0
    spent["envelope_decrypt"] += t2 - t1
    if dec.size != size or bytes(back[:64]) != bytes(source[:64]):
        raise SystemExit(f"round trip failed: {dec.size} bytes back of {size}")
    return spent


async def storage_path(size: int, chunk: int, source: memoryview, folder: Path, n: int) -> dict[str, float]:
    """One put and one get through LocalStorage; wall seconds of each, and the longest the event loop was
    kept from running a 1 ms timer meanwhile (how much the storage's crypto stalls other coroutines)."""
    vault = LocalKeyVault(folder / f"vault-{n}.db", MasterKey.generate())
    storage = LocalStorage(folder / f"storage-{n}", vault, chunk_size=chunk)
    try:
        await vault.create_key("vigil", "bench-key")
        await storage.create_container("vigil", "bench", key_name="bench-key")
        data = bytes(source)

        async def stream() -> AsyncIterator[bytes]:
            for block in blocks(size, source):
                yield data if len(block) == len(data) else data[: len(block)]

        stall = 0.0

        async def ticker() -> None:
            nonlocal stall
            while True:
                before = time.perf_counter()
                await asyncio.sleep(0.001)
                stall = max(stall, time.perf_counter() - before - 0.001)

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        info = await storage.put("vigil", "bench", "object", stream())
        t1 = time.perf_counter()
        got = 0
        async for piece in storage.get("vigil", "bench", "object"):
            got += len(piece)
        t2 = time.perf_counter()
        tick.cancel()
        if info.size != size or got != size:
            raise SystemExit(f"storage round trip failed: {got} bytes back of {size}")
        await storage.delete("vigil", "bench", "object")
        return {"storage_put": t1 - t0, "storage_get": t2 - t1, "loop_stall": stall}
    finally:
        storage.close()
        vault.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=size_arg, default=1 << 30, help="bytes per run (default 1GiB)")
    ap.add_argument("--chunk", type=size_arg, default=1 << 20, help="chunk size (default 1MiB)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where the storage path writes (default: temp)")
    ap.add_argument("--skip-storage", action="store_true", help="only the in-memory raw and envelope paths")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    if BLOCK % args.chunk:
        raise SystemExit(f"--chunk must divide {BLOCK} bytes")

    source = memoryview(os.urandom(BLOCK))
    runs: dict[str, list[float]] = {}
    stalls: list[float] = []
    ratios: dict[str, list[float]] = {"encrypt": [], "decrypt": [], "put": [], "get": []}
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    print(f"{args.size / 2**20:.0f} MiB in {args.chunk / 2**10:.0f} KiB chunks, {args.repeats} repetitions")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="vigil-bench-storage-") as tmp:
        for n in range(args.repeats):
            if affinity:
                os.sched_setaffinity(0, {max(affinity)})
            spent = cpu_paths(args.size, args.chunk, source)
            if affinity:
                os.sched_setaffinity(0, affinity)
            if not args.skip_storage:
                spent |= asyncio.run(storage_path(args.size, args.chunk, source, Path(tmp), n))
            stalls.append(spent.pop("loop_stall", 0.0))
            for name, seconds in spent.items():
                runs.setdefault(name, []).append(seconds)
            ratios["encrypt"].append(spent["raw_encrypt"] / spent["envelope_encrypt"])
            ratios["decrypt"].append(spent["raw_decrypt"] / spent["envelope_decrypt"])
            if not args.skip_storage:
                ratios["put"].append(spent["raw_encrypt"] / spent["storage_put"])
                ratios["get"].append(spent["raw_decrypt"] / spent["storage_get"])

    report: dict[str, object] = {"size": args.size, "chunk": args.chunk, "repeats": args.repeats}
    print(f"  {'path':22s} {'GB/s':>7s}  {'range':>13s}  {'ratio to raw':>12s}")
    for name, seconds in runs.items():
        rate = args.size / statistics.median(seconds) / 1e9
        spread = f"{args.size / max(seconds) / 1e9:.2f}-{args.size / min(seconds) / 1e9:.2f}"
        ratio = statistics.median(ratios[name.rsplit("_", 1)[1]]) if not name.startswith("raw") else 1.0
        print(f"  {name:22s} {rate:7.2f}  {spread:>13s}  {ratio:12.3f}")
        report[name] = {"gb_per_s": rate, "runs_s": seconds, "ratio": ratio}
    if not args.skip_storage:
        print(f"  longest event-loop stall in put/get: {max(stalls) * 1e3:.1f} ms (lateness of a 1 ms timer)")
        report["loop_stall_ms"] = max(stalls) * 1e3
    print("  target: envelope_encrypt and envelope_decrypt ratio >= 0.8 (median of paired repetitions)")
    if args.json:
        Path(args.json).write_text(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
