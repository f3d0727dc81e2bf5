"""Deterministic generator of Azure Activity Log records of about 1.5 KB (as in reference/performance.md)."""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator

import orjson

OPERATIONS = [
    ("Microsoft.KeyVault/vaults/write", "Microsoft.KeyVault", "vaults"),
    ("Microsoft.KeyVault/vaults/accessPolicies/write", "Microsoft.KeyVault", "vaults"),
    ("Microsoft.Authorization/roleAssignments/write", "Microsoft.Authorization", "roleAssignments"),
    ("Microsoft.Authorization/locks/delete", "Microsoft.Authorization", "locks"),
    ("Microsoft.Storage/storageAccounts/write", "Microsoft.Storage", "storageAccounts"),
    ("Microsoft.Storage/storageAccounts/listKeys/action", "Microsoft.Storage", "storageAccounts"),
    ("Microsoft.Storage/storageAccounts/regenerateKey/action", "Microsoft.Storage", "storageAccounts"),
    ("Microsoft.Compute/virtualMachines/write", "Microsoft.Compute", "virtualMachines"),
    ("Microsoft.Compute/virtualMachines/runCommand/action", "Microsoft.Compute", "virtualMachines"),
    ("Microsoft.Compute/disks/beginGetAccess/action", "Microsoft.Compute", "disks"),
    ("Microsoft.Compute/snapshots/write", "Microsoft.Compute", "snapshots"),
    (
        "Microsoft.Network/networkSecurityGroups/securityRules/write",
        "Microsoft.Network",
        "networkSecurityGroups",
    ),
    ("Microsoft.Network/networkInterfaces/write", "Microsoft.Network", "networkInterfaces"),
    ("Microsoft.Insights/diagnosticSettings/delete", "Microsoft.Insights", "diagnosticSettings"),
]
TENANT = "7d1c3e2a-5b8f-4c61-9a0e-2f4b6d8c1e90"


def records(n: int, seed: int = 7) -> Iterator[dict[str, object]]:
    """Yield ``n`` activity records: 200 users, 14 operations, 4 subscriptions x 10 groups x 50 names."""
    rnd = random.Random(seed)
    users = [str(uuid.UUID(int=rnd.getrandbits(128))) for _ in range(200)]
    subs = [str(uuid.UUID(int=rnd.getrandbits(128))) for _ in range(4)]
    for i in range(n):
        op, ns, rtype = OPERATIONS[rnd.randrange(len(OPERATIONS))]
        sub = subs[i % len(subs)]
        rg = f"rg-team{rnd.randrange(10):02d}"
        name = f"res{rnd.randrange(50):04d}"
        scope = f"/subscriptions/{sub}/resourceGroups/{rg}/providers/{ns}/{rtype}/{name}"
        user = users[rnd.randrange(len(users))]
        ip = f"203.0.113.{rnd.randrange(256)}"
        corr = str(uuid.UUID(int=rnd.getrandbits(128)))
        upper = rnd.random() < 0.5
        hms = f"{rnd.randrange(24):02d}:{rnd.randrange(60):02d}:{rnd.randrange(60):02d}"
        ts = f"2026-11-24T{hms}.{rnd.randrange(10**7):07d}Z"
        yield {
            "time": ts,
            "resourceId": scope.upper() if upper else scope,
            "operationName": op.upper() if upper else op,
            "category": rnd.choice(["Write", "Delete", "Action"]),
            "resultType": rnd.choice(["Start", "Success", "Succeeded", "Failure"]),
            "resultSignature": rnd.choice(["Started.", "Succeeded.OK", "Failed.Forbidden"]),
            "durationMs": rnd.choice([0, "0", "78"]),
            "callerIpAddress": ip,
            "correlationId": corr,
            "identity": {
                "authorization": {
                    "action": op,
                    "evidence": {
                        "role": rnd.choice(["Contributor", "Owner", "Reader"]),
                        "roleAssignmentScope": f"/subscriptions/{sub}",
                        "roleAssignmentId": uuid.UUID(int=rnd.getrandbits(128)).hex,
                        "roleDefinitionId": uuid.UUID(int=rnd.getrandbits(128)).hex,
                        "principalId": user,
                        "principalType": rnd.choice(["User", "ServicePrincipal"]),
                    },
                },
                "claims": {
                    "aud": "https://management.core.windows.net/",
                    "iss": f"https://sts.windows.net/{TENANT}/",
                    "iat": "1795512067",
                    "exp": "1795516267",
                    "appid": "04b07795-8ddb-461a-bbee-02f9e1bf7b46",
                    "http://schemas.microsoft.com/identity/claims/objectidentifier": user,
                    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/upn": f"u{user[:6]}@example.org",
                    "ipaddr": ip,
                    "http://schemas.microsoft.com/identity/claims/tenantid": TENANT,
                    "ver": "1.0",
                },
            },
            "level": rnd.choice(["Information", "Informational", "Warning", "Error"]),
            "location": "global",
            "properties": {
                "statusCode": rnd.choice(["OK", "Created", "Forbidden"]),
                "serviceRequestId": str(uuid.UUID(int=rnd.getrandbits(128))),
                "eventCategory": "Administrative",
                "message": op,
            },
        }


def lines(n: int, seed: int = 7, *, time_ordered: bool = False) -> list[bytes]:
    """``n`` records as JSON Lines (each with its trailing newline); ``time_ordered``: the same records
    sorted by their ``time`` (as a source delivers its log), else in the generated (random-time) order."""
    recs = list(records(n, seed))
    if time_ordered:
        recs.sort(key=lambda r: str(r["time"]))  # (one day, one format: the text sorts as the time)
    return [orjson.dumps(r) + b"\n" for r in recs]
