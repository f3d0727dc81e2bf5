"""Vigil on Azure inside the daemon: the providers remediations act through, and the Azure sources.

Built from ``settings.azure`` when ``azure.enabled`` is true (docs/azure.md); the embedded default never
imports the Azure SDKs. One azure-identity credential serves everything (a managed or workload identity in
production; nothing secret is configured). What it builds:

- **providers** for the response engine's :class:`~vigil.remediators.base.Context`: :class:`AzureCompute`
  (the VMs of ``azure.resource_groups`` are the nodes ``quarantine_vm`` acts on; without resource groups it
  keeps acting on the local node registry), :class:`AzureStorageLock`
  (``lock_storage_account``), with ``azure.keyvault.resource_group`` and ``vault_name`` the vault lockdown
  (``lockdown_vault``), and, with ``azure.keyvault.vault_url``, :class:`AzureKeyVault` for
  ``rotate_key`` and ``revoke_release`` (its releases checked by the MAA verifier when
  ``azure.attestation.maa_issuers`` is set). Without a vault URL the key remediations keep acting on the
  local vault;
- **sources**: one :class:`HubConsumer` per configured event hub (Blob checkpoint store, written only after
  the batch is in the store) and one :class:`LogsPoller` per Sentinel table, all feeding the same store and
  waking the detect stage exactly like HTTP ingestion does.

A source that cannot start (its checkpoint container unreachable, say) is logged and retried by its own
loop; it never stops the daemon, whose other sources keep working. :meth:`AzureRuntime.close` closes every
client and the credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vigil.rules.schema_forms import parse_duration

if TYPE_CHECKING:
    from vigil.platform.azure.compute import AzureCompute
    from vigil.platform.azure.keyvault import AzureKeyVault
    from vigil.platform.azure.keyvault_lockdown import AzureVaultLockdown
    from vigil.platform.azure.storage_lock import AzureStorageLock
    from vigil.settings import Settings
    from vigil.streams import RunState
    from vigil.streams.eventhubs_consumer import HubConsumer
    from vigil.streams.loganalytics import LogsPoller

log = logging.getLogger(__name__)

_HUB_COUNTERS = (
    ("events", "Events stored from an event hub, by hub."),
    ("duplicates", "Re-delivered events absorbed by their ids."),
    ("dead_letters", "Event Hubs records dead-lettered."),
    ("checkpoints", "Checkpoints written (after the batch was stored)."),
    ("stalls", "Partitions found silent by the watchdog."),
    ("restarts", "Consumer clients restarted."),
)
_POLL_COUNTERS = (
    ("polls", "Log Analytics queries, by table."),
    ("events", "Sentinel rows stored as events."),
    ("duplicates", "Rows re-read in the overlap and dropped."),
    ("partial_results", "Queries that answered part of the rows (cursor held back)."),
    ("failures", "Queries that failed (retried at the next interval)."),
)


@dataclass
class AzureRuntime:
    """What :func:`start_azure` built; :meth:`run_sources` until stopped, then :meth:`close`."""

    storage_lock: AzureStorageLock
    compute: AzureCompute | None = None
    vault: AzureKeyVault | None = None
    vault_lock: AzureVaultLockdown | None = None
    hubs: list[HubConsumer] = field(default_factory=list)
    pollers: list[LogsPoller] = field(default_factory=list)
    _closers: list[Callable[[], Awaitable[Any]]] = field(default_factory=list, repr=False)

    async def run_sources(self, stop: asyncio.Event) -> None:
        """Prepare and run every source until ``stop``; never raises (each source logs its own trouble)."""
        for hub in self.hubs:
            try:
                await hub.prepare()
            except Exception as exc:  # the consumer's own loop retries; the daemon keeps running
                log.error("event hub %s: cannot prepare its checkpoints yet: %s", hub.spec.name, exc)
        runs = [hub.run(stop) for hub in self.hubs] + [poller.run(stop) for poller in self.pollers]
        if runs:
            await asyncio.gather(*runs, return_exceptions=True)

    def metric_families(self) -> list[tuple[str, str, str, list[tuple[str, float]]]]:
        """The sources' counters for ``/metrics``: (name, type, help, [(labels, value)])."""
        families = []
        for key, text in _HUB_COUNTERS:
            rows = [(f'{{hub="{h.spec.name}"}}', float(getattr(h.stats, key))) for h in self.hubs]
            families.append((f"vigil_eventhubs_{key}_total", "counter", text, rows))
        failing = [(f'{{hub="{h.spec.name}"}}', h.stats.checkpoint_failing_for()) for h in self.hubs]
        text = "Seconds the hub's checkpoints have been failing (0 while they are written)."
        families.append(("vigil_eventhubs_checkpoint_failing_seconds", "gauge", text, failing))
        for key, text in _POLL_COUNTERS:
            rows = [(f'{{table="{p.table.table}"}}', float(getattr(p.stats, key))) for p in self.pollers]
            families.append((f"vigil_loganalytics_{key}_total", "counter", text, rows))
        return families

    def alarms(self) -> list[str]:
        """Problems of the sources that stop nothing yet (checkpoints failing), for /readyz and /v1/status."""
        return [a for h in self.hubs if (a := h.stats.alarm(h.spec.name)) is not None]

    async def close(self) -> None:
        for close in reversed(self._closers):
            with contextlib.suppress(Exception):
                await close()


