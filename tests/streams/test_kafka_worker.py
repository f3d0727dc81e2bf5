"""``vigil worker`` against librdkafka's mock cluster: parity with the embedded runner, and a killed worker.

The worker is the real entry point (:func:`vigil.streams.kafka_worker.run_worker` with a profile), in a
subprocess; events go in through the raw topic with aiokafka; what comes out is read from the worker's
own store (findings, kept once by id) and action store (one action per idempotency key). The reference is
the embedded runner's stages over the same events: the detect stage over the store's log, then the
response stage into a real response engine.

Single worker only: a second aiokafka group member fails SyncGroup on the mock (reference/dependencies.md
§3). Topics, the changelog included, are created by the fixture because the mock has no CreateTopics.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

from tests.conftest import wait_until
from tests.detectors.stateful_helpers import ev, load
from tests.kafka_mock import MockKafka
from tests.response.test_engine import Env
from tests.streams.test_kafka_agents import RULES as AGENT_RULES
from vigil.detectors.engine import Detector
from vigil.detectors.finding import finding_id
from vigil.events.model import Event, encode_event
from vigil.response.stage import ResponseStage
from vigil.rules.model import RuleSet
from vigil.store.sqlite import Store
from vigil.streams.kafka_app import TOPICS
from vigil.streams.pipeline import DetectStage

PARTITIONS = 3
RULES = (
    AGENT_RULES
    + """\
---
id: t.deny
title: denied, once an hour per resource
status: test
severity: low
kind: generic
match: outcome == "failure"
suppress: 1h
"""
)


def events(n: int = 60, resources: int = 15) -> list[Event]:
    """Reads spread so that each resource's third read comes in the second half: a window that only
    fires if the first half's counts survived a restart."""
    out = []
    for i in range(n):
        action = "delete" if i % 7 == 0 else "read"
        outcome = "failure" if i % 5 == 0 else "success"
        out.append(ev(f"e{i}", i, action=action, outcome=outcome, resource=f"/r/{i % resources}"))
    return out


@pytest.fixture(scope="module")
def kafka() -> Iterator[MockKafka]:
    topics: dict[str, int] = {}
    for prefix in ("par", "rst"):
        topics |= {f"{prefix}-{t}": PARTITIONS for t in TOPICS}
        topics[f"{prefix}-detector-state-changelog"] = PARTITIONS
    with MockKafka(topics, lifetime=300) as cluster:
        yield cluster


def profile(work: Path, bootstrap: str, prefix: str) -> Path:
    (work / "rules.yaml").write_text(RULES)
    path = work / "kafka.yaml"
    path.write_text(
        f"""data_dir: {work / "var"}
detect:
  rules: {work / "rules.yaml"}
kafka:
  broker: kafka://{bootstrap}
  app_id: {prefix}
  topic_prefix: {prefix}
  partitions: {PARTITIONS}
  replicas: 1
  declare_topics: false
  standby_replicas: 0
  session_timeout: 6.0
  heartbeat_interval: 1.0
  commit_interval: 0.5
  state_interval: 0.3
  batch_within: 0.05
  live_timers: false
"""
    )
    return path


class Worker:
    """``vigil worker`` in a subprocess, its log in a file."""

    def __init__(self, work: Path, config: Path) -> None:
        self.work, self.config = work, config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = work / "worker.log"

    def start(self) -> None:
        code = (
            "import argparse, sys; from vigil.streams.kafka_worker import run_worker; "
            f"sys.exit(run_worker(argparse.Namespace(config={str(self.config)!r})))"
        )
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code], stdout=log, stderr=log, cwd=self.work, env=os.environ.copy()
            )

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, no last commit, no last state save."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def findings(self) -> list[tuple[str, str]]:
        return self._rows("SELECT id, rule FROM findings")

    def actions(self) -> set[str]:
        return {r[0] for r in self._rows("SELECT id FROM actions")}

    def _rows(self, sql: str) -> list[tuple[str, str]]:
        path = self.work / "var" / "vigil.db"
        if not path.exists():
            return []
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return [tuple(r) for r in db.execute(sql).fetchall()]
        except sqlite3.OperationalError:
            return []
        finally:
            db.close()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


