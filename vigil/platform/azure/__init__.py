"""The platform interfaces over the Azure SDKs: compute and network quarantine, storage lockdown, Key Vault,
attestation.

Every provider here talks to Azure Resource Manager through the asynchronous ``azure-mgmt-*`` clients built
by :mod:`vigil.platform.azure.arm` (one credential, one safe retry policy, endpoints that tests can point at a
loopback fake), and raises :mod:`vigil.platform.errors` only, so remediators handle Azure and the local
platform alike. Each provider declares the Azure RBAC actions it needs (``RBAC_ACTIONS``), from which the
docs list least-privilege roles.
"""
