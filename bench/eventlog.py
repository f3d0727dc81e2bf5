"""Benchmark: durable event-log appends as the log grows (``Store.accept``, in process, one pinned core).

Why: the event log keeps a unique index on event ids (a re-delivered record is recognised and stored once).
With random ids every batch of new events dirtied as many pages of that index as it had events, all over
an index that grows with the log, so each append cost more than the last: 31 µs/event at the start
and 102 µs/event once 400,000 events were in (this benchmark's random-id run, this machine, 64 KiB
pages). Activity Log, Key Vault and Storage event ids now start with the record's time
(``vigil/events/fields.py``, ``hash_id``), so a log that arrives in time order appends at the edge of
the index.

What is measured: ``--events`` Activity Log records (``gen_activity.py``, about 1.5 KB each, in time order
as a source delivers its log) normalised once up front, then appended ``--blocks`` times over, each copy
a day later than the one before and with new ids (so every event is new), in batches of ``--batch`` (one
``accept`` transaction each, as one ingestion request) to a fresh store with ``synchronous=FULL``. Each
block's wall time per event is reported, for two id schemes, each in its own store:

- **time**: ids as the normalisers make them now (time first);
- **random**: ids as they were made before (a hash only), for comparison.

Reported: µs/event of the first and the last block and their ratio (last / first). Target (ingestion
that stays flat as the log grows): the ratio with time-ordered ids <= 1.5.

Run: ``make bench`` or ``.venv/bin/python bench/eventlog.py [--events N] [--blocks B] [--json FILE]``;
``--quick`` is a small smoke run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_activity import lines

from vigil.events.batch import BatchNormalizer
from vigil.events.fields import hash_id
from vigil.events.model import Event
from vigil.store.sqlite import Store

TARGET_RATIO = 1.5


def _copy(events: list[Event], n: int, ids: str) -> list[Event]:
    """Copy ``n`` of the set: each event ``n`` days later, with a new id made by the scheme ``ids``."""
    shift = timedelta(days=n)
    out = []
    for e in events:
        when = e.time + shift
        key = f"{e.id}\x1f{n}"
        new_id = hash_id("act:", key, when) if ids == "time" else hash_id("act:", key)
        out.append(msgspec.structs.replace(e, time=when, id=new_id))
    return out


def run(ids: str, events: list[Event], blocks: int, batch: int) -> dict[str, Any]:
    per_block: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "vigil.db", synchronous="FULL")
        try:
            for n in range(blocks):
                block = _copy(events, n, ids)
                t0 = time.perf_counter()
                for i in range(0, len(block), batch):
                    store.accept(block[i : i + batch], (), "http:bench")
                per_block.append((time.perf_counter() - t0) / len(block) * 1e6)
                size = sum(p.stat().st_size for p in Path(tmp).glob("vigil.db*"))  # (with the WAL)
                print(
                    f"   {ids:6s} ids, block {n + 1}/{blocks}: {(n + 1) * len(events):9,} events in the log, "
                    f"{per_block[-1]:6.1f} us/event, database {size / 1e6:,.0f} MB",
                    flush=True,
                )
        finally:
            store.close()
    return {
        "us_per_event": per_block,
        "first": per_block[0],
        "last": per_block[-1],
        "ratio": per_block[-1] / per_block[0],
        "median": statistics.median(per_block),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=50_000, help="records per block")
    ap.add_argument("--blocks", type=int, default=8, help="blocks appended one after another")
    ap.add_argument("--batch", type=int, default=500, help="events per accept transaction")
    ap.add_argument("--quick", action="store_true", help="a small run (smoke test)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.quick:
        args.events, args.blocks = 5_000, 3
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    report: dict[str, Any] = {"events_per_block": args.events, "blocks": args.blocks, "batch": args.batch}
    body = b"".join(lines(args.events, time_ordered=True))
    events = BatchNormalizer().body(body, "bench").events
    for ids in ("time", "random"):
        report[ids] = run(ids, events, args.blocks, args.batch)
    t, r = report["time"], report["random"]
    verdict = "PASS" if t["ratio"] <= TARGET_RATIO else "FAIL"
    print(
        f"\nappend cost, first block -> last block ({args.blocks * args.events:,} events in the log):\n"
        f"   time-ordered ids: {t['first']:6.1f} -> {t['last']:6.1f} us/event, ratio {t['ratio']:.2f} "
        f"(target <= {TARGET_RATIO}) {verdict}\n"
        f"   random ids:       {r['first']:6.1f} -> {r['last']:6.1f} us/event, ratio {r['ratio']:.2f}"
    )
    if args.json:
        Path(args.json).write_text(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
