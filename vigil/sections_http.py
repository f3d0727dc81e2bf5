"""The ``http:`` settings section: the listener, its limits, and who may post to each ingestion endpoint
(bearer tokens, HMAC secrets, Event Grid URL secrets, Entra ID tenants: :mod:`vigil.api.auth`,
:mod:`vigil.api.entra`). Split from :mod:`vigil.sections`, which :mod:`vigil.settings` re-exports with it.
"""

from __future__ import annotations

import uuid
from typing import Final
from urllib.parse import urlsplit

from pydantic import ByteSize, Field, field_validator, model_validator

from vigil.sections import Section

#: hosts a keys endpoint may be reached on without TLS (tests, a local proxy)
_LOOPBACK: Final = ("127.0.0.1", "localhost", "::1")


class SourceAuth(Section):
    """Who may post to one ingestion endpoint. Nothing configured: the endpoint accepts the local token
    that ``vigil run`` creates in ``{data_dir}/ingest.token`` (0600) at first start."""

    tokens: list[str] = Field(default_factory=list, description="accepted bearer tokens")
    hmac_secrets: list[str] = Field(
        default_factory=list, description="secrets for X-Vigil-Signature: t=<unix>,v1=<hex HMAC-SHA256>"
    )
    query_secrets: list[str] = Field(
        default_factory=list, description="accepted ?code= values (Event Grid's URL secret; two for rotation)"
    )
    entra_tenant: str = Field(
        default="",
        description="Entra ID tenant whose bearer tokens are accepted (secure webhooks); empty: off",
    )
    entra_audiences: list[str] = Field(
        default_factory=list, description="accepted token audiences: the app registration's id or ID URI"
    )
    entra_roles: list[str] = Field(
        default_factory=list, description="app roles of which a token must hold one (the sender's role)"
    )
    entra_jwks_url: str = Field(
        default="", description="the tenant's signing keys (default: its login.microsoftonline.com keys)"
    )
    entra_leeway: float = Field(
        default=60.0, ge=0, le=300, description="seconds of clock skew allowed on a token's exp and nbf"
    )

    @property
    def configured(self) -> bool:
        return bool(self.tokens or self.hmac_secrets or self.query_secrets or self.entra_tenant)

    @field_validator("entra_tenant")
    @classmethod
    def _tenant_id(cls, value: str) -> str:
        if not value:
            return value
        try:  # the issuer in every token names the tenant by its id, lower-case
            return str(uuid.UUID(value))
        except ValueError:
            raise ValueError(f"entra_tenant must be the tenant id (a GUID), not {value!r}") from None

    @model_validator(mode="after")
    def _entra_complete(self) -> SourceAuth:
        if not self.entra_tenant:
            return self
        if not (self.entra_audiences and self.entra_roles):
            raise ValueError(
                "entra_tenant needs entra_audiences and entra_roles (without a role any client "
                "of the tenant could get a token for the app)"
            )
        url = urlsplit(self.entra_jwks_url) if self.entra_jwks_url else None
        if url is not None and url.scheme != "https" and url.hostname not in _LOOPBACK:
            raise ValueError("entra_jwks_url must be https (the keys decide who may post)")
        return self


class EventGridAuth(SourceAuth):
    """Event Grid deliveries: also which subscriptions may validate the endpoint."""

    subscriptions: list[str] = Field(
        default_factory=list, description="allowed aeg-subscription-name values (empty: any)"
    )


class SourcesSettings(Section):
    """Credentials of each ingestion endpoint."""

    events: SourceAuth = Field(default_factory=SourceAuth)
    eventgrid: EventGridAuth = Field(default_factory=EventGridAuth)
    azure_monitor: SourceAuth = Field(default_factory=SourceAuth)
    sentinel: SourceAuth = Field(default_factory=SourceAuth)


class HttpSettings(Section):
    """The HTTP listener: operations, the read API and the ingestion endpoints."""

    host: str = Field(default="127.0.0.1", min_length=1, description="address to listen on")
    port: int = Field(default=8470, ge=0, le=65535, description="TCP port; 0 picks a free one")
    max_body_bytes: ByteSize = Field(
        default=ByteSize(16 << 20), gt=0, description="larger ingestion bodies are refused with 413"
    )
    max_backlog: int = Field(
        default=200_000, ge=1, description="events stored but not yet detected before ingestion answers 429"
    )
    max_buffered_bytes: ByteSize = Field(
        default=ByteSize(128 << 20),
        gt=0,
        description="request bodies that ingestion calls may hold at once (a call without Content-Length "
        "counts as max_body_bytes); past it a call answers 429 before reading its body",
    )
    max_skew: int = Field(default=300, ge=1, description="seconds an HMAC signature's timestamp may be off")
    header_timeout: float = Field(
        default=10.0, gt=0, le=600, description="seconds a connection has to send each request head"
    )
    max_connections: int = Field(
        default=1000, ge=1, description="open connections past this are closed at once"
    )
    body_timeout: float = Field(
        default=60.0, gt=0, le=3600, description="seconds a request has to send its whole body after its head"
    )
    read_auth: bool = Field(
        default=False,
        description="require a bearer token (the local token or a platform API token) on the read API: "
        "findings, incidents, rules, status, metrics, actions, alerts; /healthz and /readyz stay open",
    )
    sources: SourcesSettings = Field(default_factory=SourcesSettings)
