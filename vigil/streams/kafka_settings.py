"""The broker credentials that the ``kafka:`` settings section (:mod:`vigil.sections_kafka`) describes.

Secrets never live in the profile: ``sasl_password`` comes from ``VIGIL_KAFKA__SASL_PASSWORD``, and
OAUTHBEARER (Event Hubs with Microsoft Entra ID) needs no secret at all.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from vigil.errors import ConfigError
from vigil.sections_kafka import KafkaSettings

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

__all__ = ["KafkaSettings", "credentials", "entra_token_provider", "ssl_context"]


def ssl_context(settings: KafkaSettings) -> ssl.SSLContext | None:
    """A verifying TLS context for SSL and SASL_SSL (the configured CA, else the system's)."""
    if settings.security not in ("SSL", "SASL_SSL"):
        return None
    try:
        return ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"kafka.ca_file {settings.ca_file}: cannot load it: {exc}") from exc


def credentials(settings: KafkaSettings) -> CredentialsT | None:
    """faust broker credentials for the section (None for PLAINTEXT)."""
    from faust.auth import OAuthCredentials, SASLCredentials, SSLCredentials  # noqa: PLC0415 (kafka extra)

    context = ssl_context(settings)
    if settings.security == "PLAINTEXT":
        return None
    if settings.security == "SSL":
        assert context is not None
        return SSLCredentials(context)
    if settings.sasl_mechanism == "OAUTHBEARER":
        return OAuthCredentials(oauth_cb=entra_token_provider(settings.oauth_scope), ssl_context=context)
    if not settings.sasl_password:
        raise ConfigError(
            f"kafka: {settings.sasl_mechanism} needs a password; set VIGIL_KAFKA__SASL_PASSWORD "
            "(for Event Hubs: the namespace connection string)"
        )
    return SASLCredentials(
        username=settings.sasl_username,
        password=settings.sasl_password,
        ssl_context=context,
        mechanism=settings.sasl_mechanism,
    )


def entra_token_provider(scope: str) -> Any:
    """aiokafka's OAUTHBEARER token provider over azure-identity: managed identity, workload identity,
    environment or az login, whatever ``DefaultAzureCredential`` finds. The credential caches tokens and
    refreshes them before they expire. (Built here because aiokafka insists on its own base class, and
    importing it at module level would make the settings depend on the ``kafka`` extra.)"""
    from aiokafka.abc import AbstractTokenProvider  # type: ignore[import-untyped]  # noqa: PLC0415
    from azure.identity.aio import DefaultAzureCredential  # noqa: PLC0415 (azure extra)

    class EntraTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
        def __init__(self) -> None:
            self._credential: DefaultAzureCredential | None = None

        async def token(self) -> str:
            if self._credential is None:
                self._credential = DefaultAzureCredential()
            access = await self._credential.get_token(scope)
            return access.token

        def __repr__(self) -> str:
            return f"EntraTokenProvider(scope={scope!r})"

    return EntraTokenProvider()
