"""Benchmark: durable ingestion over loopback HTTP into a real ``vigil run`` daemon, end to end.

What is measured: one daemon process (``python -m vigil.cli run --config PROFILE``, started here in a
temporary folder with ``http.port: 0``, the shipped rule pack ``rules/`` and a fresh SQLite store) receives
``--events`` Azure Activity Log records (``gen_activity.py``, about 1.5 KB each; sent in time order, as a
source delivers its log, unless ``--order generated``) as JSON Lines bodies of
``--batch`` records on ``POST /v1/events`` with its local bearer token (``{data_dir}/ingest.token``). The
client is this process: ``--clients`` ``httpx.AsyncClient`` connections (keep-alive), each posting its
share of the batches one after another, so the daemon always has work queued. A 200 answer means the
batch's events are normalised and committed to the store (``store.accept``) — durable before the answer.

Timed from the first request:

- **accepted**: until every batch is acknowledged (``200 {"accepted": 500}``); events/s = N / that time;
- **processed**: until the daemon's detect stage has run every event through the shipped rules and
  committed its findings and cursor: ``/metrics`` is polled every ``--poll`` seconds (on its own
  connection) until ``vigil_detect_events_total`` reaches N; events/s = N / that time. This is the figure
  the target is about.

Also reported: findings stored (``vigil_findings_total``), the largest detect lag seen while posting
(``vigil_detect_lag_events``, sampled every 50 ms), 429 answers (counted here and retried after
``Retry-After``), request latency, and the daemon's CPU time (utime + stime of all its threads, from
``/proc/PID/stat``) per event and as a share of the wall time (> 100% means more than one core busy), next
to this client's own CPU time. On a 2-core machine the client (JSON bodies are pre-built, but httpx still
costs CPU) and the daemon share the CPU, so the figure is a lower bound of what the daemon alone sustains.

Each ``--synchronous`` setting (``store.synchronous``: ``FULL``, a commit survives power loss; ``NORMAL``,
survives a crash of the process only) gets its own fresh daemon and data folder. The daemon is stopped with
SIGTERM at the end and must exit 0 (its clean shutdown drains the detect stage and saves a snapshot).
The findings count can differ by a few between runs: the concurrent connections' batches reach the event
log in a different order each time, and the stateful rules (windows, sequences) see that order.

Target (the ingestion issue's acceptance): >= 20,000 events/s accepted *and processed* by the shipped
rules, batches of 500, one daemon process.

Run: ``make bench`` or ``.venv/bin/python bench/ingest.py [--events N] [--clients C]
[--synchronous FULL NORMAL] [--json FILE]``; ``--quick`` is a small smoke run (5,000 events, under 10 s
per setting).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_activity import lines

REPO = Path(__file__).resolve().parent.parent
TARGET = 20_000.0  # events/s, accepted and processed end to end
START_DEADLINE = 60.0
_TICK = os.sysconf("SC_CLK_TCK")
_METRIC = re.compile(rb"^(vigil_[a-z_]+)(\{[^}]*\})? (\S+)$", re.M)

PROFILE = """\
data_dir: {data_dir}
log_level: INFO
http:
  host: 127.0.0.1
  port: 0
detect:
  rules: {rules}
store:
  synchronous: {synchronous}
