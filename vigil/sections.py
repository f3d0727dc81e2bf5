"""The sections of Vigil's settings (one pydantic model each), apart from the loading machinery in
:mod:`vigil.settings`, which re-exports them. Every field is documented in ``config/README.md`` and shown
with its default in ``config/local.yaml`` (``tests/test_settings.py`` keeps the three in step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import AfterValidator, BaseModel, ByteSize, ConfigDict, Field, field_validator


def _duration(value: str) -> str:
    """A duration as rules write it (90s, 5m, 7d), checked by the rule language's own parser."""
    from vigil.rules.schema_forms import parse_duration  # noqa: PLC0415  (settings load first)

    parse_duration(value)
    return value


DurationText = Annotated[str, AfterValidator(_duration)]

#: the launch measurement of the local training nodes' image (their software TEE reports it): allowed by
#: default so the embedded platform's own nodes attest; rules/lists.yaml lists it too
LOCAL_NODE_MEASUREMENT: Final = (
    "3c9e7a15f2d84b60a9c1e3f5b7d9021468ace0f2b4d6089a1c3e5f7b9d0f2a4c6e8a0c2e4f6b8d0a2c4e6f8a0b2c4d6e"
)

#: stands for the data directory at the start of a path setting
DATA_DIR_TOKEN: Final = "{data_dir}"


