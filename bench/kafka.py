"""Benchmark: events/s through one faust worker on librdkafka's mock broker, beside the embedded runner.

What is measured, in one run of this script (same machine, same events, same shipped rule pack ``rules/``):

- **faust worker**: one worker process (:class:`vigil.streams.kafka_app.KafkaApp` under ``faust.Worker``,
  normalise → events topic → detect → findings/alerts/intents topics, detector state saved to its changelog)
  against the mock cluster (``tests/kafka_mock.py``, 1 broker, ``--partitions`` per topic). Azure Activity
  Log records (``gen_activity.py``) are produced to the raw topic keyed by resource id; the time runs from
  the first event the detect agent counts to the last (the worker writes its counters to a file every
  0.2 s). The response engine and the findings store are not attached: this is the stream path alone.
- **faust worker, short fetch wait**: the same, in a second worker whose consumer waits at most
  ``FETCH_WAIT_MS`` for data (faust fixes 1,500 ms; the mock holds an empty fetch that long even when data
  arrives, a real broker does not), so the figure shows the worker without the mock's stalls.
- **bare aiokafka hop** (the broker's ceiling): aiokafka alone, in one loop, produces the batch to a raw
  topic, consumes it and produces each record to an events topic, and consumes that.
- **embedded**: the embedded runner's path in-process: ``BatchNormalizer`` → ``Store.append_events`` →
  ``DetectStage.drain`` over a fresh SQLite store (``synchronous=NORMAL``).

Each figure is the median of ``--runs`` runs (the worker stays up between runs; each run is a new batch).
On a 2-core machine the broker, the producer and the worker share the CPU, so the worker figure is a lower
bound. The producer here batches up to 512 KB like the worker (the mock returns one record batch per
partition per fetch). Run: ``.venv/bin/python bench/kafka.py [--events 10000]``.
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
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gen_activity import lines  # noqa: E402
from tests.kafka_mock import MockKafka  # noqa: E402
from vigil.streams.kafka_app import TOPICS  # noqa: E402

PREFIX = "bench"
#: the fetch wait of the bench's second worker run (see worker_main)
FETCH_WAIT_MS = 50
BATCH_BYTES = 512 * 1024


def worker_main(
    bootstrap: str, partitions: int, progress: Path, fetch_wait_ms: int = 0, prefix: str = PREFIX
) -> None:
    """The worker process: the faust app over the shipped rules, counters written to ``progress``.

    ``fetch_wait_ms`` > 0 lowers the consumer's fetch wait from faust's fixed 1,500 ms. The mock holds a
    fetch that finds no data for the whole wait, even when records arrive meanwhile (librdkafka's
    ``rd_kafka_mock_handle_Fetch``); Kafka and Event Hubs answer as soon as data arrives. Every time the
    worker catches up with its own output the mock stalls it that long, so this run shows the worker's
    rate without the mock's stalls (the bench's second faust figure)."""
    import faust

    from vigil.logs import configure
    from vigil.rules.loader import load_rules
    from vigil.streams.kafka_app import KafkaApp
    from vigil.streams.kafka_settings import KafkaSettings

    settings = KafkaSettings(
        broker=f"kafka://{bootstrap}", app_id=prefix, topic_prefix=prefix, partitions=partitions, replicas=1,
        declare_topics=False, standby_replicas=0, session_timeout=6.0, heartbeat_interval=1.0,
        live_timers=False,
    )  # fmt: skip
    if fetch_wait_ms:
        from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

        create = AIOKafkaConsumerThread._create_worker_consumer

        def shorter_wait(self: Any, transport: Any) -> Any:
            consumer = create(self, transport)
            consumer._fetch_max_wait_ms = fetch_wait_ms  # handed to aiokafka's fetcher when it starts
            return consumer

        AIOKafkaConsumerThread._create_worker_consumer = shorter_wait  # type: ignore[method-assign]
    kapp = KafkaApp(settings, load_rules([ROOT / "rules"]))

    async def report() -> None:
        c = kapp.counters
        progress.write_text(
            json.dumps({"events": c.events, "raw": c.raw, "findings": kapp.detector.findings})
        )

    kapp.app.timer(0.2)(report)
    # logging as ``vigil worker`` sets it up (vigil.logs.configure, override_logging=False): faust's own
    # setup would put the root logger at DEBUG for its terminal spinner, and every aiokafka debug line
    # would then be formatted
    configure("WARNING")
    faust.Worker(kapp.app, loglevel="WARNING", override_logging=False).execute_from_commandline()


def produce(bootstrap: str, records: list[bytes], prefix: str = PREFIX) -> None:
    from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

    async def main() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks=1, linger_ms=5, max_batch_size=BATCH_BYTES
        )
        await producer.start()
        try:
            for rec in records:
                key = str(orjson.loads(rec).get("resourceId", "")).lower().encode()
                await producer.send(f"{prefix}-raw", rec, key=key)
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(main())


def bare_run(bootstrap: str, records: list[bytes], run: int) -> float:
    """The broker's ceiling for the worker's first hop, without faust: aiokafka alone produces the batch
    to a raw topic, consumes it, produces each record to an events topic, and consumes that (one asyncio
    loop, same producer settings, fetch wait 50 ms so the mock's empty-fetch hold does not count)."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    raw, events = f"{PREFIX}-bare-raw", f"{PREFIX}-bare-events"

    async def main() -> float:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks=1, linger_ms=5, max_batch_size=BATCH_BYTES
        )
        await producer.start()
        consumers = [
            AIOKafkaConsumer(
                topic,
                bootstrap_servers=bootstrap,
                group_id=f"{PREFIX}-bare-{topic}-{run}",
                auto_offset_reset="latest",
                enable_auto_commit=False,
                fetch_max_wait_ms=50,
            )
            for topic in (raw, events)
        ]
        for consumer in consumers:
            await consumer.start()
            await consumer.seek_to_end()
        start = time.monotonic()
        try:

            async def hop() -> None:
                seen = 0
                while seen < len(records):
                    for batch in (await consumers[0].getmany(timeout_ms=500)).values():
                        for rec in batch:
                            await producer.send(events, rec.value, key=rec.key)
                        seen += len(batch)

            async def sink() -> None:
                seen = 0
                while seen < len(records):
                    seen += sum(map(len, (await consumers[1].getmany(timeout_ms=500)).values()))

            async def source() -> None:
                for rec in records:
                    key = str(orjson.loads(rec).get("resourceId", "")).lower().encode()
                    await producer.send(raw, rec, key=key)

            await asyncio.gather(source(), hop(), sink())
            return len(records) / (time.monotonic() - start)
        finally:
            for consumer in consumers:
                await consumer.stop()
            await producer.stop()

    return asyncio.run(main())