async def start_azure(settings: Settings, state: RunState, wake: Callable[[], None]) -> AzureRuntime | None:
    """The Azure runtime for ``settings.azure``, or None when it is off (module docstring)."""
    a = settings.azure
    if not a.enabled:
        return None
    from vigil.platform.azure.arm import ArmConfig  # noqa: PLC0415  (the azure extra, only when enabled)
    from vigil.platform.azure.compute import AzureCompute  # noqa: PLC0415
    from vigil.platform.azure.credentials import CredentialSettings, build_credential  # noqa: PLC0415
    from vigil.platform.azure.storage_lock import AzureStorageLock  # noqa: PLC0415

    c = a.credential
    credential = build_credential(
        CredentialSettings(c.mode, c.client_id, c.tenant_id, c.token_file, c.authority)
    )
    verify: str | bool = a.ca_bundle or True
    arm = ArmConfig(
        a.subscription_id,
        credential,
        endpoint=a.arm_endpoint,
        connection_verify=verify,
        polling_interval=a.polling_interval,
        retry_total=a.retry_total,
        operation_timeout=a.operation_timeout,
    )
    locker = AzureStorageLock(
        arm, protected_accounts=settings.response.protected_storage_accounts, lock_name=a.storage.lock_name
    )
    runtime = AzureRuntime(locker)
    runtime._closers += [credential.close, locker.close]
    if a.resource_groups:  # else quarantine_vm keeps acting on the local node registry
        (settings.data_dir / "azure").mkdir(parents=True, exist_ok=True)
        runtime.compute = AzureCompute(
            arm,
            resource_groups=a.resource_groups,
            lro_store=settings.data_dir / "azure" / "operations.db",
            stop_mode=a.quarantine.stop,
            snapshot=a.quarantine.snapshot,
            forensic_sources=a.quarantine.forensic_sources,
            admins=settings.platform.admins,
        )
        runtime._closers.append(runtime.compute.close)
    kv = a.keyvault
    if kv.vault_url:
        runtime.vault = await _vault(settings, credential, runtime)
    if kv.resource_group and kv.vault_name:  # lockdown_vault
        from vigil.platform.azure.keyvault_lockdown import AzureVaultLockdown  # noqa: PLC0415
        from vigil.platform.azure.keyvault_retry import RetrySettings  # noqa: PLC0415

        runtime.vault_lock = AzureVaultLockdown.connect(
            credential,
            a.subscription_id,
            kv.resource_group,
            kv.vault_name,
            endpoint=a.arm_endpoint,
            connection_verify=a.ca_bundle or None,
            retry=RetrySettings(attempts=kv.attempts, backoff=kv.backoff, max_retry_after=kv.max_retry_after),
        )
        runtime._closers.append(runtime.vault_lock.close)
    assert state.store is not None
    _hubs(settings, state, wake, credential, runtime)
    _pollers(settings, state, wake, credential, runtime)
    log.info(
        "azure: subscription %s, resource groups %s, vault %s, %d event hub(s), %d Sentinel table(s)",
        a.subscription_id,
        ", ".join(a.resource_groups) or "(none)",
        a.keyvault.vault_url or "(local)",
        len(runtime.hubs),
        len(runtime.pollers),
    )
    return runtime


