"""The ``azure:`` settings section: Vigil on an Azure subscription (``config/azure.yaml``, docs/azure.md).

Kept apart from :mod:`vigil.sections` because it is one deployment's concern and large. Nothing secret is
ever a setting here: identities are *named* (a managed identity's client id, a workload identity), and the
one connection string the Event Hubs checkpoint store may take comes from the environment only (the
settings loader redacts it). Every part is off until configured, so the embedded default is unaffected.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from vigil.sections import DurationText, Section

SentinelTable = Literal["SecurityAlert", "SecurityIncident"]
SENTINEL_TABLES: tuple[SentinelTable, ...] = ("SecurityAlert", "SecurityIncident")


class AzureCredential(Section):
    """Which identity Vigil acts as (azure-identity); ``default`` tries environment, workload identity,
    managed identity and developer logins in turn."""

    mode: Literal["default", "managed_identity", "workload_identity"] = Field(
        default="default", description="default, managed_identity or workload_identity"
    )
    client_id: str = Field(default="", description="the user-assigned identity's client id (a GUID)")
    tenant_id: str = Field(default="", description="the tenant (a GUID); empty: from the environment")
    token_file: str = Field(default="", description="workload identity: path of the projected token file")
    authority: str = Field(
        default="", description="Entra ID authority host of a sovereign cloud; empty: public"
    )


class AzureQuarantine(Section):
    """How ``quarantine_vm`` contains a VM on Azure."""

    stop: Literal["deallocate", "power_off", "none"] = Field(
        default="deallocate", description="deallocate, power_off (keeps the host) or none"
    )
    snapshot: bool = Field(default=True, description="snapshot the OS disk for forensics first")
    forensic_sources: list[str] = Field(
        default_factory=list, description="CIDRs the isolation NSG still lets in (a forensics jump host)"
    )


class AzureStorage(Section):
    """``lock_storage_account``: the management lock it applies."""

    lock_name: str = Field(default="vigil-lockdown", min_length=1, description="name of the ReadOnly lock")


class AzureKeyVault(Section):
    """The Key Vault the key remediations act on, and the vault lockdown."""

    vault_url: str = Field(default="", description="https://NAME.vault.azure.net; empty: the local vault")
    verify_challenge_resource: bool = Field(
        default=True, description="the challenge's resource must be under the vault's domain (keep on)"
    )
    attempts: int = Field(default=4, ge=1, le=10, description="tries per operation (429, 5xx, network)")
    backoff: float = Field(default=0.5, gt=0, description="seconds before the first retry, doubling")
    max_retry_after: float = Field(
        default=60.0, gt=0, description="a Retry-After longer than this fails the operation instead"
    )
    resource_group: str = Field(default="", description="the vault's resource group (for the lockdown)")
    vault_name: str = Field(default="", description="the vault's name (for the lockdown)")


class AzureAttestation(Section):
    """Microsoft Azure Attestation tokens the key vault and the rules trust."""

    maa_issuers: list[str] = Field(
        default_factory=list, description="MAA instance URLs whose tokens are accepted (https://...)"
    )
    leeway: float = Field(default=60.0, ge=0, description="seconds of clock skew allowed on exp/iat")
    min_refresh: float = Field(default=300.0, gt=0, description="seconds between JWKS refreshes")
    jwks_max_age: float = Field(
        default=86400.0,
        gt=0,
        description="seconds a fetched JWKS verifies tokens; then a new fetch must succeed",
    )


class AzureHub(Section):
    """One event hub to consume (a diagnostic-settings or Sentinel-export hub)."""

    name: str = Field(min_length=1, description="short name for logs and metrics: activity, keyvault ...")
    namespace: str = Field(min_length=1, description="NAMESPACE.servicebus.windows.net")
    eventhub: str = Field(min_length=1, description="the event hub's name")
    consumer_group: str = Field(default="$Default", description="one per Vigil deployment")
    starting_position: str = Field(
        default="-1",
        description="without a checkpoint: -1 (oldest retained), @latest, a sequence number, a time",
    )


class AzureEventHubs(Section):
    """The Event Hubs sources and their Blob checkpoint store."""

    hubs: list[AzureHub] = Field(default_factory=list, description="the hubs to consume; empty: none")
    checkpoint_account_url: str = Field(
        default="", description="https://ACCOUNT.blob.core.windows.net of the checkpoint store"
    )
    checkpoint_container: str = Field(default="vigil-checkpoints", description="created at start if missing")
    checkpoint_connection_string: str = Field(
        default="",
        description="instead of the identity: VIGIL_AZURE__EVENTHUBS__CHECKPOINT_CONNECTION_STRING",
    )
    max_batch_size: int = Field(default=300, ge=1, le=5000, description="events per batch")
    max_wait_time: float = Field(default=10.0, gt=0, description="seconds before an empty batch (liveness)")
    stall_after: float = Field(default=120.0, gt=0, description="seconds of silence before a restart")
    load_balancing_interval: float = Field(default=30.0, gt=0, description="partition ownership cycle")


class AzureLogAnalytics(Section):
    """The Sentinel poller (Log Analytics ``SecurityAlert`` / ``SecurityIncident``)."""

    workspace_id: str = Field(default="", description="the workspace GUID (customerId); empty: off")
    tables: list[SentinelTable] = Field(
        default_factory=lambda: list(SENTINEL_TABLES), description="tables to poll"
    )
    interval: float = Field(default=60.0, ge=5, description="seconds between polls")
    overlap: DurationText = Field(default="5m", description="re-read window for late rows (deduplicated)")
    first_lookback: DurationText = Field(default="1d", description="how far back the very first poll reads")
    page: int = Field(default=5000, ge=100, le=30000, description="rows per query")


class AzureSettings(Section):
    """Vigil on Azure: the providers remediations act through, and the Azure sources."""

    enabled: bool = Field(default=False, description="act on Azure and consume its sources")
    credential: AzureCredential = Field(default_factory=AzureCredential)
    subscription_id: str = Field(default="", description="the subscription of the VMs and accounts acted on")
    resource_groups: list[str] = Field(
        default_factory=list, description="resource groups whose VMs are training nodes (quarantine targets)"
    )
    arm_endpoint: str = Field(default="https://management.azure.com", description="ARM base URL")
    ca_bundle: str = Field(default="", description="CA bundle for a private CA (tests); empty: the system's")
    polling_interval: float = Field(default=15.0, gt=0, description="seconds between polls of an operation")
    retry_total: int = Field(default=6, ge=0, le=20, description="retries of one ARM request")
    operation_timeout: float = Field(default=900.0, gt=0, description="seconds one long operation may take")
    quarantine: AzureQuarantine = Field(default_factory=AzureQuarantine)
    storage: AzureStorage = Field(default_factory=AzureStorage)
    keyvault: AzureKeyVault = Field(default_factory=AzureKeyVault)
    attestation: AzureAttestation = Field(default_factory=AzureAttestation)
    eventhubs: AzureEventHubs = Field(default_factory=AzureEventHubs)
    loganalytics: AzureLogAnalytics = Field(default_factory=AzureLogAnalytics)

    @model_validator(mode="after")
    def _check(self) -> AzureSettings:
        if self.enabled and not self.subscription_id:
            raise ValueError("azure.subscription_id is required when azure.enabled is true")
        eh = self.eventhubs
        if eh.stall_after < 2 * eh.max_wait_time:
            raise ValueError(
                f"azure.eventhubs.stall_after ({eh.stall_after:g} s) must be at least twice max_wait_time "
                f"({eh.max_wait_time:g} s), or quiet partitions look stalled"
            )
        if self.eventhubs.hubs and not (
            self.eventhubs.checkpoint_account_url or self.eventhubs.checkpoint_connection_string
        ):
            raise ValueError("azure.eventhubs.hubs need a checkpoint store: set checkpoint_account_url")
        return self
