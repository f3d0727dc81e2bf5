"""``vigil worker [--config config/kafka.yaml]``: one faust worker of the scale-out pipeline.

A worker opens what the embedded daemon opens for the stages it runs — the store (findings and incidents,
each finding kept once), the local platform and the audit log (what remediators act on and what every
decision is written to), the response engine (built by :func:`~vigil.streams.response_run.start_response`,
exactly as ``vigil run`` builds it) and the alert sinks with their outbox — and then runs the faust app
of :mod:`.kafka_app` until SIGINT or SIGTERM. Start as many workers as the topics have partitions; faust
spreads the partitions over them and moves them (with their detector state) when one joins or leaves.

Exit status: 0 after a clean stop, 1 when something could not be opened, 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from typing import Any

from vigil.errors import ConfigError
from vigil.settings import Settings, load
from vigil.streams.kafka_settings import KafkaSettings

log = logging.getLogger(__name__)


def add_parsers(sub: Any) -> None:
    """Add ``vigil worker`` to the top-level subparsers."""
    p = sub.add_parser(
        "worker",
        help="run a faust worker of the scale-out pipeline (Kafka or the Event Hubs Kafka endpoint)",
        description="Run one faust worker: normalise, detect, decide and act over Kafka topics.",
    )
    p.add_argument(
        "--config", metavar="FILE", help="settings profile with a kafka: section (config/kafka.yaml)"
    )


def run_worker(args: argparse.Namespace) -> int:
    """Entry point of ``vigil worker``; the exit status."""
    try:
        settings = load(Settings, getattr(args, "config", None))
    except ConfigError as exc:
        print(f"vigil: configuration error: {exc}")
        return 2
    return serve_worker(settings)


def serve_worker(settings: Settings) -> int:
    """Open the stores, the platform and the engine, then run the faust worker until stopped."""
    import faust  # noqa: PLC0415 (vigil --help must stay instant)

    from vigil.logs import configure  # noqa: PLC0415 (vigil --help must stay instant)
    from vigil.rules.lint import with_warnings  # noqa: PLC0415 (vigil --help must stay instant)
    from vigil.rules.loader import load_rules  # noqa: PLC0415 (vigil --help must stay instant)
    from vigil.rules.schema_forms import parse_duration  # noqa: PLC0415 (vigil --help must stay instant)
    from vigil.store.sqlite import Store, StoreError  # noqa: PLC0415 (vigil --help must stay instant)
    from vigil.streams import RunState  # noqa: PLC0415 (vigil --help must stay instant)
    from vigil.streams.kafka_app import Hooks, KafkaApp  # noqa: PLC0415 (vigil --help must stay instant)

    configure(settings.log_level, settings.log_format)
    kafka = settings.kafka
    ruleset = load_rules([settings.detect.rules])
    if not ruleset.ok:
        for diag in ruleset.diagnostics:
            if diag.severity == "error":
                log.error("%s", diag.format())
        log.error("the rule set %s has errors; not starting", settings.detect.rules)
        return 1
    ruleset = with_warnings(ruleset)
    warn_split_groups(ruleset, kafka)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(settings.store.path, synchronous=settings.store.synchronous)
    except (OSError, StoreError) as exc:
        log.error("cannot open the store: %s", exc)
        return 1
    state = RunState(settings=settings, store=store, ruleset=ruleset)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        opened = loop.run_until_complete(_open(state))
    except Exception as exc:
        log.error("cannot open the platform, the audit log, the alerts or the response engine: %s", exc)
        store.close()
        return 1
    runtime, alerting, response = opened
    hooks = Hooks(
        submit=response.engine.submit,
        record=lambda found: _record(store, found),
        deliver=lambda alert: _deliver(alerting, ruleset, alert),
    )
    kapp = KafkaApp(
        kafka,
        ruleset,
        hooks=hooks,
        lateness=parse_duration(settings.detect.lateness),
        max_keys=settings.detect.max_keys,
        fmt=settings.ingest.format,
        base_url=settings.alerts.base_url or "",
    )
    stop = asyncio.Event()

    async def background() -> None:
        await response.engine.resume()
        await asyncio.gather(alerting.dispatcher.run(stop), _flush_groups(alerting, ruleset, stop))

    async def close(sender: Any, **_: Any) -> None:
        stop.set()
        response.close()
        await alerting.close()
        await runtime.close()
        store.close()

    kapp.app.task(background)
    kapp.app.on_before_shutdown.connect(close)  # type: ignore[arg-type]

    log.info(
        "worker %s on %s: %d rules, topics %s-*, %d partitions",
        kafka.app_id,
        kafka.broker,
        len(ruleset.rules),
        kafka.topic_prefix,
        kafka.partitions,
    )
    worker = faust.Worker(kapp.app, loop=loop, loglevel=settings.log_level, override_logging=False)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


def _record(store: Any, found: list[Any]) -> None:
    """Findings from the findings topic into the store: each kept once (by its id), incidents filed."""
    store.commit_detection([(0, f) for f in found], 0, None, "kafka")


async def _open(state: Any) -> tuple[Any, Any, Any]:
    from vigil.streams.alert_run import start_alerts  # noqa: PLC0415 (vigil --help must stay instant)
    from vigil.streams.platform_run import start_platform  # noqa: PLC0415 (vigil --help must stay instant)
    from vigil.streams.response_run import start_response  # noqa: PLC0415 (vigil --help must stay instant)

    settings = state.settings
    runtime = await start_platform(settings, state.store, state.ruleset, None)
    state.platform = runtime
    try:
        alerting = start_alerts(state, settings.alerts.base_url or "http://localhost")
        response = start_response(state, runtime, notice=alerting.stage.notice)
    except BaseException:
        await runtime.close()
        raise
    return runtime, alerting, response


async def _deliver(alerting: Any, ruleset: Any, alert: Any) -> None:
    """An alert from the alerts topic through the daemon's grouper and router into the outbox."""
    for out in alerting.stage.grouper.offer(alert):
        names = alerting.stage.router.route(ruleset.get(out.rule), out.severity)
        if names:
            await alerting.dispatcher.submit(names, out)


async def _flush_groups(alerting: Any, ruleset: Any, stop: asyncio.Event) -> None:
    """Held group updates go out when their window closes (the alert stage's step does this)."""
    while not stop.is_set():
        for out in alerting.stage.grouper.flush(time.time()):
            names = alerting.stage.router.route(ruleset.get(out.rule), out.severity)
            if names:
                await alerting.dispatcher.submit(names, out)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


def warn_split_groups(ruleset: Any, kafka: KafkaSettings) -> list[str]:
    """Stateful rules whose groups are not inside one partition (their ``group_by`` lacks the partition
    key): each partition counts its own share. Logged at start; returns their ids."""
    key = kafka.partition_key[0] if kafka.partition_key else ""
    split = []
    for rule in ruleset.rules:
        if rule.form != "event" and key not in rule.group_by:
            split.append(rule.id)
    if split:
        log.warning(
            "rules grouped without %s (the partition key) count per partition, not globally: %s",
            key,
            ", ".join(split),
        )
    return split
