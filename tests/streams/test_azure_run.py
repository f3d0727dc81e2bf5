"""The daemon's Azure wiring (``azure.enabled``): settings become the real providers and sources.

Building them contacts nothing (clients and credentials connect on first use), so this checks the wiring
itself: the response engine's context acts through the Azure providers where configured and through the
local platform elsewhere, every source is built with its settings, the metrics name them, and everything
closes. The providers and sources are exercised against loopback fakes and Azurite in
``tests/platform/azure`` and ``tests/streams/test_eventhubs.py`` / ``test_loganalytics.py``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from vigil.api import create_app
from vigil.platform.azure.compute import AzureCompute
from vigil.platform.azure.keyvault import AzureKeyVault
from vigil.platform.azure.keyvault_lockdown import AzureVaultLockdown
from vigil.platform.azure.storage_lock import AzureStorageLock
from vigil.settings import load_settings
from vigil.store.sqlite import Store
from vigil.streams import RunState
from vigil.streams.azure_run import start_azure

SUB = "00000000-0000-0000-0000-00000000abcd"
AZURITE = (  # Azurite's published development account (not a secret), never contacted here
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;"
)


def _settings(tmp_path: Path, **azure: Any) -> Any:
    env = {"VIGIL_DATA_DIR": str(tmp_path / "var")}
    base = {
        "enabled": "true",
        "subscription_id": SUB,
        "resource_groups": '["rg-train"]',
        "keyvault__vault_url": "https://vigil-test.vault.azure.net",
        "keyvault__resource_group": "rg-sec",
        "keyvault__vault_name": "vigil-test",
        "attestation__maa_issuers": '["https://sharedweu.weu.attest.azure.net"]',
        "eventhubs__hubs": '[{"name": "activity", "namespace": "ns.servicebus.windows.net", "eventhub": "insights-activity-logs"}]',
        "eventhubs__checkpoint_connection_string": AZURITE,
        "loganalytics__workspace_id": "11111111-2222-3333-4444-555555555555",
    } | azure
    env |= {f"VIGIL_AZURE__{k.upper()}": v for k, v in base.items()}
    return load_settings(None, env=env)


def test_enabled_builds_every_provider_and_source(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    store = Store(tmp_path / "vigil.db")
    state = RunState(settings=settings, store=store)

    async def scenario() -> None:
        runtime = await start_azure(settings, state, lambda: None)
        assert runtime is not None
        try:
            assert isinstance(runtime.compute, AzureCompute)
            assert isinstance(runtime.storage_lock, AzureStorageLock)
            assert isinstance(runtime.vault, AzureKeyVault)
            assert isinstance(runtime.vault_lock, AzureVaultLockdown)
            assert [h.spec.name for h in runtime.hubs] == ["activity"]
            assert runtime.hubs[0].spec.starting_position == "-1"  # never silently skip retained events
            assert sorted(p.table.table for p in runtime.pollers) == ["SecurityAlert", "SecurityIncident"]
            names = {name for name, *_ in runtime.metric_families()}
            assert {"vigil_eventhubs_stalls_total", "vigil_loganalytics_partial_results_total"} <= names
            assert (tmp_path / "var" / "azure").is_dir()  # the long-running operations' tokens live here
        finally:
            await runtime.close()

    asyncio.run(scenario())
    store.close()


def test_without_resource_groups_or_a_vault_the_local_platform_keeps_those_roles(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path,
        resource_groups="[]",
        keyvault__vault_url="",
        keyvault__vault_name="",
        eventhubs__hubs="[]",
        loganalytics__workspace_id="",
    )
    store = Store(tmp_path / "vigil.db")
    state = RunState(settings=settings, store=store)

    async def scenario() -> None:
        runtime = await start_azure(settings, state, lambda: None)
        assert runtime is not None
        assert runtime.compute is None and runtime.vault is None and runtime.vault_lock is None
        assert runtime.hubs == [] and runtime.pollers == []
        await runtime.close()

    asyncio.run(scenario())
    store.close()


def test_disabled_builds_nothing_and_bad_settings_are_named(tmp_path: Path) -> None:
    settings = load_settings(None, env={"VIGIL_DATA_DIR": str(tmp_path)})
    assert asyncio.run(start_azure(settings, RunState(settings=settings), lambda: None)) is None
    with pytest.raises(Exception, match=r"azure\.subscription_id is required"):
        load_settings(None, env={"VIGIL_AZURE__ENABLED": "true"})
    with pytest.raises(Exception, match="checkpoint store"):
        _settings(tmp_path, eventhubs__checkpoint_connection_string="")
    with pytest.raises(Exception, match="at least twice max_wait_time"):
        _settings(tmp_path, eventhubs__stall_after="15")


def test_a_hubs_checkpoint_outage_shows_in_readyz_status_and_metrics(tmp_path: Path) -> None:
    """The wiring of reliability A7 (the outage itself is in test_eventhubs.py): a hub whose checkpoints
    have been failing for a minute is an alarm in /readyz (still 200: nothing stops) and /v1/status, and a
    gauge in /metrics; once it recovers, all three are clear."""
    settings = _settings(tmp_path)
    store = Store(tmp_path / "vigil.db")
    state = RunState(settings=settings, store=store)
    state.ingest.running, state.ingest.last_scan_at, state.ingest.last_scan_ok = True, time.time(), True

    async def scenario() -> None:
        runtime = await start_azure(settings, state, lambda: None)
        assert runtime is not None
        state.azure = runtime
        stats = runtime.hubs[0].ingest.stats
        transport = httpx.ASGITransport(app=create_app(state))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://vigil") as client:
                assert (await client.get("/readyz")).json() == {"status": "ready"}
                stats.checkpoint_error = "ServiceRequestError: connection refused"
                stats.checkpoint_failing_since = time.monotonic() - 61
                ready = await client.get("/readyz")
                assert ready.status_code == 200 and ready.json()["status"] == "ready"
                (alarm,) = ready.json()["alarms"]
                assert alarm.startswith(
                    "event hub activity: checkpoints failing for 61 s (ServiceRequestError"
                )
                assert (await client.get("/v1/status")).json()["alarms"] == [alarm]
                metrics = (await client.get("/metrics")).text
                assert 'vigil_eventhubs_checkpoint_failing_seconds{hub="activity"} 61' in metrics
                stats.checkpoint_error = stats.checkpoint_failing_since = None
                assert (await client.get("/readyz")).json() == {"status": "ready"}
                metrics = (await client.get("/metrics")).text
                assert 'vigil_eventhubs_checkpoint_failing_seconds{hub="activity"} 0' in metrics
        finally:
            await runtime.close()

    asyncio.run(scenario())
    store.close()
