"""Benchmark: audited appends per second, ``synchronous=FULL`` and ``NORMAL``, one by one and batched.

What is measured is the whole :meth:`AuditLog.append` path as the daemon runs it: the secrets check, the
thread hop, one ``BEGIN IMMEDIATE ... COMMIT`` per call with the head read inside it, and a signed
checkpoint every 1000 records (Ed25519 through the real local key vault) exported to a fsynced file sink.
Batched means :meth:`AuditLog.append_many` of 100 records: one transaction, so one fsync, per 100 records.
For scale, the same commit pattern on bare SQLite (one ~300-byte INSERT per transaction, same pragmas) is
measured alongside; reference/reliability.md G4 quotes about 4.1k/s FULL and 47k/s NORMAL for it on the
reference machine.

Each configuration runs ``--repeat`` times on a fresh database (wall-clock time: fsync is the point) and
the median rate is reported. The databases go under ``--dir`` (default: a temporary folder beside this
file, not /tmp, which may be a tmpfs where fsync costs nothing).

Run: ``.venv/bin/python bench/audit.py [--records 2000] [--batched-records 20000] [--repeat 5]
[--json out.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Literal

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vigil.audit.checkpoint import FileSink
from vigil.audit.log import AuditLog
from vigil.audit.record import Actor, AuditEntry, AuditKind
from vigil.platform.local.keyvault import LocalKeyVault
from vigil.platform.local.masterkey import MasterKey

BATCH = 100
Sync = Literal["FULL", "NORMAL"]


def _entry(i: int) -> AuditEntry:
    details = {"rule_hash": "ab" * 16, "plan": ["snapshot", "isolate"], "n": i, "reason": "score 0.93 > 0.9"}
    return AuditEntry(Actor.rule("azure.vm.isolate"), AuditKind.ACTION_INTENT, f"vm/web-{i % 50}", details)


async def _audited(root: Path, vault: LocalKeyVault, sync: Sync, records: int, batch: int) -> float:
    log = AuditLog(root / "audit.db", vault, synchronous=sync, sinks=[FileSink(root / "cp.jsonl")])
    await log.open()
    entries = [_entry(i) for i in range(records)]
    t0 = time.perf_counter()
    if batch == 1:
        for e in entries:
            await log.append(e.actor, e.kind, e.subject, e.details)
    else:
        for i in range(0, records, batch):
            await log.append_many(entries[i : i + batch])
    elapsed = time.perf_counter() - t0
    await log.close()
    return records / elapsed


def _bare_sqlite(root: Path, sync: Sync, records: int) -> float:
    db = sqlite3.connect(root / "bare.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={sync}")
    db.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, body TEXT NOT NULL, hash BLOB NOT NULL)")
    body = orjson.dumps(_entry(0).details).decode() * 2
    t0 = time.perf_counter()
    for i in range(records):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t VALUES (?, ?, ?)", (i + 1, body, b"\x00" * 32))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    db.close()
    return records / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=2000, help="records per unbatched run")
    ap.add_argument("--batched-records", type=int, default=20_000, help="records per batched run")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix=".audit-bench-", dir=args.dir))
    vault = LocalKeyVault(base / "vault.db", MasterKey.generate())
    cases: list[tuple[str, Sync, int, int]] = [
        ("audited, unbatched", "FULL", args.records, 1),
        (f"audited, batches of {BATCH}", "FULL", args.batched_records, BATCH),
        ("audited, unbatched", "NORMAL", args.records, 1),
        (f"audited, batches of {BATCH}", "NORMAL", args.batched_records, BATCH),
        ("bare SQLite, 1 row/commit", "FULL", args.records, 0),
        ("bare SQLite, 1 row/commit", "NORMAL", args.records, 0),
    ]
    rates: dict[str, list[float]] = {f"{name} [{sync}]": [] for name, sync, _, _ in cases}
    try:
        for rep in range(args.repeat):
            for name, sync, records, batch in cases:  # interleaved: drift of a shared machine hits all alike
                root = base / f"run-{rep}-{len(rates[f'{name} [{sync}]'])}-{sync}-{batch}"
                root.mkdir()
                if batch:
                    rate = asyncio.run(_audited(root, vault, sync, records, batch))
                else:
                    rate = _bare_sqlite(root, sync, records)
                rates[f"{name} [{sync}]"].append(rate)
                shutil.rmtree(root)
    finally:
        vault.close()
        shutil.rmtree(base, ignore_errors=True)

    print(f"audit appends/s, median of {args.repeat} runs (wall clock; filesystem of {args.dir})")
    print(f"{'configuration':40s} {'median':>10s} {'min':>10s} {'max':>10s}")
    figures = {}
    for label, values in rates.items():
        med = statistics.median(values)
        figures[label] = {"median": med, "min": min(values), "max": max(values)}
        print(f"{label:40s} {med:10,.0f} {min(values):10,.0f} {max(values):10,.0f}")
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(figures, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
