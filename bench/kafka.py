"""Benchmark: events/s through one faust worker on librdkafka's mock broker, beside the embedded runner.

What is measured, in one run of this script (same machine, same events, same shipped rule pack ``rules/``):

- **faust worker**: one worker process (:class:`vigil.streams.kafka_app.KafkaApp` under ``faust.Worker``,
  normalise → events topic → detect → findings/alerts/intents topics, detector state saved to its changelog)
  against the mock cluster (``tests/kafka_mock.py``, 1 broker, ``--partitions`` per topic). Azure Activity
  Log records (``gen_activity.py``) are produced to the raw topic keyed by resource id; the time runs from
  the first event the detect agent counts to the last (the worker writes its counters to a file every
  0.2 s). The response engine and the findings store are not attached: this is the stream path alone.
- **embedded**: the embedded runner's path in-process: ``BatchNormalizer`` → ``Store.append_events`` →
  ``DetectStage.drain`` over a fresh SQLite store (``synchronous=NORMAL``).

Each figure is the median of ``--runs`` runs (the worker stays up between runs; each run is a new batch).
On a 2-core machine the broker, the producer and the worker share the CPU, so the worker figure is a lower
bound. Run: ``.venv/bin/python bench/kafka.py [--events 10000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gen_activity import lines  # noqa: E402
from tests.kafka_mock import MockKafka  # noqa: E402
from vigil.streams.kafka_app import TOPICS  # noqa: E402

PREFIX = "bench"


def worker_main(bootstrap: str, partitions: int, progress: Path) -> None:
    """The worker process: the faust app over the shipped rules, counters written to ``progress``."""
    import faust

    from vigil.rules.loader import load_rules
    from vigil.streams.kafka_app import KafkaApp
    from vigil.streams.kafka_settings import KafkaSettings

    settings = KafkaSettings(
        broker=f"kafka://{bootstrap}", app_id=PREFIX, topic_prefix=PREFIX, partitions=partitions, replicas=1,
        declare_topics=False, standby_replicas=0, session_timeout=6.0, heartbeat_interval=1.0,
        live_timers=False,
    )  # fmt: skip
    kapp = KafkaApp(settings, load_rules([ROOT / "rules"]))

    async def report() -> None:
        c = kapp.counters
        progress.write_text(
            json.dumps({"events": c.events, "raw": c.raw, "findings": kapp.detector.findings})
        )

    kapp.app.timer(0.2)(report)
    faust.Worker(kapp.app, loglevel="WARNING").execute_from_commandline()


def produce(bootstrap: str, records: list[bytes]) -> None:
    from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

    async def main() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=5)
        await producer.start()
        try:
            for rec in records:
                key = str(orjson.loads(rec).get("resourceId", "")).lower().encode()
                await producer.send(f"{PREFIX}-raw", rec, key=key)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(main())


def read(progress: Path) -> dict[str, int]:
    try:
        return json.loads(progress.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {"events": 0}


def faust_run(bootstrap: str, progress: Path, records: list[bytes], timeout: float) -> float:
    """One batch through the worker; events/s from the first event detected to the last."""
    base = read(progress)["events"]
    produce(bootstrap, records)
    first = last = None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        done = read(progress)["events"] - base
        now = time.monotonic()
        if done > 0 and first is None:
            first = now - 0.2  # the counters are written every 0.2 s
        if done >= len(records):
            last = now
            break
        time.sleep(0.05)
    if first is None or last is None:
        raise SystemExit(f"the worker did not process {len(records)} events within {timeout} s")
    return len(records) / max(last - first, 1e-3)


def embedded_run(records: list[bytes], work: Path) -> float:
    from vigil.detectors.engine import Detector
    from vigil.events.batch import BatchNormalizer
    from vigil.rules.loader import load_rules
    from vigil.store.sqlite import Store
    from vigil.streams.pipeline import DetectStage

    rules = load_rules([ROOT / "rules"])
    store = Store(work / f"embedded-{time.monotonic_ns()}.db", synchronous="NORMAL")
    body = b"\n".join(records)
    start = time.perf_counter()
    result = BatchNormalizer().body(body, "bench")
    store.append_events(result.events, "bench")
    DetectStage(store, Detector(rules.rules)).drain()
    elapsed = time.perf_counter() - start
    store.close()
    return len(records) / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--worker", nargs=3, metavar=("BOOTSTRAP", "PARTITIONS", "PROGRESS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        worker_main(args.worker[0], int(args.worker[1]), Path(args.worker[2]))
        return 0
    topics = {f"{PREFIX}-{t}": args.partitions for t in TOPICS}
    topics[f"{PREFIX}-detector-state-changelog"] = args.partitions
    all_records = lines(args.events * args.runs)
    batches = [all_records[i * args.events : (i + 1) * args.events] for i in range(args.runs)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        MockKafka(topics, lifetime=args.timeout * args.runs + 120) as kafka,
    ):
        work = Path(tmp)
        progress = work / "progress.json"
        cmd = [sys.executable, __file__, "--worker", kafka.bootstrap, str(args.partitions), str(progress)]
        log = (work / "worker.log").open("wb")
        worker = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=ROOT)
        try:
            produce(kafka.bootstrap, lines(10, seed=99))  # warm-up: wait until the worker is ready
            deadline = time.monotonic() + 90
            while read(progress)["events"] < 10:
                if time.monotonic() > deadline or worker.poll() is not None:
                    print((work / "worker.log").read_text()[-3000:], file=sys.stderr)
                    raise SystemExit("the worker did not become ready")
                time.sleep(0.2)
            faust_rates = [faust_run(kafka.bootstrap, progress, b, args.timeout) for b in batches]
        finally:
            worker.terminate()
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
            log.close()
        embedded_rates = [embedded_run(b, work) for b in batches]
    print(f"events per run: {args.events}, runs: {args.runs}, partitions: {args.partitions}, rules: rules/")
    faust_median, embedded_median = statistics.median(faust_rates), statistics.median(embedded_rates)
    print(f"faust worker (mock broker): {faust_median:10,.0f} events/s  runs {_fmt(faust_rates)}")
    print(f"embedded runner           : {embedded_median:10,.0f} events/s  runs {_fmt(embedded_rates)}")
    return 0


def _fmt(rates: list[float]) -> str:
    return ", ".join(f"{r:,.0f}" for r in rates)


if __name__ == "__main__":
    sys.exit(main())
