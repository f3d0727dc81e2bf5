"""librdkafka's mock Kafka cluster, started for the Kafka tests in a subprocess of bounded lifetime.

There is no Kafka broker on the test machines (no Docker, no Java). The confluent-kafka wheel bundles
librdkafka, whose mock cluster speaks the real wire protocol on a loopback port: Produce, Fetch, offsets,
consumer groups (one member), idempotent producers. It has no CreateTopics, so every topic a test needs
(changelogs included) is created here, before any client connects, with ``rd_kafka_mock_topic_create``.
Limits (reference/dependencies.md §3): a second aiokafka member of a group fails SyncGroup, and
transactions are not usable, so the tests run a single worker with ``at_least_once``.

Run as a script it prints ``BOOTSTRAP host:port`` and serves until SIGTERM or ``--lifetime`` seconds
(so a crashed test never leaves a cluster behind). :class:`MockKafka` starts and stops that script.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

RD_KAFKA_PRODUCER = 0


def library_path() -> str:
    """The librdkafka shared object inside the confluent-kafka wheel (its mock API is exported)."""
    import confluent_kafka

    base = Path(confluent_kafka.__file__).resolve().parent.parent
    found = sorted(glob.glob(str(base / "confluent_kafka.libs" / "librdkafka*.so*")))
    if not found:
        raise RuntimeError(f"no librdkafka in {base / 'confluent_kafka.libs'}; is confluent-kafka installed?")
    return found[0]


def _load() -> ctypes.CDLL:
    lib = ctypes.CDLL(library_path())
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_mock_cluster_new.restype = ctypes.c_void_p
    lib.rd_kafka_mock_cluster_new.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_mock_cluster_bootstraps.restype = ctypes.c_char_p
    lib.rd_kafka_mock_cluster_bootstraps.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_mock_topic_create.restype = ctypes.c_int
    lib.rd_kafka_mock_topic_create.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
    lib.rd_kafka_mock_cluster_destroy.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    return lib


def serve(topics: list[tuple[str, int]], brokers: int, lifetime: float) -> int:
    """Start the cluster, create ``topics``, print the bootstrap line, serve until stopped."""
    lib = _load()
    errstr = ctypes.create_string_buffer(512)
    rk = lib.rd_kafka_new(RD_KAFKA_PRODUCER, lib.rd_kafka_conf_new(), errstr, len(errstr))
    if not rk:
        print(f"rd_kafka_new failed: {errstr.value.decode()}", file=sys.stderr)
        return 1
    mc = lib.rd_kafka_mock_cluster_new(rk, brokers)
    if not mc:
        print("rd_kafka_mock_cluster_new failed", file=sys.stderr)
        return 1
    for name, partitions in topics:
        err = lib.rd_kafka_mock_topic_create(mc, name.encode(), partitions, 1)
        if err:
            print(f"rd_kafka_mock_topic_create({name}) failed: error {err}", file=sys.stderr)
            return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("BOOTSTRAP", lib.rd_kafka_mock_cluster_bootstraps(mc).decode(), flush=True)
    stop.wait(lifetime)
    lib.rd_kafka_mock_cluster_destroy(mc)
    lib.rd_kafka_destroy(rk)
    return 0


class MockKafka:
    """The mock cluster in a child process: ``with MockKafka({"t": 3}) as kafka: kafka.bootstrap``."""

    def __init__(self, topics: dict[str, int], *, lifetime: float = 600.0, brokers: int = 1) -> None:
        self.topics = topics
        self.lifetime = lifetime
        self.brokers = brokers
        self.bootstrap = ""
        self._proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 20.0) -> str:
        args = [sys.executable, __file__, "--brokers", str(self.brokers), "--lifetime", str(self.lifetime)]
        for name, parts in self.topics.items():
            args += ["--topic", f"{name}:{parts}"]
        self._proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=os.environ.copy()
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self._proc.stdout.readline()
            if line.startswith("BOOTSTRAP "):
                self.bootstrap = line.split()[1]
                return self.bootstrap
            if not line and self._proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError("the librdkafka mock cluster did not start")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()

    def __enter__(self) -> MockKafka:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="librdkafka mock cluster with pre-created topics")
    parser.add_argument("--brokers", type=int, default=1)
    parser.add_argument("--lifetime", type=float, default=300.0, help="seconds before it stops by itself")
    parser.add_argument("--topic", action="append", default=[], metavar="NAME:PARTITIONS")
    args = parser.parse_args(argv)
    topics = []
    for spec in args.topic:
        name, _, parts = spec.partition(":")
        topics.append((name, int(parts or "1")))
    return serve(topics, args.brokers, args.lifetime)


if __name__ == "__main__":
    sys.exit(main())
