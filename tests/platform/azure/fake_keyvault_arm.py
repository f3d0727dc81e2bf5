"""The ARM half of the fake Key Vault, and what both halves share (errors, TLS, a test credential).

:class:`FakeVaults` keeps ``Microsoft.KeyVault/vaults`` documents and answers the calls the lockdown makes
through ``azure-mgmt-keyvault``: ``GET``/``PATCH …/vaults/{name}`` (a PATCH replaces each property it
names, as ARM does) and ``PUT …/vaults/{name}/accessPolicies/{add|remove|replace}`` (``remove`` drops
the listed permissions and the entry once it has none left). :func:`make_server_certificate` makes the
throw-away CA and the 127.0.0.1 certificate the loopback servers speak TLS with, since Key Vault's and
ARM's bearer-token policies refuse plain http.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TENANT = "7d1c3e2a-5b8f-4c61-9a0e-2f4b6d8c1e90"
_VAULT_PATH = re.compile(
    r"/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.KeyVault/vaults/([^/]+)"
    r"(?:/accessPolicies/(add|remove|replace))?",
    re.IGNORECASE,
)


class ServiceError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def fail(status: int, code: str, message: str) -> Any:
    raise ServiceError(status, code, message)


class FakeVaults:
    """Vault documents by lower-cased resource id, and their ARM routes."""

    def __init__(self) -> None:
        self.vaults: dict[str, dict[str, Any]] = {}

    def add_vault(self, subscription: str, group: str, name: str, **properties: Any) -> str:
        vault_id = (
            f"/subscriptions/{subscription}/resourceGroups/{group}/providers/Microsoft.KeyVault/vaults/{name}"
        )
        props = {
            "tenantId": TENANT,
            "sku": {"family": "A", "name": "premium"},
            "accessPolicies": [],
            "vaultUri": f"https://{name}.vault.azure.net/",
            "enableRbacAuthorization": False,
            "enableSoftDelete": True,
            "networkAcls": {
                "bypass": "AzureServices",
                "defaultAction": "Allow",
                "ipRules": [],
                "virtualNetworkRules": [],
            },
            "publicNetworkAccess": "Enabled",
            "provisioningState": "Succeeded",
        }
        self.vaults[vault_id.lower()] = {
            "id": vault_id,
            "name": name,
            "type": "Microsoft.KeyVault/vaults",
            "location": "westeurope",
            "tags": {},
            "properties": props | properties,
        }
        return vault_id

    def vault(self, vault_id: str) -> dict[str, Any]:
        return self.vaults[vault_id.lower()]

    def route(self, method: str, path: str, body: Any) -> tuple[str, Any]:
        match = _VAULT_PATH.fullmatch(path)
        if match is None:
            return "vault_unknown", lambda: fail(404, "ResourceNotFound", f"no route {path}")
        vault_id = path[: match.end(3)].lower()
        kind = match.group(4)
        if kind and method == "PUT":
            return "vault_access_policy", lambda: self._access_policy(vault_id, kind.lower(), body)
        op = {"GET": "vault_get", "PATCH": "vault_patch"}.get(method, "vault_unknown")
        return op, lambda: self._vault_op(vault_id, method, body)

    def _vault_op(self, vault_id: str, method: str, body: Any) -> dict[str, Any]:
        vault = self.vaults.get(vault_id)
        if vault is None:
            raise ServiceError(
                404, "ResourceNotFound", "The Resource 'Microsoft.KeyVault/vaults' was not found."
            )
        if method == "PATCH":
            for name, value in (body.get("properties") or {}).items():
                vault["properties"][name] = value
            vault["tags"] = body.get("tags", vault["tags"])
        elif method != "GET":
            raise ServiceError(405, "MethodNotAllowed", method)
        return vault

    def _access_policy(self, vault_id: str, kind: str, body: Any) -> dict[str, Any]:
        vault = self._vault_op(vault_id, "GET", None)
        entries: list[dict[str, Any]] = vault["properties"]["accessPolicies"]
        for change in (body.get("properties") or {}).get("accessPolicies") or []:
            found = next((e for e in entries if e["objectId"] == change["objectId"]), None)
            if found is None and kind != "remove":
                found = {"tenantId": change["tenantId"], "objectId": change["objectId"], "permissions": {}}
                entries.append(found)
            if found is None:
                continue
            for area, perms in (change.get("permissions") or {}).items():
                have = list(found["permissions"].get(area) or [])
                if kind == "remove":
                    have = [p for p in have if p.lower() not in {q.lower() for q in perms}]
                elif kind == "add":
                    have += [p for p in perms if p.lower() not in {q.lower() for q in have}]
                else:
                    have = list(perms)
                found["permissions"][area] = have
            if not any(found["permissions"].values()):
                entries.remove(found)
        return {
            "id": f"{vault['id']}/accessPolicies/{kind}",
            "type": "Microsoft.KeyVault/vaults/accessPolicies",
            "properties": {"accessPolicies": body["properties"]["accessPolicies"]},
        }


def make_server_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it: ``(ca.pem, cert.pem, key.pem)``."""
    now = datetime.datetime.now(datetime.UTC)

    def build(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, ca: bool
    ) -> x509.CertificateBuilder:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        return builder

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vigil test CA")])
    usage = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
    ca = (
        build("vigil test CA", ca_key, ca_name, True)
        .add_extension(usage, critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    cert = (
        build("127.0.0.1", key, ca.subject, False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pkcs8 = serialization.PrivateFormat.PKCS8
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption()))
    return paths


class StaticCredential:
    """An async azure-core token credential that hands out a fixed test token (no identity involved)."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken("test-token", int(time.time()) + 3600)

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> StaticCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass
