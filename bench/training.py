"""Benchmark: training throughput with the data read from the encrypted storage vs from plaintext files.

Issue 10 asks what confidentiality costs a training node: the same model trained on the same shards, once read
from plaintext files and once through :meth:`~vigil.platform.local.storage.LocalStorage.read_into` (access
checked, per-object data key unwrapped by the key vault, every chunk of AES-256-GCM authenticated and
decrypted into one buffer in a worker thread), in the same process, alternating. Target: encrypted throughput
within 5 % of plaintext.

The workload is a synthetic but learnable classification set (a Gaussian mixture: ``--classes`` centres in
``--features`` dimensions, fixed seed), big enough to stream: ``--rows`` rows cut into shards of
``--shard-mib`` MiB, each shard one object (float32 features, then int64 labels). Every epoch streams every
shard from its source, as a loader for a set larger than the accelerator's memory would. The loader is what a
real one does (torch's DataLoader with workers): ``--workers`` worker processes each read (and, for the
encrypted source, check access, unwrap the data key and decrypt) one shard ahead, straight into shared-memory
buffers the training process reuses (processes, not threads: see the comment above :class:`Loader`). The
training loop never synchronises with the device inside a shard (the loss is summed on the device), so
host-side work overlaps device-side work as it would in production.

Reported, medians over ``--repeats`` (each repetition runs both sources, order alternating ABBA):

- **loader**: GB/s of each source with no training (the raw cost of decryption);
- **train**: samples/s of each source with training, and the overhead ``1 - encrypted/plain``.

Defaults fit the accelerator when CUDA is present (4 M rows of 128 features, a 3-layer MLP of width 2048,
batch 8192, TF32 matmuls); without one, a smaller set and model keep ``make bench`` short on a CPU (the
target is about accelerators; on a CPU both sources are bound by the same cores, so the figure says less).

Run: ``.venv/bin/python bench/training.py [--rows N] [--epochs 2] [--repeats 3] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import itertools
import multiprocessing
import statistics
import tempfile
import time
import warnings
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import orjson

from vigil.platform.local.keyvault import LocalKeyVault
from vigil.platform.local.masterkey import MasterKey
from vigil.platform.local.storage import LocalStorage

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*NumPy.*")
    import torch
    from torch import nn

CONTAINER = "bench-train"


def shard_rows(shard_mib: int, features: int) -> int:
    return max(1, (shard_mib << 20) // (features * 4 + 8))


def make_shard(rows: int, centres: torch.Tensor, generator: torch.Generator) -> bytes:
    """``rows`` samples: features (float32, row-major) then labels (int64)."""
    labels = torch.randint(0, centres.shape[0], (rows,), generator=generator)
    x = centres[labels] + torch.randn(rows, centres.shape[1], generator=generator)
    return _raw(x.float().contiguous()) + _raw(labels.to(torch.int64).contiguous())


def _raw(t: torch.Tensor) -> bytes:
    return ctypes.string_at(t.data_ptr(), t.numel() * t.element_size())


def parse_shard(buf: memoryview, features: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = len(buf) // (features * 4 + 8)
    x = torch.frombuffer(buf, dtype=torch.float32, count=rows * features).view(rows, features)
    y = torch.frombuffer(buf, dtype=torch.int64, count=rows, offset=rows * features * 4)
    return x, y


class Sources:
    """The same shards twice: plaintext files and objects in the encrypted storage, under ``folder``."""

    def __init__(self, folder: Path, chunk: int) -> None:
        self.folder, self.chunk = folder, chunk
        (folder / "plain").mkdir()
        self.vault = LocalKeyVault(folder / "vault.db", MasterKey.from_file(folder / "master.key"))
        self.storage = LocalStorage(folder / "storage", self.vault, chunk_size=chunk)
        self.names: list[str] = []
        self.sizes: dict[str, int] = {}

    async def setup(self) -> None:
        await self.vault.create_key("vigil", "bench-train-key")
        await self.storage.create_container("vigil", CONTAINER, key_name="bench-train-key")

    async def add(self, data: bytes) -> None:
        name = f"shard-{len(self.names):05d}"
        (self.folder / "plain" / name).write_bytes(data)
        await self.storage.put("vigil", CONTAINER, name, data)
        self.names.append(name)
        self.sizes[name] = len(data)

    def close(self) -> None:
        self.storage.close()
        self.vault.close()


# -- the loader's worker processes ---------------------------------------------------------------------
# Worker *processes*, as torch's DataLoader uses: a worker thread would need the GIL back after every
# AES-GCM chunk, and a training loop busy in Python keeps it for up to the switch interval (5 ms) each
# time, so threads decrypt at a fraction of their speed exactly while the model trains. Each worker opens
# its own LocalStorage over the same folder (access checks and key unwrap are done there, per read) and
# writes the plaintext straight into a shared-memory buffer the training process maps.

_worker: dict[str, Any] = {}


def _init_worker(folder: str, chunk: int) -> None:
    root = Path(folder)
    vault = LocalKeyVault(root / "vault.db", MasterKey.from_file(root / "master.key", create=False))
    _worker.update(
        loop=asyncio.new_event_loop(),
        storage=LocalStorage(root / "storage", vault, chunk_size=chunk),
        plain=root / "plain",
        segments={},
    )


def _segment(name: str) -> SharedMemory:
    segments: dict[str, SharedMemory] = _worker["segments"]
    if name not in segments:
        segments[name] = SharedMemory(name=name)
    return segments[name]


def _read_shard(mode: str, name: str, size: int, segment: str) -> int:
    """In a worker: shard ``name`` from source ``mode`` into the shared segment; returns its size."""
    view = _segment(segment).buf
    if mode == "encrypted":
        read = _worker["storage"].read_into("vigil", CONTAINER, name, view)
        return int(_worker["loop"].run_until_complete(read))
    with (_worker["plain"] / name).open("rb", buffering=0) as f:
        got = 0
        while got < size:
            n = f.readinto(view[got:size])
            if not n:
                raise OSError(f"{name}: short read")
            got += n
    return size


class Loader:
    """Every shard in order, ``depth`` reads in flight in a pool of ``depth`` worker processes, each into
    one of ``depth + 1`` shared-memory buffers sized for the largest shard; a buffer goes back to the pool
    when the consumer asks for the next shard, so no read pays for fresh pages."""

    def __init__(self, sources: Sources, depth: int) -> None:
        self.sources, self.depth = sources, depth
        size = max(sources.sizes.values())
        self.segments = [SharedMemory(create=True, size=size) for _ in range(depth + 1)]
        self.pool = ProcessPoolExecutor(
            depth,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(str(sources.folder), sources.chunk),
        )

    def close(self) -> None:
        self.pool.shutdown()
        for segment in self.segments:
            segment.close()
            segment.unlink()

    async def shards(self, mode: str) -> AsyncIterator[memoryview]:
        loop = asyncio.get_running_loop()
        free: asyncio.Queue[SharedMemory] = asyncio.Queue()
        for segment in self.segments:
            free.put_nowait(segment)
        sizes = self.sources.sizes

        async def one(name: str) -> tuple[SharedMemory, int]:
            segment = await free.get()
            size = await loop.run_in_executor(self.pool, _read_shard, mode, name, sizes[name], segment.name)
            return segment, size

        names = iter(self.sources.names)
        pending = deque(asyncio.ensure_future(one(name)) for name in itertools.islice(names, self.depth))
        while pending:
            segment, size = await pending.popleft()
            if (name := next(names, None)) is not None:
                pending.append(asyncio.ensure_future(one(name)))
            assert segment.buf is not None
            yield segment.buf[:size]
            free.put_nowait(segment)


async def loader_only(loader: Loader, mode: str) -> float:
    """Bytes per second of one pass over every shard, no training."""
    t0 = time.perf_counter()
    total = 0
    async for shard in loader.shards(mode):
        total += len(shard)
    return total / (time.perf_counter() - t0)


class Trainer:
    def __init__(self, args: argparse.Namespace, device: torch.device) -> None:
        self.args, self.device = args, device
        torch.manual_seed(0)
        width = args.hidden
        self.model = nn.Sequential(
            nn.Linear(args.features, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, args.classes),
        ).to(device)
        self.optimiser = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss_fn = nn.CrossEntropyLoss()

    async def epoch(self, loader: Loader, mode: str) -> tuple[int, float, float]:
        """One epoch; (samples, seconds, mean loss), the device synchronised before the clock stops."""
        args, device = self.args, self.device
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        samples = 0
        async for shard in loader.shards(mode):
            x_host, y_host = parse_shard(shard, args.features)
            x = x_host.to(device, non_blocking=False)
            y = y_host.to(device, non_blocking=False)
            for i in range(0, len(y), args.batch):
                xb, yb = x[i : i + args.batch], y[i : i + args.batch]
                self.optimiser.zero_grad(set_to_none=True)
                loss = self.loss_fn(self.model(xb), yb)
                loss.backward()
                self.optimiser.step()
                loss_sum += loss.detach() * len(yb)
                samples += len(yb)
                await asyncio.sleep(0)  # let the loader hand its next read to a worker
        mean = float(loss_sum.item()) / max(samples, 1)  # synchronises with the device
        return samples, time.perf_counter() - t0, mean


async def run(args: argparse.Namespace) -> dict[str, object]:
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    with tempfile.TemporaryDirectory(prefix="vigil-bench-train-", dir=args.dir) as tmp:
        sources = Sources(Path(tmp), args.chunk_kib << 10)
        try:
            await sources.setup()
            generator = torch.Generator().manual_seed(1)
            centres = torch.randn(args.classes, args.features, generator=generator) * 0.35
            per, left = shard_rows(args.shard_mib, args.features), args.rows
            t0 = time.perf_counter()
            while left > 0:
                await sources.add(make_shard(min(per, left), centres, generator))
                left -= per
            total = sum(sources.sizes.values())
            print(
                f"data: {args.rows:,} rows x {args.features} features in {len(sources.names)} shards "
                f"({total / 1e6:.0f} MB), written in {time.perf_counter() - t0:.1f} s; device {device}"
                + (f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else "")
            )
            modes = ("plain", "encrypted")
            data_loader = Loader(sources, args.workers)
            try:
                trainer = Trainer(args, device)
                await trainer.epoch(data_loader, "plain")  # warm-up: kernels, workers, page cache
                loader: dict[str, list[float]] = {m: [] for m in modes}
                rate: dict[str, list[float]] = {m: [] for m in modes}
                overhead: list[float] = []
                losses: list[float] = []
                for rep in range(args.repeats):
                    got: dict[str, float] = {}
                    for mode in modes if rep % 2 == 0 else modes[::-1]:
                        loader[mode].append(await loader_only(data_loader, mode))
                        samples, seconds = 0, 0.0
                        for _ in range(args.epochs):
                            n, s, loss = await trainer.epoch(data_loader, mode)
                            samples, seconds = samples + n, seconds + s
                            losses.append(loss)
                        got[mode] = samples / seconds
                        rate[mode].append(got[mode])
                    overhead.append(1.0 - got["encrypted"] / got["plain"])
                    print(
                        f"rep {rep + 1}: plain {got['plain']:,.0f} samples/s, encrypted "
                        f"{got['encrypted']:,.0f} samples/s, overhead {overhead[-1] * 100:+.2f} %; "
                        f"loader plain {loader['plain'][-1] / 1e9:.2f} GB/s, "
                        f"encrypted {loader['encrypted'][-1] / 1e9:.2f} GB/s; loss {losses[-1]:.4f}"
                    )
            finally:
                data_loader.close()
        finally:
            sources.close()
    result: dict[str, object] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "rows": args.rows,
        "bytes": total,
        "shards": len(sources.names),
        "loader_gbps": {m: statistics.median(v) / 1e9 for m, v in loader.items()},
        "train_samples_per_s": {m: statistics.median(v) for m, v in rate.items()},
        "overhead_median": statistics.median(overhead),
        "overhead_reps": overhead,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }
    return result


def main() -> None:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument("--rows", type=int, default=4_000_000 if cuda else 400_000)
    ap.add_argument("--features", type=int, default=128 if cuda else 32)
    ap.add_argument("--classes", type=int, default=16)
    ap.add_argument("--hidden", type=int, default=2048 if cuda else 128)
    ap.add_argument("--batch", type=int, default=8192 if cuda else 1024)
    ap.add_argument("--shard-mib", type=int, default=32 if cuda else 16)
    ap.add_argument("--chunk-kib", type=int, default=1024, help="storage chunk size (default 1024 KiB)")
    ap.add_argument("--workers", type=int, default=4, help="loader processes, one read each (default 4)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per source per repetition")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="folder for the temporary data (default: the system's)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    result = asyncio.run(run(args))
    train = result["train_samples_per_s"]
    assert isinstance(train, dict)
    print(
        f"median: plain {train['plain']:,.0f} samples/s, encrypted {train['encrypted']:,.0f} samples/s, "
        f"overhead {float(result['overhead_median']) * 100:+.2f} % (target <= 5 %); "  # type: ignore[arg-type]
        f"loss {result['first_loss']:.4f} -> {result['last_loss']:.4f}"
    )
    if args.json:
        args.json.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
