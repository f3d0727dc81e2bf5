"""The response engine inside the daemon: findings in, decided and audited actions out.

Opened after the platform and the audit log (:mod:`vigil.streams.platform_run`), because remediators act
on that platform and every decision and step is audited first. At start the engine resumes what a crash
interrupted (every ``running`` action is reconciled with live state and continued from its stored plan,
never mutated twice), then the stage follows the findings the detect stage commits: it reads them after its
own cursor, gathers one rule's findings for ``response.batch_window`` seconds so that a storm is judged as
a whole by the blast-radius caps, and submits them (:mod:`vigil.response.stage`).

Alerts (a blast-radius refusal, a dry-run plan, an approval waiting, a failure) are logged at WARNING,
counted by kind for ``/metrics`` and handed to the alert stage, which routes them to the sinks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from vigil.audit.log import HMAC_KEY, SIGNING_KEY
from vigil.remediators.base import Context, Protected
from vigil.response.engine import ResponseEngine
from vigil.response.executor import Executor
from vigil.response.policy import protection
from vigil.response.stage import ResponseStage
from vigil.response.store import ActionStore
from vigil.rules.model import RuleSet
from vigil.rules.schema_forms import parse_duration
from vigil.streams import RunState
from vigil.streams.azure_run import AzureRuntime
from vigil.streams.platform_run import PlatformRuntime

log = logging.getLogger(__name__)

#: the alert stage's hook for response notices (blast radius, approval waiting, dry run, failure)
Notice = Callable[[str, str, dict[str, Any]], Awaitable[None]]


@dataclass
class ResponseRuntime:
    """The engine, its stage and its store; :meth:`close` after the stage stopped."""

    engine: ResponseEngine
    stage: ResponseStage
    store: ActionStore
    alerts: Counter[str] = field(default_factory=Counter)

    async def run(self, stop: asyncio.Event) -> None:
        """Resume interrupted actions, then follow the findings until ``stop``."""
        try:
            resumed = await self.engine.resume()
        except Exception:  # the audit log may be down at start: the stage's ticks retry
            log.exception("response engine: resume failed; interrupted actions wait for the next tick")
            resumed = []
        if resumed:
            log.info("response engine: %d interrupted actions resumed", len(resumed))
        await self.stage.run(stop, asyncio.Event())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stage.close()
        self.store.close()


def start_response(
    state: RunState,
    runtime: PlatformRuntime,
    *,
    notice: Notice | None = None,
    azure: AzureRuntime | None = None,
) -> ResponseRuntime:
    """Open the action store beside the event store and build the engine over the local platform, or over
    the Azure providers where ``azure`` has them (:mod:`vigil.streams.azure_run`)."""
    settings = state.settings
    assert state.store is not None
    platform = runtime.platform
    # the remediators check the context's list themselves: it holds the settings' names and the audit keys
    protected = protection(settings.response, Protected(), always_keys=frozenset({SIGNING_KEY, HMAC_KEY}))
    vault = azure.vault if azure is not None and azure.vault is not None else platform.vault
    compute = azure.compute if azure is not None and azure.compute is not None else platform.compute
    lock = azure.storage_lock if azure is not None else None
    vault_lock = azure.vault_lock if azure is not None else None
    ctx = Context(
        vault, platform.storage, compute, "vigil", protected, storage_lock=lock, vault_lock=vault_lock
    )
    store = ActionStore(settings.store.path, synchronous=settings.store.synchronous)
    alerts: Counter[str] = Counter()

    async def alert(kind: str, message: str, details: dict[str, Any]) -> None:
        alerts[kind] += 1
        log.warning("response alert [%s]: %s", kind, message)
        if notice is not None:  # to the alert sinks (never blocks the decision: the outbox is durable)
            try:
                await notice(kind, message, details)
            except Exception:
                log.exception("response alert [%s] could not be queued for the sinks", kind)

    step_timeout = parse_duration(settings.response.step_timeout).total_seconds()
    executor = Executor(store, ctx, runtime.audit, step_timeout=step_timeout)
    engine = ResponseEngine(store, executor, ctx, runtime.audit, settings.response, alert=alert)

    def rules() -> RuleSet:
        assert state.ruleset is not None
        return state.ruleset

    stage = ResponseStage(engine, state.store, rules, batch_window=settings.response.batch_window)
    return ResponseRuntime(engine, stage, store, alerts)
