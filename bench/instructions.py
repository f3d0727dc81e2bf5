"""Benchmark: instructions per event of the detector, counted by callgrind (repeatable where timings are not).

Why: this machine is shared, and the same build's replay throughput varies by 20–30 % within an hour, so a
change of a few per cent cannot be seen in events/s. valgrind's callgrind counts the instructions the CPU
would retire, which do not depend on the neighbours; counted over only the measured loop, with the str hash
seed fixed, two runs of one build give the same count to the instruction.

What is measured: the stateful benchmark's rule set (``bench/stateful.py``: the 1,000 single-event rules of
``bench/rules.py`` plus 50 windowed threshold rules) and its Activity Log records, normalised up front and
sorted by time. ``--warm`` events go through ``Detector.process`` first (the windows fill, the merged
buckets compile), then ``--events`` more inside ``collections.deque(map(detector.process, ...))``, and
callgrind collects only inside that C call (``--toggle-collect``). Reported: instructions per event of
``Detector.process`` (matching, window updates, findings; not normalising). Compare builds by running this
in each (a git worktree with its own ``setup.py build_ext --inplace``, ``PYTHONPATH`` set to it).

Needs ``valgrind`` on the PATH; a run takes five to ten minutes here (the whole process runs under the
emulator, loading the 1,050 rules most of it).
Not part of ``make bench``: it measures work, not speed, and has no target.

Run: ``.venv/bin/python bench/instructions.py [--events N] [--warm N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

_SUMMARY = re.compile(r"^(?:summary|totals): (\d+)", re.M)


def child(events: int, warm: int, tmp: Path) -> None:
    """The measured process (runs under callgrind)."""
    import stateful

    from vigil.detectors.engine import Detector
    from vigil.events.batch import BatchNormalizer

    _, rules, _ = stateful.load_bench_rules(tmp, 50)
    start_ms = int(stateful.BASE.timestamp() * 1000)
    lines = stateful.activity_lines(warm + events, start_ms, rate=(warm + events) / 600)
    normalised = BatchNormalizer().body(b"\n".join(lines), "bench").events
    normalised.sort(key=lambda e: e.time)
    detector = Detector(rules)
    for event in normalised[:warm]:
        detector.process(event)
    collections.deque(map(detector.process, normalised[warm:]), maxlen=0)  # (the counted call)


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--events", type=int, default=20_000, help="events counted (default 20,000)")
    parser.add_argument("--warm", type=int, default=20_000, help="events run first, not counted")
    parser.add_argument("--json", help="also write the result to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.events, args.warm, Path(args.child))
        return
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not on the PATH (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="vigil-instr-") as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            valgrind, "--tool=callgrind", f"--callgrind-out-file={out}", "--toggle-collect=deque_extend*",
            sys.executable, __file__, "--events", str(args.events), "--warm", str(args.warm), "--child", tmp,
        ]  # fmt: skip
        t0 = time.monotonic()
        env = os.environ | {"PYTHONHASHSEED": "0"}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"the measured process failed ({done.returncode}):\n{done.stderr[-3000:]}")
        found = _SUMMARY.search(out.read_text())
        if found is None or int(found.group(1)) == 0:
            raise SystemExit("callgrind counted nothing: is deque_extend a symbol of this Python?")
        total = int(found.group(1))
    import vigil
    from vigil.detectors.compiled import NATIVE

    result = {
        "events": args.events,
        "warm": args.warm,
        "instructions": total,
        "instructions_per_event": total / args.events,
        "compiled_tables": NATIVE,
        "vigil": str(Path(vigil.__file__).parent),
        "seconds": round(time.monotonic() - t0, 1),
    }
    print(
        f"Detector.process: {result['instructions_per_event']:,.0f} instructions per event "
        f"({args.events:,} events after {args.warm:,} to warm; compiled tables: {NATIVE}; "
        f"vigil from {result['vigil']}; {result['seconds']} s under callgrind)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