"""


class Daemon:
    """A ``vigil run`` subprocess whose stderr a thread collects, so it never blocks on a full pipe."""

    def __init__(self, workdir: Path, synchronous: str) -> None:
        self.data_dir = workdir / "var"
        profile = workdir / "profile.yaml"
        profile.write_text(
            PROFILE.format(data_dir=self.data_dir, rules=REPO / "rules", synchronous=synchronous),
            encoding="utf-8",
        )
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith("VIGIL_")}
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vigil.cli", "run", "--config", str(profile)],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._log: list[str] = []
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.put(line)

    def log(self) -> str:
        while not self._lines.empty():
            self._log.append(self._lines.get_nowait())
        return "".join(self._log)

    def wait_serving(self) -> tuple[str, str]:
        """(base URL, bearer token) once the daemon logs that it serves."""
        end = time.monotonic() + START_DEADLINE
        while time.monotonic() < end:
            match = re.search(r"serving on (http://127\.0\.0\.1:\d+)", self.log())
            if match:
                token = (self.data_dir / "ingest.token").read_text(encoding="utf-8").strip()
                return match.group(1), token
            if self.proc.poll() is not None:
                self._pump.join(5)
                raise SystemExit(f"vigil exited with {self.proc.returncode} before serving:\n{self.log()}")
            time.sleep(0.05)
        self.kill()
        raise SystemExit(f"vigil did not serve within {START_DEADLINE:.0f} s:\n{self.log()}")

    def cpu_s(self) -> float:
        """utime + stime of the daemon (all its threads) in seconds."""
        with open(f"/proc/{self.proc.pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15 of proc(5)

    def terminate(self, timeout: float = 60.0) -> tuple[int, float]:
        """SIGTERM, then the exit status and how long the clean shutdown took."""
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            status = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise SystemExit(f"vigil did not stop within {timeout:.0f} s of SIGTERM:\n{self.log()}") from None
        self._pump.join(10)
        return status, time.perf_counter() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._pump.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def parse_metrics(text: bytes) -> dict[str, float]:
    """``name{labels}`` -> value for every vigil_* sample of a Prometheus text exposition."""
    return {(m.group(1) + (m.group(2) or b"")).decode(): float(m.group(3)) for m in _METRIC.finditer(text)}


async def _post_all(
    url: str, token: str, bodies: list[bytes], clients: int, events: int, poll: float
) -> dict[str, Any]:
    """Post ``bodies`` over ``clients`` keep-alive connections; poll /metrics until all are processed."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/x-ndjson"}
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    timeout = httpx.Timeout(120.0)
    posters = [
        httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=timeout)
        for _ in range(clients)
    ]
    monitor = httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout)
    acked = 0
    retries = 0
    latencies: list[float] = []
    samples: list[tuple[float, float, float]] = []  # (t, detect events, detect lag)
    try:
        # one untimed request per connection first: it opens the connections (TCP handshakes) so the
        # timed run measures ingestion, not connection set-up
        await asyncio.gather(*(c.get("/healthz") for c in [*posters, monitor]))
        before = parse_metrics((await monitor.get("/metrics")).content)
        perf = time.perf_counter
        t0 = perf()
        sending = True

        async def poster(client: httpx.AsyncClient, mine: list[bytes]) -> None:
            nonlocal acked, retries
            for body in mine:
                while True:
                    s = perf()
                    r = await client.post("/v1/events", content=body)
                    if r.status_code == 429:
                        retries += 1
                        await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                        continue
                    if r.status_code != 200:
                        raise SystemExit(f"POST /v1/events answered {r.status_code}: {r.text[:500]}")
                    latencies.append(perf() - s)
                    acked += r.json()["accepted"]
                    break

        async def watcher() -> dict[str, float]:
            deadline = perf() + 600.0
            while True:
                m = parse_metrics((await monitor.get("/metrics")).content)
                done = m.get("vigil_detect_events_total", 0.0) - before.get("vigil_detect_events_total", 0.0)
                samples.append((perf() - t0, done, m.get("vigil_detect_lag_events", 0.0)))
                if done >= events:
                    return m
                if perf() > deadline:
                    raise SystemExit(f"only {done:,.0f} of {events:,} events processed after 600 s")
                await asyncio.sleep(poll if not sending else max(poll, 0.05))

        watch = asyncio.create_task(watcher())
        await asyncio.gather(*(poster(c, bodies[i::clients]) for i, c in enumerate(posters)))
        t_acked = perf() - t0
        sending = False
        after = await watch
        t_processed = samples[-1][0]
    finally:
        for c in [*posters, monitor]:
            await c.aclose()
    latencies.sort()
    return {
        "acked_events": acked,
        "accepted_s": t_acked,
        "processed_s": t_processed,
        "before": before,
        "after": after,
        "retries_429": retries,
        "max_lag_events": max(s[2] for s in samples),
        "lag_at_last_ack": max((s[2] for s in samples if s[0] <= t_acked), default=0.0),
        "request_p50_ms": latencies[len(latencies) // 2] * 1000,
        "request_max_ms": latencies[-1] * 1000,
    }


def run_once(args: argparse.Namespace, bodies: list[bytes], synchronous: str) -> dict[str, Any]:
    """One fresh daemon with ``store.synchronous`` = ``synchronous``; its figures."""
    with tempfile.TemporaryDirectory(prefix="vigil-bench-ingest-") as tmp:
        daemon = Daemon(Path(tmp), synchronous)
        try:
            url, token = daemon.wait_serving()
            cpu0, client0 = daemon.cpu_s(), time.process_time()
            r = asyncio.run(_post_all(url, token, bodies, args.clients, args.events, args.poll))
            cpu1, client1 = daemon.cpu_s(), time.process_time()
            status, stop_s = daemon.terminate()
        finally:
            daemon.kill()
        log = daemon.log()
    if r["acked_events"] != args.events:
        raise SystemExit(f"{r['acked_events']:,} events acknowledged, {args.events:,} sent")
    before, after = r.pop("before"), r.pop("after")

    def delta(name: str) -> float:
        return float(after.get(name, 0.0) - before.get(name, 0.0))

    n = args.events
    cpu = cpu1 - cpu0
    out = {
        "synchronous": synchronous,
        "events": n,
        "batch": args.batch,
        "clients": args.clients,
        **r,
        "accepted_per_s": n / r["accepted_s"],
        "processed_per_s": n / r["processed_s"],
        "findings": delta("vigil_findings_total"),
        "ingested_metric": delta('vigil_ingest_events_total{source="events"}'),
        "dead_letters": delta('vigil_ingest_dead_letters_total{source="events"}'),
        "daemon_cpu_s": cpu,
        "daemon_cpu_us_per_event": cpu / n * 1e6,
        "daemon_cpu_share": cpu / r["processed_s"],
        "client_cpu_s": client1 - client0,
        "exit_status": status,
        "stop_s": stop_s,
        "cores": os.cpu_count(),
    }
    out["pass"] = out["processed_per_s"] >= TARGET and out["accepted_per_s"] >= TARGET and status == 0
    print(
        f"store.synchronous={synchronous}: {n:,} events in {len(bodies)} batches of {args.batch} over "
        f"{args.clients} connections\n"
        f"   accepted  {out['accepted_per_s']:9,.0f} events/s ({r['accepted_s']:.2f} s to the last 200; "
        f"request p50 {r['request_p50_ms']:.0f} ms, max {r['request_max_ms']:.0f} ms; "
        f"{r['retries_429']} answers 429)\n"
        f"   processed {out['processed_per_s']:9,.0f} events/s ({r['processed_s']:.2f} s until "
        f"vigil_detect_events_total = {n:,}; detect lag max {r['max_lag_events']:,.0f} events)\n"
        f"   {out['findings']:,.0f} findings, {out['dead_letters']:,.0f} dead letters; daemon CPU "
        f"{cpu:.2f} s = {out['daemon_cpu_us_per_event']:.1f} us/event ({out['daemon_cpu_share']:.0%} of "
        f"the wall time), client CPU {out['client_cpu_s']:.2f} s, {out['cores']} cores\n"
        f"   SIGTERM: exit {status} after {stop_s:.2f} s"
    )
    if status != 0:
        print(log, file=sys.stderr)
    return out


def summary(runs: list[dict[str, Any]]) -> None:
    print(f"\n{'figure':52s} {'measured':>16s}   {'target':>16s}   result")
    for r in runs:
        for what, key in (("accepted", "accepted_per_s"), ("processed end to end", "processed_per_s")):
            value = r[key]
            ok = value >= TARGET
            print(
                f"{'ingest ' + what + ', synchronous=' + r['synchronous']:52s} {value:>7,.0f} events/s   "
                f">= {TARGET:>6,.0f} events/s   {'PASS' if ok else 'FAIL'}"
            )
        label = f"daemon exit status after SIGTERM, synchronous={r['synchronous']}"
        verdict = "PASS" if r["exit_status"] == 0 else "FAIL"
        print(f"{label:52s} {r['exit_status']:>16d}   {'== 0':>16s}   {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000, help="events to send")
    ap.add_argument("--batch", type=int, default=500, help="records per POST body")
    ap.add_argument("--clients", type=int, default=4, help="concurrent keep-alive connections")
    ap.add_argument(
        "--synchronous",
        nargs="+",
        choices=["FULL", "NORMAL"],
        default=["FULL"],
        help="store.synchronous setting(s); each gets a fresh daemon",
    )
    ap.add_argument(
        "--poll", type=float, default=0.01, help="seconds between /metrics polls after the last 200"
    )
    ap.add_argument("--seed", type=int, default=7, help="seed of the generated records")
    ap.add_argument(
        "--order",
        choices=["time", "generated"],
        default="time",
        help="send the records in time order (as a source delivers its log; the default) or in the "
        "generator's random-time order",
    )
    ap.add_argument("--quick", action="store_true", help="a small run (smoke test)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.quick:
        args.events = 5_000
    t0 = time.perf_counter()
    records = lines(args.events, args.seed, time_ordered=args.order == "time")
    bodies = [b"".join(records[i : i + args.batch]) for i in range(0, len(records), args.batch)]
    del records
    size = sum(map(len, bodies))
    print(
        f"generated {args.events:,} activity records ({size / args.events:,.0f} bytes each, "
        f"{size / 1e6:,.1f} MB, {args.order} order) in {time.perf_counter() - t0:.1f} s"
    )
    runs = [run_once(args, bodies, s) for s in args.synchronous]
    summary(runs)
    if args.json:
        report = {"quick": args.quick, "target_events_per_s": TARGET, "runs": runs}
        Path(args.json).write_text(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    if not all(r["exit_status"] == 0 for r in runs):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
