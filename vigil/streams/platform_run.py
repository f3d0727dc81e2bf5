"""The local platform and the audit log inside the daemon: open, serve, checkpoint, close.

Start order matters, because the pieces depend on each other in a circle that has to be cut somewhere:

1. the platform feed (:mod:`vigil.streams.platform_feed`), over the store: the observer of every provider;
2. the local platform (key vault, storage, compute), reporting to the feed;
3. the audit log, whose signing and HMAC keys live in that vault (it creates them on its first start: those
   key creations are held by the feed), then attached to the feed, which appends the held changes first;
4. a ``rules_loaded`` record for the rule set the daemon starts with.

From then on every platform change is audited before it happens, and an audit failure refuses it (fail
closed). The audit log's status is the daemon's *degraded* state: ``/readyz`` reports it and ``/metrics``
counts it, but ingestion and detection go on, so no event is lost while a disk is full; what stops is
anything that must be audited first. A timer writes the signed checkpoint the audit log owes (every
``audit.checkpoint_interval`` seconds) even when nothing is appended for a while.

The vault is opened even when ``platform.enabled`` is false (it holds the audit keys); ``enabled`` only
decides whether the platform is served to other processes at ``/platform/v1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from fastapi import APIRouter

from vigil.audit.checkpoint import AuditObserver, FileSink
from vigil.audit.log import AuditLog, AuditUnavailableError
from vigil.audit.record import Actor, AuditKind
from vigil.platform.local.platform import LocalPlatform
from vigil.platform.service import platform_router
from vigil.rules.model import RuleSet
from vigil.settings import Settings
from vigil.store.sqlite import Store
from vigil.streams.platform_feed import PlatformFeed

log = logging.getLogger(__name__)

#: how often the timer asks the audit log whether a checkpoint is due (it decides)
CHECKPOINT_POLL = 1.0


@dataclass
class PlatformRuntime:
    """What :func:`start_platform` opened; :meth:`close` closes it in reverse order."""

    platform: LocalPlatform
    audit: AuditLog
    feed: PlatformFeed
    serve: bool
    operator_token: str = field(repr=False, default="")

    def router(self) -> APIRouter | None:
        """The ``/platform/v1`` routes, or None when the platform is not served."""
        if not self.serve:
            return None
        p = self.platform
        attestation = (p.attestation, p.issuer.jwks(), p.node_keys.set)
        return platform_router(p.vault, p.storage, p.compute, p.tokens, attestation)

    async def rules_loaded(self, ruleset: RuleSet, *, reason: str) -> None:
        """Audit a rule set taking effect (at start and at each reload); raises when it cannot."""
        details = {"hash": ruleset.hash, "rules": len(ruleset.rules), "reason": reason}
        await self.audit.append(Actor.system("vigil"), AuditKind.RULES_LOADED, "rules", details)

    async def run_checkpoints(self, stop: asyncio.Event) -> None:
        """Until ``stop``: have the audit log write a checkpoint when one is due (failures: its status)."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), CHECKPOINT_POLL)
            try:
                await self.audit.checkpoint_if_due()
            except AuditUnavailableError as exc:  # counted and shown by audit.status(); log once per change
                log.debug("audit checkpoint not written: %s", exc)

    async def close(self) -> None:
        await self.audit.close()
        self.platform.close()


async def start_platform(settings: Settings, store: Store, ruleset: RuleSet, wake: object) -> PlatformRuntime:
    """Open the feed, the platform and the audit log (see the module docstring for the order)."""
    feed = PlatformFeed(store, wake=wake if callable(wake) else None)
    platform = LocalPlatform(settings.platform, feed)
    audit_settings = settings.audit
    audit = AuditLog(
        audit_settings.path,
        platform.vault,
        synchronous=audit_settings.synchronous,
        checkpoint_every=audit_settings.checkpoint_every,
        checkpoint_seconds=audit_settings.checkpoint_interval,
        sinks=[FileSink(path) for path in audit_settings.checkpoint_files],
    )
    try:
        await audit.open()
        await feed.attach_audit(AuditObserver(audit))
        runtime = PlatformRuntime(platform, audit, feed, settings.platform.enabled)
        runtime.operator_token = platform.operator_token()
        await runtime.rules_loaded(ruleset, reason="start")
    except BaseException:
        await audit.close()
        platform.close()
        raise
    return runtime