def read(progress: Path) -> dict[str, int]:
    try:
        return json.loads(progress.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return {"events": 0}


def faust_run(
    bootstrap: str, progress: Path, records: list[bytes], timeout: float, prefix: str = PREFIX
) -> float:
    """One batch through the worker; events/s from the first event detected to the last."""
    base = read(progress)["events"]
    produce(bootstrap, records, prefix)
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


def worker_rates(
    bootstrap: str, prefix: str, fetch_wait_ms: int, batches: list[list[bytes]], args: Any
) -> list[float]:
    """Start one worker process on ``prefix``'s topics, run every batch through it, stop it."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        progress = work / "progress.json"
        cmd = [sys.executable, __file__, "--worker", bootstrap, str(args.partitions), str(progress)]
        cmd += [prefix, str(fetch_wait_ms)]
        log = (work / "worker.log").open("wb")
        worker = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=ROOT)
        try:
            produce(bootstrap, lines(10, seed=99), prefix)  # warm-up: wait until the worker is ready
            deadline = time.monotonic() + 90
            while read(progress)["events"] < 10:
                if time.monotonic() > deadline or worker.poll() is not None:
                    print((work / "worker.log").read_text()[-3000:], file=sys.stderr)
                    raise SystemExit("the worker did not become ready")
                time.sleep(0.2)
            return [faust_run(bootstrap, progress, b, args.timeout, prefix) for b in batches]
        finally:
            worker.terminate()
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
            log.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        bootstrap, partitions, progress, prefix, wait = args.worker
        worker_main(bootstrap, int(partitions), Path(progress), int(wait), prefix)
        return 0
    prefixes = {PREFIX: 0, f"{PREFIX}fw": FETCH_WAIT_MS}
    topics = {f"{prefix}-{t}": args.partitions for prefix in prefixes for t in TOPICS}
    topics |= {f"{prefix}-detector-state-changelog": args.partitions for prefix in prefixes}
    topics |= {f"{PREFIX}-bare-raw": args.partitions, f"{PREFIX}-bare-events": args.partitions}
    all_records = lines(args.events * args.runs)
    batches = [all_records[i * args.events : (i + 1) * args.events] for i in range(args.runs)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        MockKafka(topics, lifetime=2 * args.timeout * args.runs + 180) as kafka,
    ):
        rates = {p: worker_rates(kafka.bootstrap, p, wait, batches, args) for p, wait in prefixes.items()}
        bare_rates = [bare_run(kafka.bootstrap, b, i) for i, b in enumerate(batches)]
        embedded_rates = [embedded_run(b, Path(tmp)) for b in batches]
    print(f"events per run: {args.events}, runs: {args.runs}, partitions: {args.partitions}, rules: rules/")
    rows = [
        ("faust worker, mock broker (fetch wait 1,500 ms)", rates[PREFIX]),
        (f"faust worker, fetch wait {FETCH_WAIT_MS} ms (no mock stalls)", rates[f"{PREFIX}fw"]),
        ("bare aiokafka hop, same mock (ceiling)", bare_rates),
        ("embedded runner", embedded_rates),
    ]
    for name, values in rows:
        print(f"{name:<52}: {statistics.median(values):10,.0f} events/s  runs {_fmt(values)}")
    return 0


def _fmt(rates: list[float]) -> str:
    return ", ".join(f"{r:,.0f}" for r in rates)


if __name__ == "__main__":
    sys.exit(main())
