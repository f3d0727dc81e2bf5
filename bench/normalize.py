"""Benchmark: normalisation of Azure Activity Log records against bare ``orjson.loads`` of the same lines.

Generates N records of about 1.5 KB (default 100,000), then alternates, in one process, the baseline
(``orjson.loads`` of every line) with Vigil's in-process normalisation path (``BatchNormalizer.stream``:
line splitting, parsing, envelope expansion, auto-detection, normalisation, in batches as the CLI does) and
the same path plus JSON encoding of the events (what ``vigil normalize`` writes). The records are split into
chunks of 10,000 and every repetition runs the three paths back to back on each chunk, so each ratio is
taken over a fraction of a second in which the machine's load is the same for both sides; it reports the
median of those paired ratios (robust to the noise of a shared machine) besides the median rates.

A fourth path, ``normalize (typed)``, is the same normalisation with the compiled Activity path
(``vigil/events/_activity.c``) switched off, so the Python fast path it replaces runs instead; its paired
ratio against ``normalize`` is what the compiled path gains (absent when it is not built).

Run: ``make bench`` or ``.venv/bin/python bench/normalize.py --records 100000 --repeat 5 [--json out.json]``.
The target of issue 2 is ``normalize / orjson >= 0.35``.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import statistics
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_activity import lines

from vigil.events.batch import BatchNormalizer
from vigil.events.model import encode_events
from vigil.events.normalizers import activity
from vigil.runtime import tune_gc

CHUNK = 10_000


def bench_orjson(data: list[bytes]) -> float:
    loads = orjson.loads
    t0 = time.process_time()
    for line in data:
        loads(line)
    return time.process_time() - t0


def bench_normalize(blob: bytes, expected: int, encode: bool, typed: bool = False) -> float:
    native = activity._native
    if typed:
        activity._native = None  # (the module-level switch from_json reads on every call)
    try:
        return _timed(blob, expected, encode)
    finally:
        activity._native = native


def _timed(blob: bytes, expected: int, encode: bool) -> float:
    norm = BatchNormalizer("auto")
    count = 0
    t0 = time.process_time()
    for batch in norm.stream(io.BytesIO(blob), "bench"):
        count += len(batch.events)
        if encode:
            encode_events(batch.events)
    elapsed = time.process_time() - t0
    if count != expected:
        raise SystemExit(f"normalised {count} events, expected {expected}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    tune_gc()  # as `vigil normalize` and `vigil run` do
    data = lines(args.records)
    blob = b"".join(data)
    n = len(data)
    print(f"{n} activity records, mean {len(blob) / n:.0f} bytes, {args.repeat} repetitions (CPU time)")

    compiled = activity._native is not None
    results: dict[str, list[float]] = {"orjson": [], "normalize": [], "normalize+encode": []}
    ratios: dict[str, list[float]] = {"normalize": [], "normalize+encode": []}
    if compiled:
        results["normalize (typed)"] = []
    gains: list[float] = []
    chunks = [data[i : i + CHUNK] for i in range(0, n, CHUNK)]
    for _ in range(args.repeat):
        totals = dict.fromkeys(results, 0.0)
        for chunk in chunks:
            gc.collect()
            base = bench_orjson(chunk)
            totals["orjson"] += base
            joined = b"".join(chunk)
            for name, paired in ratios.items():
                spent = bench_normalize(joined, len(chunk), name.endswith("encode"))
                totals[name] += spent
                paired.append(base / spent)
                if compiled and name == "normalize":
                    typed = bench_normalize(joined, len(chunk), False, typed=True)
                    totals["normalize (typed)"] += typed
                    gains.append(typed / spent)
        for name, total in totals.items():
            results[name].append(total)

    medians = {k: statistics.median(v) for k, v in results.items()}
    report: dict[str, object] = {"records": n, "mean_bytes": len(blob) / n, "repeat": args.repeat}
    for name, med in medians.items():
        rate = n / med
        spread = f"{n / max(results[name]):,.0f}-{n / min(results[name]):,.0f}"
        print(f"  {name:18s} {rate:>10,.0f} events/s  ({med / n * 1e6:5.2f} us/event; range {spread})")
        report[name] = {"events_per_s": rate, "us_per_event": med / n * 1e6, "runs_s": results[name]}
    ratio = statistics.median(ratios["normalize"])
    ratio_enc = statistics.median(ratios["normalize+encode"])
    pairs = len(ratios["normalize"])
    print(f"  ratio normalize/orjson         {ratio:.3f}  (median of {pairs} paired ratios; target >= 0.35)")
    print(f"  ratio normalize+encode/orjson  {ratio_enc:.3f}")
    report["ratio"] = ratio
    report["ratio_with_encode"] = ratio_enc
    if gains:
        gain = statistics.median(gains)
        print(f"  compiled Activity path: typed / compiled time {gain:.2f} (median of {len(gains)} pairs)")
        report["compiled_gain"] = gain
    else:
        print("  compiled Activity path: not built (or VIGIL_PURE_PYTHON): the typed path ran")
    if args.json:
        Path(args.json).write_text(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
