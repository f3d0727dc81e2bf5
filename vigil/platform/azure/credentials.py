"""The Azure credential Vigil acts with, built through azure-identity; nothing secret in configuration.

Vigil runs where Azure can vouch for it (a VM or VM scale set with a managed identity, an AKS pod with
workload identity), so configuration only ever *names* an identity. Three modes:

* ``default``: ``DefaultAzureCredential``: environment variables, workload identity, managed identity,
  then developer logins (Azure CLI, azd, PowerShell), in that order; interactive browser login stays off
  (a daemon must never wait for a person). ``client_id`` selects a user-assigned managed identity or the
  workload identity's application.
* ``managed_identity``: ``ManagedIdentityCredential``: the system-assigned identity, or the user-assigned
  one ``client_id``.
* ``workload_identity``: ``WorkloadIdentityCredential``: the federated token that AKS projects into the
  pod (``token_file``, default ``$AZURE_FEDERATED_TOKEN_FILE``) exchanged for the application
  ``client_id`` in ``tenant_id`` (defaults ``$AZURE_CLIENT_ID``, ``$AZURE_TENANT_ID``).

:meth:`CredentialSettings.from_mapping` refuses keys that would carry a secret (``client_secret``,
``password``, ``certificate``…): a secret in a YAML file ends up in backups, diffs and support bundles. A
service principal secret, if one must be used, stays in the environment variables that
``DefaultAzureCredential`` reads (``AZURE_CLIENT_SECRET``), outside Vigil's configuration. Identifiers are
checked to be GUIDs, so a secret pasted into ``client_id`` is refused rather than sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

from azure.core.credentials_async import AsyncTokenCredential
from azure.identity import aio as identity

from vigil.platform.errors import InvalidError

CredentialMode = Literal["default", "managed_identity", "workload_identity"]
MODES: Final = ("default", "managed_identity", "workload_identity")
_GUID: Final = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
#: configuration keys that would hold a secret: refused by name
SECRET_KEYS: Final = frozenset(
    {"client_secret", "secret", "password", "certificate", "certificate_password", "private_key", "token"}
)
_KNOWN: Final = frozenset({"mode", "client_id", "tenant_id", "token_file", "authority"})


@dataclass(frozen=True, slots=True)
class CredentialSettings:
    """Which identity to act as (module docstring). Empty strings mean "from the environment"."""

    mode: CredentialMode = "default"
    client_id: str = ""
    tenant_id: str = ""
    token_file: str = ""
    #: the Entra ID authority host for a sovereign cloud (e.g. ``login.microsoftonline.us``); empty: public
    authority: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidError(f"unknown Azure credential mode {self.mode!r} ({', '.join(MODES)})")
        for name in ("client_id", "tenant_id"):
            value = getattr(self, name)
            if value and not _GUID.fullmatch(value):
                raise InvalidError(f"azure credential {name} must be a GUID (an identifier, never a secret)")
        if self.token_file and (self.token_file.startswith("eyJ") or "\n" in self.token_file):
            raise InvalidError("azure credential token_file is a path to the projected token, not the token")
        if self.mode != "workload_identity" and self.token_file:
            raise InvalidError("token_file applies to mode workload_identity only")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> CredentialSettings:
        """Settings from a configuration section; InvalidError for a secret-bearing or unknown key."""
        secret = sorted(k for k in data if k.lower() in SECRET_KEYS)
        if secret:
            raise InvalidError(
                f"azure credential: {', '.join(secret)} must not be in configuration; use a managed or "
                "workload identity (or the AZURE_* environment variables outside Vigil's config)"
            )
        unknown = sorted(set(data) - _KNOWN)
        if unknown:
            raise InvalidError(f"azure credential: unknown key(s) {', '.join(unknown)}")
        values = {k: str(v) for k, v in data.items() if v is not None}
        return cls(**cast(Any, values))


def build_credential(settings: CredentialSettings | None = None) -> AsyncTokenCredential:
    """The asynchronous azure-identity credential for ``settings`` (module docstring). Constructing it
    does not contact Entra ID; the first token request does. The caller closes it (``await cred.close()``)."""
    s = settings or CredentialSettings()
    common: dict[str, Any] = {"authority": s.authority} if s.authority else {}
    if s.mode == "managed_identity":
        if s.client_id:
            return identity.ManagedIdentityCredential(client_id=s.client_id)
        return identity.ManagedIdentityCredential()
    if s.mode == "workload_identity":
        wl_options = {
            k: v
            for k, v in (
                ("client_id", s.client_id),
                ("tenant_id", s.tenant_id),
                ("token_file_path", s.token_file),
            )
            if v
        }
        return identity.WorkloadIdentityCredential(**wl_options, **common)
    options: dict[str, Any] = {"exclude_interactive_browser_credential": True, **common}
    if s.client_id:
        options |= {"managed_identity_client_id": s.client_id, "workload_identity_client_id": s.client_id}
    if s.tenant_id:
        options["workload_identity_tenant_id"] = s.tenant_id
    return identity.DefaultAzureCredential(**options)
