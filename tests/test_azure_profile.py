"""``config/azure.yaml``, the profile docs/azure.md documents, loads and holds what going live relies on.

Loaded with an empty environment so the machine's ``VIGIL_*`` variables cannot mask a broken file. Beyond
the settings' own validation, the values are put through the checks :func:`vigil.streams.azure_run.start_azure`
applies only at start-up (the credential's GUID fields, the hubs' starting positions, the watchdog
tuning), so a profile that loads but would stop the daemon fails here.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from vigil.platform.azure.credentials import CredentialSettings
from vigil.remediators.base import Protected
from vigil.settings import Settings, load_settings
from vigil.streams.eventhubs import parse_starting_position
from vigil.streams.eventhubs_consumer import ConsumerTuning

PROFILE = Path(__file__).resolve().parents[1] / "config" / "azure.yaml"


def _load() -> Settings:
    return load_settings(PROFILE, env={})


def test_profile_validates_and_enables_azure() -> None:
    settings = _load()
    azure = settings.azure
    assert azure.enabled is True
    assert azure.subscription_id
    assert settings.nodes.local == 0
    assert "vigil" in settings.platform.admins  # AzureCompute lets only admins quarantine
    assert azure.eventhubs.checkpoint_connection_string == ""  # a secret: environment only


def test_checkpoint_account_is_protected() -> None:
    settings = _load()
    host = urlparse(settings.azure.eventhubs.checkpoint_account_url).hostname or ""
    account = host.split(".", 1)[0]
    assert account and host.endswith(".blob.core.windows.net")
    protected = settings.response.protected_storage_accounts
    # the provider compares bare names, so the entry must be the bare name, not an ARM id
    assert account in protected
    # and the remediators' own check covers the ARM id a rule's target carries
    arm_id = (
        f"/subscriptions/{settings.azure.subscription_id}/resourceGroups/rg/providers/"
        f"Microsoft.Storage/storageAccounts/{account}"
    )
    assert Protected(storage_accounts=frozenset(protected)).covers("storage_account", arm_id)


def test_hubs_start_at_the_oldest_retained_event() -> None:
    hubs = _load().azure.eventhubs.hubs
    assert len(hubs) == 3
    assert len({h.name for h in hubs}) == 3
    for hub in hubs:
        assert hub.starting_position == "-1", hub.name
        assert parse_starting_position(hub.starting_position) == "-1"
        assert hub.namespace.endswith(".servicebus.windows.net"), hub.name


def test_start_up_checks_accept_the_profile() -> None:
    azure = _load().azure
    c = azure.credential
    CredentialSettings(c.mode, c.client_id, c.tenant_id, c.token_file, c.authority)  # raises if not
    eh = azure.eventhubs
    ConsumerTuning(
        max_batch_size=eh.max_batch_size,
        max_wait_time=eh.max_wait_time,
        stall_after=eh.stall_after,
        load_balancing_interval=eh.load_balancing_interval,
    )