class Section(BaseModel):
    """Base of every settings section: unknown keys are errors and a loaded value never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class IngestSettings(Section):
    """The file sources of the embedded runner: the drop folder and the followed JSONL files."""

    drop_dir: Path = Field(default=Path(f"{DATA_DIR_TOKEN}/inbox"), description="folder watched for input")
    poll_interval: float = Field(default=1.0, gt=0, le=3600, description="seconds between scans")
    max_record_bytes: ByteSize = Field(
        default=ByteSize(4 << 20), gt=0, description="cap per JSON Lines record"
    )
    max_document_bytes: ByteSize = Field(
        default=ByteSize(64 << 20), gt=0, description="cap per JSON document"
    )
    format: str = Field(default="auto", description="normalizer name, or auto to detect per record")
    tail_files: list[Path] = Field(
        default_factory=list,
        description="JSONL files followed like tail -F, resuming from the offset stored in the store",
    )

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        from vigil.events.normalize import normalizers  # noqa: PLC0415 - keeps importing settings cheap

        if value != "auto" and value not in normalizers:
            raise ValueError(f"unknown format; known: auto, {', '.join(normalizers.names())}")
        return value


class OutputSettings(Section):
    """Where the embedded runner writes what it produced."""

    events_file: Path = Field(
        default=Path(f"{DATA_DIR_TOKEN}/events.jsonl"), description="events, JSON Lines"
    )
    dead_letter_file: Path = Field(
        default=Path(f"{DATA_DIR_TOKEN}/dead-letter.jsonl"), description="dead letters, JSON Lines"
    )


class DetectSettings(Section):
    """The rules the daemon runs and how stateful detection treats time."""

    rules: Path = Field(default=Path("rules"), description="rule file or folder loaded at start")
    lateness: DurationText = Field(
        default="5m", description="allowed lateness of event time (a duration: 90s, 5m)"
    )
    snapshot_interval: float = Field(
        default=30.0, gt=0, le=86400, description="seconds between detector state snapshots in the store"
    )
    max_keys: int = Field(default=1_000_000, ge=1, description="open window keys per stateful rule")
    incident_window: DurationText = Field(
        default="1h",
        description="a finding joins its rule and group's incident if the last finding is this recent",
    )


class StoreSettings(Section):
    """The embedded store (SQLite, WAL): event log, findings, dead letters, offsets, snapshots."""

    path: Path = Field(default=Path(f"{DATA_DIR_TOKEN}/vigil.db"), description="database file")
    synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL", description="FULL survives power loss; NORMAL only a crash of the process"
    )
    retention: DurationText = Field(
        default="7d", description="raw events older than this are pruned once detected"
    )
    incident_retention: DurationText = Field(
        default="90d",
        description="resolved incidents idle this long are deleted with their findings (open ones are kept)",
    )


class PlatformSettings(Section):
    """The local confidential platform (key vault, secure storage, compute) that runs inside the daemon."""

    enabled: bool = Field(default=True, description="serve the local platform at /platform/v1")
    dir: Path = Field(default=Path(f"{DATA_DIR_TOKEN}/platform"), description="its databases and objects")
    master_key_file: Path = Field(
        default=Path(f"{DATA_DIR_TOKEN}/platform/master.key"),
        description="32-byte master key (0600) that seals key material at rest; made at first start",
    )
    master_passphrase: str = Field(
        default="", description="derive the master key from this passphrase (scrypt) instead of the file"
    )
    admins: list[str] = Field(
        default_factory=lambda: ["vigil"], min_length=1, description="principals allowed every operation"
    )
    soft_delete_retention: DurationText = Field(
        default="90d", description="how long a deleted key can be recovered before it may be purged"
    )
    purge_protection: bool = Field(default=True, description="refuse purges inside the retention period")
    chunk_size: ByteSize = Field(
        default=ByteSize(1 << 20), ge=64 << 10, le=64 << 20, description="storage encryption chunk (>= 64KiB)"
    )
    attestation_issuer: str = Field(
        default="https://attestation.vigil.local",
        min_length=1,
        description="issuer (iss) of the local attestation service's tokens, trusted by the key vault",
    )
    allowed_measurements: list[str] = Field(
        default_factory=lambda: [LOCAL_NODE_MEASUREMENT],
        description="launch measurements (96 hex) the attestation service accepts",
    )
    min_tcb: dict[Literal["bootloader", "tee", "snp", "microcode"], int] = Field(
        default_factory=dict, description="minimum TCB component versions, e.g. {snp: 22, microcode: 213}"
    )
    allow_debug: bool = Field(default=False, description="accept guests whose policy allows debugging")
    min_guest_svn: int = Field(
        default=0, ge=0, le=0xFFFFFFFF, description="the lowest GUEST_SVN (image security version) accepted"
    )
    allow_smt: bool = Field(default=True, description="accept guests whose policy allows SMT")
    tee_key_bits: int = Field(
        default=4096, ge=2048, le=4096, description="RSA size of the software TEE's local ARK and ASK"
    )


class AuditSettings(Section):
    """The tamper-evident audit log (its own SQLite database) and its signed checkpoints."""

    path: Path = Field(default=Path(f"{DATA_DIR_TOKEN}/audit.db"), description="audit database file")
    synchronous: Literal["FULL", "NORMAL"] = Field(
        default="FULL", description="FULL: an audited action's record survives power loss"
    )
    checkpoint_every: int = Field(default=1000, ge=1, description="records between signed checkpoints")
    checkpoint_interval: float = Field(
        default=60.0, gt=0, le=86400, description="seconds between signed checkpoints (if records were added)"
    )
    checkpoint_files: list[Path] = Field(
        default_factory=lambda: [Path(f"{DATA_DIR_TOKEN}/audit-checkpoints.jsonl")],
        min_length=1,
        description="files each checkpoint is appended to; with two, one down is an alarm, all down fails",
    )


class ResponseSettings(Section):
    """The response engine: when remediations run, who approves them, and how far they may reach."""

    dry_run: bool = Field(
        default=False, description="plan, audit and alert every remediation; change nothing"
    )
    approvers: list[str] = Field(
        default_factory=list, description="principals who may approve, reject and roll back actions"
    )
    approval_ttl: DurationText = Field(default="1h", description="a pending approval expires after this")
    idempotency_window: DurationText = Field(
        default="1h", description="one action per (rule, target, remediation) in each window"
    )
    batch_window: float = Field(
        default=1.0,
        ge=0,
        le=60,
        description="seconds a rule's findings are gathered before blast-radius checks",
    )
    rate_limit: int = Field(default=10, ge=1, description="actions per remediator per minute")
    max_targets: int | None = Field(
        default=10,
        ge=1,
        description="blast radius of an action whose rule sets neither max_targets nor max_percent: more "
        "targets in one idempotency window stops them all (null: no default cap)",
    )
    breaker_failures: int = Field(default=3, ge=1, description="consecutive failures that open a breaker")
    breaker_cooldown: DurationText = Field(default="5m", description="an open breaker's pause")
    step_timeout: DurationText = Field(
        default="15m",
        description="a remediator call (check, step, verify, rollback) running longer is cancelled; "
        "a check or step then ends its action timed_out",
    )
    protected_keys: list[str] = Field(
        default_factory=list, description="keys no remediation may touch (the audit keys always are)"
    )
    protected_containers: list[str] = Field(
        default_factory=list, description="containers no remediation may touch"
    )
    protected_nodes: list[str] = Field(
        default_factory=list, description="nodes no remediation may touch (the one Vigil runs on)"
    )
    protected_storage_accounts: list[str] = Field(
        default_factory=list,
        description="Azure storage accounts no remediation may touch (the one holding Vigil's checkpoints)",
    )
    protected_vaults: list[str] = Field(
        default_factory=list, description="Azure key vaults lockdown_vault never touches (the one Vigil uses)"
    )


class PagerDutySettings(Section):
    """PagerDuty Events API v2. Set the key through ``VIGIL_ALERTS__PAGERDUTY__ROUTING_KEY``."""

    routing_key: str = Field(default="", description="integration (routing) key; empty: sink off")
    url: str = Field(default="https://events.pagerduty.com/v2/enqueue", description="Events API v2 endpoint")


class WebhookUrlSettings(Section):
    """A webhook sink (Teams Workflows, Slack). The URL is a secret: ``VIGIL_ALERTS__TEAMS__WEBHOOK_URL``."""

    webhook_url: str = Field(default="", description="webhook URL (a secret); empty: sink off")


class SignedWebhookSettings(Section):
    """The generic webhook: JSON signed with HMAC-SHA256 (``X-Vigil-Signature``)."""

    url: str = Field(default="", description="receiver URL; empty: sink off")
    secret: str = Field(default="", description="signing secret (VIGIL_ALERTS__WEBHOOK__SECRET)")


class ConsoleSinkSettings(Section):
    """The console sink of the embedded default: one JSON line per alert."""

    enabled: bool = Field(default=True, description="write alerts as JSON Lines")
    path: Path = Field(default=Path(f"{DATA_DIR_TOKEN}/alerts.jsonl"), description="file (appended)")


class AlertSettings(Section):
    """Alert sinks, routing, storm control and delivery (docs/alerts.md)."""

    pagerduty: PagerDutySettings = Field(default_factory=PagerDutySettings)
    teams: WebhookUrlSettings = Field(default_factory=WebhookUrlSettings)
    slack: WebhookUrlSettings = Field(default_factory=WebhookUrlSettings)
    webhook: SignedWebhookSettings = Field(default_factory=SignedWebhookSettings)
    console: ConsoleSinkSettings = Field(default_factory=ConsoleSinkSettings)
    default: list[str] = Field(
        default_factory=lambda: ["console"], description="sinks for alerts no rule, severity or tag routes"
    )
    by_severity: dict[str, list[str]] = Field(
        default_factory=dict, description="extra sinks per severity, e.g. {critical: [pagerduty]}"
    )
    by_tag: dict[str, list[str]] = Field(
        default_factory=dict, description="extra sinks per rule tag, e.g. {attack.impact: [pagerduty]}"
    )
    group_window: float = Field(default=60.0, gt=0, le=3600, description="seconds matches are grouped over")
    stale_after: DurationText = Field(
        default="10m", description="findings older than this at start are summarised, not replayed"
    )
    retry_horizon: DurationText = Field(default="24h", description="after this, an undelivered alert is dead")
    max_waiting: int = Field(
        default=10_000,
        ge=0,
        description="per sink: with this many alerts undelivered, new low and informational triggers for it "
        "are shed and counted (vigil_alerts_shed_total); 0 never sheds",
    )
    keep_sent: DurationText = Field(
        default="7d",
        description="delivered alerts stay in the outbox (GET /v1/alerts, vigil alerts list) this long, then "
        "are deleted (undelivered and dead ones are kept)",
    )
    base_url: str = Field(default="", description="Vigil's URL in alert links (default: the daemon's own)")


class NodesSettings(Section):
    """Local training nodes the daemon starts beside itself: the embedded platform's attested training."""

    local: int = Field(
        default=0, ge=0, le=16, description="training nodes to start (node-1 ... node-N); 0: none"
    )
    epochs: int = Field(default=60, ge=1, description="epochs of each training run")
    restart_after: DurationText = Field(
        default="30s", description="pause between a node's runs; a quarantined node is not restarted"
    )
    container: str = Field(default="training", min_length=3, description="the data set's container")
    key: str = Field(default="data-key", min_length=1, description="the data key the nodes are released")
