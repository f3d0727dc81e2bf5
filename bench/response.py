"""Benchmark: the response engine's overhead from a decision to the platform call, p50 and p99.

What is timed, per action: from ``ResponseEngine.submit([proposal])`` (a stable rule's ``lock_storage`` with
``approval: auto`` on one container) to the moment the platform is asked for its first mutation (the
storage's observer sees ``platform.storage.set_public_read``). In between, the engine does what makes it
safe: the decision (self-protection, blast radius, maturity), an audited decision record, the idempotent
insert of the action, the compare-and-set to ``running``, ``check`` and ``plan`` against live state with the
plan stored, and the audited intent of step 0. The baseline, in the same run: the remediator called directly
(``check``, ``plan``, ``apply_step(0)``) with no engine around it, timed to the same platform call.

Both run over the real local platform, action store and audit log in a folder beside this file (not /tmp,
which may be a tmpfs where fsync is free), with the audit log at ``synchronous=FULL`` and ``NORMAL``.

Run: ``.venv/bin/python bench/response.py [--actions 200] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vigil.audit.log import AuditLog
from vigil.platform.events import PlatformEvent
from vigil.platform.local.compute import LocalCompute
from vigil.platform.local.keyvault import LocalKeyVault
from vigil.platform.local.masterkey import MasterKey
from vigil.platform.local.storage import LocalStorage
from vigil.remediators.base import Context, remediators
from vigil.response.engine import ResponseEngine
from vigil.response.executor import Executor
from vigil.response.policy import Proposal
from vigil.response.store import ActionStore
from vigil.rules.model import RemediateAction
from vigil.sections import ResponseSettings

LOCK = RemediateAction("lock_storage", "{{ resource.id }}", approval="auto")
FIRST_MUTATION = "platform.storage.set_public_read"


class Stopwatch:
    """The platform's observer: notes when the first mutation of each container is asked for."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    async def record(self, event: PlatformEvent) -> None:
        if event.kind == FIRST_MUTATION:
            self.at.setdefault(event.subject, time.perf_counter())


async def _run(root: Path, sync: str, actions: int) -> dict[str, list[float]]:
    watch = Stopwatch()
    vault = LocalKeyVault(root / "vault.db", MasterKey.from_file(root / "master.key"), observer=watch)
    storage = LocalStorage(root / "storage", vault, observer=watch)
    compute = LocalCompute(root / "compute.db", vault, storage, observer=watch)
    audit = AuditLog(root / "audit.db", vault, synchronous=sync)  # type: ignore[arg-type]
    store = ActionStore(root / "vigil.db")
    try:
        await audit.open()
        await vault.create_key("vigil", "k")
        ctx = Context(vault, storage, compute, "vigil")
        # (no rate limit and no default blast-radius cap: the bench acts on `actions` containers on purpose)
        settings = ResponseSettings(rate_limit=1_000_000, max_targets=None)
        engine = ResponseEngine(store, Executor(store, ctx, audit), ctx, audit, settings, alert=_quiet)
        for i in range(2 * actions):
            await storage.create_container("vigil", f"box-{i}", key_name="k")
            await storage.set_public_read("vigil", f"box-{i}", True)
        watch.at.clear()
        engine_ms: list[float] = []
        for i in range(actions):
            target = f"box-{i}"
            proposal = Proposal("bench.lock", "stable", "bench", LOCK, f"f{i}", None, target, time.time())
            t0 = time.perf_counter()
            await engine.submit([proposal])
            engine_ms.append((watch.at[target] - t0) * 1000)
        direct_ms: list[float] = []
        remediator = remediators.get("lock_storage")()
        params = remediator.params({})
        for i in range(actions, 2 * actions):
            target = f"box-{i}"
            t0 = time.perf_counter()
            state = await remediator.check(ctx, target, params)
            plan = remediator.plan(target, params, state)
            await remediator.apply_step(ctx, plan, 0)
            direct_ms.append((watch.at[target] - t0) * 1000)
        return {"engine": engine_ms, "direct": direct_ms}
    finally:
        await audit.close()
        store.close()
        compute.close()
        storage.close()
        vault.close()


async def _quiet(kind: str, message: str, details: dict[str, Any]) -> None:
    return None


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--actions", type=int, default=200, help="actions per configuration (default 200)")
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parent, help="where to write")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    print(f"response engine overhead, decision -> first platform call, {args.actions} actions each (ms)")
    print(f"  {'configuration':34s} {'p50':>8s} {'p99':>8s} {'mean':>8s}")
    for sync in ("FULL", "NORMAL"):
        root = Path(tempfile.mkdtemp(prefix=".bench-response-", dir=args.dir))
        try:
            timings = asyncio.run(_run(root, sync, args.actions))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        for path, values in timings.items():
            name = f"{path} [audit {sync}]" if path == "engine" else f"{path} (no engine) [{sync} run]"
            row = {"p50": _pct(values, 0.5), "p99": _pct(values, 0.99), "mean": statistics.fmean(values)}
            results[name] = row
            print(f"  {name:34s} {row['p50']:8.2f} {row['p99']:8.2f} {row['mean']:8.2f}")
    if args.json:
        args.json.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