async def _vault(settings: Settings, credential: Any, runtime: AzureRuntime) -> AzureKeyVault:
    from vigil.platform.azure.attestation import MaaTokenVerifier  # noqa: PLC0415
    from vigil.platform.azure.keyvault import AzureKeyVault  # noqa: PLC0415
    from vigil.platform.azure.keyvault_retry import RetrySettings  # noqa: PLC0415
    from vigil.training_node.claims import AttestationPolicy  # noqa: PLC0415

    a, p = settings.azure, settings.platform
    verifier = None
    if a.attestation.maa_issuers:
        tcb = {k: p.min_tcb.get(k, 0) for k in ("bootloader", "tee", "snp", "microcode")}
        policy = AttestationPolicy.build(
            p.allowed_measurements,
            tcb,
            allow_debug=p.allow_debug,
            min_guest_svn=p.min_guest_svn,
            allow_smt=p.allow_smt,
        )
        verifier = MaaTokenVerifier(
            a.attestation.maa_issuers,
            policy,
            leeway=a.attestation.leeway,
            min_refresh=a.attestation.min_refresh,
            max_age=a.attestation.jwks_max_age,
            verify_tls=a.ca_bundle or True,
        )
    kv = a.keyvault
    retry = RetrySettings(attempts=kv.attempts, backoff=kv.backoff, max_retry_after=kv.max_retry_after)
    vault = AzureKeyVault.connect(
        kv.vault_url,
        credential,
        verifier=verifier,
        retry=retry,
        connection_verify=a.ca_bundle or None,
        verify_challenge_resource=kv.verify_challenge_resource,
    )
    runtime._closers.append(vault.close)
    return vault


def _hubs(
    settings: Settings, state: RunState, wake: Callable[[], None], credential: Any, rt: AzureRuntime
) -> None:
    eh = settings.azure.eventhubs
    if not eh.hubs:
        return
    from vigil.streams.eventhubs import BatchIngest, HubSpec  # noqa: PLC0415
    from vigil.streams.eventhubs_consumer import (  # noqa: PLC0415
        ConsumerTuning,
        HubConsumer,
        client_factory,
        open_checkpoint_store,
    )

    assert state.store is not None
    tuning = ConsumerTuning(
        max_batch_size=eh.max_batch_size,
        max_wait_time=eh.max_wait_time,
        stall_after=eh.stall_after,
        load_balancing_interval=eh.load_balancing_interval,
    )
    for hub in eh.hubs:
        if eh.checkpoint_connection_string:
            store, container = open_checkpoint_store(
                eh.checkpoint_container, connection_string=eh.checkpoint_connection_string
            )
        else:
            store, container = open_checkpoint_store(
                eh.checkpoint_container, account_url=eh.checkpoint_account_url, credential=credential
            )
        rt._closers += [store.close, container.close]
        spec = HubSpec(hub.name, hub.namespace, hub.eventhub, hub.consumer_group, hub.starting_position)
        ingest = BatchIngest(
            spec,
            state.store,
            offer=state.offer,
            wake=wake,
            backlog=state.backlog,
            max_backlog=settings.http.max_backlog,
            max_record_bytes=int(settings.ingest.max_record_bytes),
        )
        factory = client_factory(spec, credential, store, tuning)
        rt.hubs.append(HubConsumer(ingest, factory, store, tuning, container=container))


def _pollers(
    settings: Settings, state: RunState, wake: Callable[[], None], credential: Any, rt: AzureRuntime
) -> None:
    la = settings.azure.loganalytics
    if not la.workspace_id:
        return
    from azure.monitor.query.aio import LogsQueryClient  # noqa: PLC0415

    from vigil.streams.loganalytics import TABLES, LogsPoller, PollerSpec  # noqa: PLC0415

    assert state.store is not None
    options: dict[str, Any] = (
        {"connection_verify": settings.azure.ca_bundle} if settings.azure.ca_bundle else {}
    )
    client = LogsQueryClient(credential, **options)
    rt._closers.append(client.close)
    spec = PollerSpec(
        la.workspace_id,
        interval=la.interval,
        overlap=parse_duration(la.overlap),
        first_lookback=parse_duration(la.first_lookback),
        page=la.page,
    )
    for table in la.tables:
        rt.pollers.append(LogsPoller(client, spec, TABLES[table], state.store, offer=state.offer, wake=wake))
