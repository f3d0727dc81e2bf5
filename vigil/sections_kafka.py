"""The ``kafka:`` settings section of ``vigil worker`` (the credentials it describes are built in
:mod:`vigil.streams.kafka_settings`, which needs the ``kafka`` extra; this module does not).

One section covers both a Kafka cluster and the Kafka endpoint of Azure Event Hubs, because to a client
they differ only in how it authenticates:

* a Kafka cluster: ``broker: kafka://k1:9092;k2:9092``, ``security: PLAINTEXT`` (or ``SSL`` /
  ``SASL_SSL`` with ``sasl_mechanism: SCRAM-SHA-512`` and a user);
* Event Hubs: ``broker: kafka://NAMESPACE.servicebus.windows.net:9093``, ``security: SASL_SSL``, and
  either ``sasl_mechanism: OAUTHBEARER`` (a Microsoft Entra token for
  ``https://NAMESPACE.servicebus.windows.net/.default`` from azure-identity: managed identity, workload
  identity, az login) or ``sasl_mechanism: PLAIN`` with user ``$ConnectionString`` and the namespace's
  connection string as the password.

Secrets never live in the profile: ``sasl_password`` comes from ``VIGIL_KAFKA__SASL_PASSWORD`` (the
settings loader redacts every setting whose name looks secret from messages), and OAUTHBEARER needs no
secret at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from vigil.sections import Section

Security = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]


class KafkaSettings(Section):
    """Where the faust workers meet (topics, consumer group, state) and how they authenticate."""

    broker: str = Field(
        default="kafka://localhost:9092",
        description="bootstrap servers as a faust URL: kafka://host:port, several joined by ';'",
    )
    app_id: str = Field(default="vigil", description="consumer group id; also prefixes the changelog topics")
    topic_prefix: str = Field(default="vigil", description="topics are <prefix>-raw, -events, -findings ...")
    partitions: int = Field(default=8, ge=1, description="partitions of every topic (the unit of scale-out)")
    replicas: int = Field(default=3, ge=1, description="replication factor when the worker creates topics")
    declare_topics: bool = Field(
        default=True,
        description="create missing topics at start; false for Event Hubs and locked-down clusters",
    )
    security: Security = Field(default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    sasl_mechanism: Mechanism = Field(
        default="PLAIN", description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER (SASL_* only)"
    )
    sasl_username: str = Field(default="", description="SASL user; $ConnectionString for Event Hubs")
    sasl_password: str = Field(
        default="",
        description="SASL password or Event Hubs connection string: set VIGIL_KAFKA__SASL_PASSWORD",
    )
    oauth_scope: str = Field(
        default="",
        description="OAUTHBEARER token scope, e.g. https://NAMESPACE.servicebus.windows.net/.default",
    )
    ca_file: Path | None = Field(default=None, description="CA bundle for TLS (default: the system's)")
    partition_key: list[str] = Field(
        default_factory=lambda: ["resource.id", "node.id"],
        description="event fields tried in order for the partition key (first non-empty wins)",
    )
    batch: int = Field(default=500, ge=1, description="events an agent takes at most per step")
    batch_within: float = Field(default=0.2, gt=0, description="seconds an agent waits to fill a step")
    state_interval: float = Field(
        default=1.0, ge=0, description="seconds between saves of a partition's detector state (changelog)"
    )
    live_timers: bool = Field(
        default=True, description="flatlines and absent steps fire in silence, by the wall clock"
    )
    standby_replicas: int = Field(default=1, ge=0, description="warm copies of each partition's state")
    session_timeout: float = Field(
        default=10.0, gt=0, description="seconds before a silent worker is dropped"
    )
    heartbeat_interval: float = Field(default=3.0, gt=0, description="seconds between group heartbeats")
    commit_interval: float = Field(default=2.8, gt=0, description="seconds between offset commits")
    table_store: str = Field(default="memory://", description="faust table store: memory:// or rocksdb://")
    stall_after: float = Field(
        default=60.0,
        gt=0,
        description="seconds without committed progress, or on one event, before faust logs a stall error",
    )

    @model_validator(mode="after")
    def _check(self) -> KafkaSettings:
        sasl = self.security.startswith("SASL")
        if sasl and self.sasl_mechanism != "OAUTHBEARER" and not self.sasl_username:
            raise ValueError(f"kafka.sasl_username is required with {self.security}/{self.sasl_mechanism}")
        if self.sasl_mechanism == "OAUTHBEARER" and self.security.startswith("SASL") and not self.oauth_scope:
            raise ValueError("kafka.oauth_scope is required with OAUTHBEARER")
        if self.heartbeat_interval >= self.session_timeout:
            raise ValueError("kafka.heartbeat_interval must be shorter than kafka.session_timeout")
        return self

    def topic(self, name: str) -> str:
        """The full name of one of Vigil's topics (``raw``, ``events``, ``findings`` ...)."""
        return f"{self.topic_prefix}-{name}"

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # the password never reaches a log line, a repr or a traceback (str() uses this too)
        for name, value in super().__repr_args__():
            yield name, ("***" if name == "sasl_password" and value else value)
