"""Building the azure-identity credential from settings: identities named, secrets refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from azure.identity.aio import DefaultAzureCredential, ManagedIdentityCredential, WorkloadIdentityCredential

from vigil.platform.azure.credentials import CredentialSettings, build_credential
from vigil.platform.errors import InvalidError

CLIENT = "9a3c1e5b-7d2f-4b6a-8c0e-1f3d5b7a9c2e"
TENANT = "7d1c3e2a-5b8f-4c61-9a0e-2f4b6d8c1e90"


def test_each_mode_builds_its_credential(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("projected-token")
    built = [
        build_credential(),
        build_credential(CredentialSettings.from_mapping({"mode": "default", "client_id": CLIENT})),
        build_credential(CredentialSettings(mode="managed_identity", client_id=CLIENT)),
        build_credential(
            CredentialSettings.from_mapping(
                {
                    "mode": "workload_identity",
                    "client_id": CLIENT,
                    "tenant_id": TENANT,
                    "token_file": str(token_file),
                }
            )
        ),
    ]
    kinds = [
        DefaultAzureCredential,
        DefaultAzureCredential,
        ManagedIdentityCredential,
        WorkloadIdentityCredential,
    ]
    assert [type(c) for c in built] == kinds

    async def close() -> None:
        for credential in built:
            await credential.close()

    asyncio.run(close())


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"client_secret": "s3cr3t"}, "must not be in configuration"),
        ({"mode": "default", "password": "x"}, "must not be in configuration"),
        ({"client_id": "s3cr3t-pasted-here"}, "must be a GUID"),
        ({"mode": "workload_identity", "token_file": "eyJhbGciOi.x.y"}, "path to the projected token"),
        ({"mode": "managed_identity", "token_file": "/var/run/token"}, "workload_identity only"),
        ({"mode": "certificate"}, "unknown Azure credential mode"),
        ({"endpoint": "x"}, "unknown key"),
    ],
)
def test_secrets_and_nonsense_are_refused(data: dict[str, str], match: str) -> None:
    with pytest.raises(InvalidError, match=match) as caught:
        CredentialSettings.from_mapping(data)
    assert "s3cr3t" not in str(caught.value)