def produce(bootstrap: str, topic: str, batch: list[Event]) -> None:
    async def main() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            for e in batch:
                # keyed by resource id, as producers should: one resource's records stay in order
                await producer.send_and_wait(topic, encode_event(e), key=(e.resource.id or e.id).encode())
        finally:
            await producer.stop()

    asyncio.run(main())


def embedded(tmp: Path, rules: RuleSet, batch: list[Event]) -> tuple[set[str], set[str]]:
    """Finding ids and action ids of the embedded runner's stages over ``batch``."""
    store = Store(tmp / "embedded.db")
    store.append_events(batch, "test")
    DetectStage(store, Detector(rules.rules)).drain()
    found = {r["id"] for r in store.findings(limit=10_000)}
    env = Env(tmp / "env")

    async def act() -> set[str]:
        engine = await env.start(nodes=0)
        stage = ResponseStage(engine, store, lambda: rules, batch_window=0.0, from_start=True)
        while await stage.step():
            pass
        stage.close()
        ids = {a.id for a in engine.list(limit=10_000)}
        await env.close()
        return ids

    actions = asyncio.run(act())
    store.close()
    return found, actions


def reference_findings(rules: RuleSet, batch: list[Event]) -> set[str]:
    det = Detector(rules.rules)
    return {finding_id(f) for e in batch for f in det.process(e)}


def test_parity_with_the_embedded_runner(kafka: MockKafka, tmp_path: Path) -> None:
    work = tmp_path / "worker"
    work.mkdir()
    config = profile(work, kafka.bootstrap, "par")
    rules = load(tmp_path, RULES)
    batch = events()
    want_findings, want_actions = embedded(tmp_path, rules, batch)
    assert want_findings and want_actions  # the rules fire and remediate: the comparison means something
    produce(kafka.bootstrap, "par-raw", batch)
    worker = Worker(work, config)
    worker.start()
    try:
        wait_until(
            lambda: (
                len(worker.findings()) >= len(want_findings) and len(worker.actions()) >= len(want_actions)
            ),
            f"the worker's findings and actions\n{worker.tail()}",
            deadline=60,
        )
    finally:
        status = worker.stop()
    assert {fid for fid, _ in worker.findings()} == want_findings
    assert worker.actions() == want_actions
    assert status == 0, worker.tail()


def test_killed_worker_resumes_windows_from_the_changelog(kafka: MockKafka, tmp_path: Path) -> None:
    work = tmp_path / "worker"
    work.mkdir()
    config = profile(work, kafka.bootstrap, "rst")
    rules = load(tmp_path, RULES)
    batch = events()
    first, second = batch[:30], batch[30:]
    want_all = reference_findings(rules, batch)
    # every threshold finding comes from the second half: it needs the first half's counts
    assert "t.burst" not in _rules_of(rules, first) and "t.burst" in _rules_of(rules, batch)
    produce(kafka.bootstrap, "rst-raw", first)
    worker = Worker(work, config)
    worker.start()
    try:
        # killed mid-stream: as soon as the first findings are stored, most of the first half unsaved
        wait_until(lambda: len(worker.findings()) >= 2, f"phase 1\n{worker.tail()}", deadline=60)
        worker.kill()
        assert len(worker.findings()) < len(want_all)
        produce(kafka.bootstrap, "rst-raw", second)
        worker.start()
        wait_until(lambda: len(worker.findings()) >= len(want_all), f"phase 2\n{worker.tail()}", deadline=60)
        time.sleep(1.0)  # settle: events counted twice would show up as extra findings
    finally:
        worker.stop()
    got = worker.findings()
    assert len(got) == len({fid for fid, _ in got})
    assert {fid for fid, _ in got} == want_all, worker.tail()
    assert sum(1 for _, rule in got if rule == "t.burst") == 15  # one per resource, each across the kill


def _rules_of(rules: RuleSet, batch: list[Event]) -> list[str]:
    det = Detector(rules.rules)
    return [f.rule for e in batch for f in det.process(e)]
