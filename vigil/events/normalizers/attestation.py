"""Attestation results: MAA-shaped token claims, bare or in Vigil's wrapper — reference/azure.md §4.1–§4.3.

A record is the **decoded payload** of an attestation token (a JSON object of claims, never the JWT
string: signature checks belong to whoever decoded it), in one of two shapes.

**Bare claims**, as Microsoft Azure Attestation issues them::

    {"iss": "https://sharedweu.weu.attest.azure.net", "iat": 1795513200, "jti": "b7e1...",
     "x-ms-attestation-type": "azurevm", "x-ms-azurevm-vmid": "5E2A9C14-...",
     "x-ms-isolation-tee": {"x-ms-attestation-type": "sevsnpvm",
                            "x-ms-compliance-status": "azure-compliant-cvm",
                            "x-ms-sevsnpvm-launchmeasurement": "3c9e...",
                            "x-ms-sevsnpvm-is-debuggable": false, ...},
     "x-ms-policy-hash": "Zq4n...", "x-ms-ver": "1.0"}

**Vigil's result wrapper**, what Vigil's own attestation service (``vigil/platform/local``) emits after
it has verified (or refused) a node's evidence::

    {
      "claims":  {...},                    # required object: the claims of the token it issued; on a
                                           #   rejection, the claims it could read from the evidence
                                           #   (at least x-ms-attestation-type)
      "result":  "verified" | "rejected",  # required: the service's verdict
      "node_id": "node-a1",                # optional non-empty string: the node's id in Vigil's registry
      "reason":  "measurement not allowed",  # optional string: why it was rejected
      "time":    "2026-11-24T10:00:00Z"    # optional ISO 8601 (or epoch): when it decided;
                                           #   default claims.iat
    }

**The trap: where the SEV-SNP claims live.** ``sevsnpvm`` tokens (``/attest/SevSnpVm``) carry the
``x-ms-sevsnpvm-*`` claims and ``x-ms-compliance-status`` at the top level; ``azurevm``
guest-attestation tokens (``/attest/AzureGuest``) carry ``x-ms-attestation-type: "azurevm"`` at the top
level and the SNP claims **nested under** ``x-ms-isolation-tee``. Every SNP claim is read from
``x-ms-isolation-tee`` first, then from the top level, so both token kinds map the same way.
``x-ms-runtime`` (with ``vm-configuration.vmUniqueId``) can sit at either level too.

Mapping:

====================  =====================================================================================
``id``                ``att:`` + ``jti`` when present (MAA's unique token id); otherwise ``att:`` + a hash
                      of the whole record (stable across re-delivery)
``time``              the wrapper's ``time``, else ``iat`` (epoch seconds)
``action``            ``attestation.verify``
``outcome``           ``success`` when the node is attested, ``failure`` otherwise
``node.id``           the wrapper's ``node_id``; else ``x-ms-azurevm-vmid``; else
                      ``x-ms-runtime.vm-configuration.vmUniqueId``. VM ids are GUIDs and are lower-cased
                      (MAA writes them upper-case, IMDS and ARM lower-case)
``node.measurement``  ``x-ms-sevsnpvm-launchmeasurement``, lower-case hex (96 digits: SHA-384 launch digest)
``node.attested``     wrapper: ``result == "verified"``. Bare claims: ``x-ms-compliance-status`` is
                      ``azure-compliant-cvm`` or ``azure-compliant-uvm`` **and**
                      ``x-ms-sevsnpvm-is-debuggable`` is ``false`` (a missing debug claim proves nothing,
                      so the node is not attested)
``labels``            ``attestation_type`` (top level), ``tee_type`` (the nested type of an ``azurevm``
                      token), ``compliance_status``, ``debuggable`` (``"true"``/``"false"``),
                      ``policy_hash``, ``issuer``, and from the wrapper ``result`` and ``reason``;
                      strings only, absent when unknown
``raw``               the record, untouched
====================  =====================================================================================

Malformed claims are refused with the claim's name: a measurement that is not 96 hex digits, ``iat``
that is not a number, a debug flag that is not a boolean, ``x-ms-isolation-tee`` that is not an object,
a wrapper ``result`` other than ``verified``/``rejected``.

Detection: a top-level ``x-ms-attestation-type`` or ``x-ms-isolation-tee``, or a ``claims`` object
holding one of them. No other format Vigil reads has these keys at the top level (Event Grid's and the
Activity Log's ``claims`` are nested and hold Entra claims).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from vigil.errors import NormalizeError
from vigil.events.fields import content_id, parse_time
from vigil.events.model import Event, Node, freeze
from vigil.events.normalize import Normalizer

TYPE_CLAIM: Final = "x-ms-attestation-type"
TEE_CLAIM: Final = "x-ms-isolation-tee"
COMPLIANCE_CLAIM: Final = "x-ms-compliance-status"
MEASUREMENT_CLAIM: Final = "x-ms-sevsnpvm-launchmeasurement"
DEBUGGABLE_CLAIM: Final = "x-ms-sevsnpvm-is-debuggable"
POLICY_HASH_CLAIM: Final = "x-ms-policy-hash"
VMID_CLAIM: Final = "x-ms-azurevm-vmid"
RUNTIME_CLAIM: Final = "x-ms-runtime"

#: compliance statuses MAA gives when its platform policy checks pass (CVM, and utility VM/containers)
COMPLIANT: Final = frozenset({"azure-compliant-cvm", "azure-compliant-uvm"})
RESULTS: Final = frozenset({"verified", "rejected"})
MEASUREMENT_HEX_DIGITS: Final = 96
_HEX: Final = frozenset("0123456789abcdefABCDEF")


class AttestationNormalizer(Normalizer):
    """MAA-shaped attestation token claims, bare or wrapped in Vigil's attestation result."""

    name = "attestation"
    kind = "attestation"
    summary = "Attestation results: decoded MAA-shaped token claims (SEV-SNP), bare or in Vigil's wrapper"
    priority = 50

    def detect(self, record: Mapping[str, Any]) -> bool:
        if TYPE_CLAIM in record or TEE_CLAIM in record:
            return True
        claims = record.get("claims")
        return type(claims) is dict and (TYPE_CLAIM in claims or TEE_CLAIM in claims)

    def normalize(self, record: dict[str, Any]) -> Event:
        wrapped = TYPE_CLAIM not in record and TEE_CLAIM not in record
        if wrapped:
            claims = record.get("claims")
            if type(claims) is not dict:
                raise NormalizeError("claims: expected an object of token claims")
        else:
            claims = record
        tee = claims.get(TEE_CLAIM)
        if tee is None:
            tee = {}
        elif type(tee) is not dict:
            raise NormalizeError(f"{TEE_CLAIM}: expected an object, got {type(tee).__name__}")

        def snp(name: str) -> Any:
            """An SEV-SNP claim: under x-ms-isolation-tee (azurevm) first, then top level (sevsnpvm)."""
            value = tee.get(name)
            return claims.get(name) if value is None else value

        labels: dict[str, str] = {}
        att_type = _optional_str(claims, TYPE_CLAIM)
        if att_type is not None:
            labels["attestation_type"] = att_type
        tee_type = _optional_str(tee, TYPE_CLAIM, f"{TEE_CLAIM}.{TYPE_CLAIM}")
        if tee_type is not None:
            labels["tee_type"] = tee_type
        compliance = _claim_str(snp(COMPLIANCE_CLAIM), COMPLIANCE_CLAIM)
        if compliance is not None:
            labels["compliance_status"] = compliance
        debuggable = snp(DEBUGGABLE_CLAIM)
        if debuggable is not None:
            if type(debuggable) is not bool:
                raise NormalizeError(
                    f"{DEBUGGABLE_CLAIM}: expected a boolean, got {type(debuggable).__name__}"
                )
            labels["debuggable"] = "true" if debuggable else "false"
        policy_hash = _optional_str(claims, POLICY_HASH_CLAIM)
        if policy_hash is not None:
            labels["policy_hash"] = policy_hash
        issuer = _optional_str(claims, "iss")
        if issuer is not None:
            labels["issuer"] = issuer
        measurement = launch_measurement(snp(MEASUREMENT_CLAIM))

        if wrapped:
            result = record.get("result")
            if type(result) is not str or result not in RESULTS:
                got = "missing" if result is None else repr(result)
                raise NormalizeError(f"result: expected 'verified' or 'rejected', got {got}")
            labels["result"] = result
            reason = record.get("reason")
            if reason is not None:
                if type(reason) is not str:
                    raise NormalizeError(f"reason: expected a string, got {type(reason).__name__}")
                if reason:
                    labels["reason"] = reason
            attested = result == "verified"
            node_id = _optional_str(record, "node_id")
        else:
            attested = compliance in COMPLIANT and debuggable is False
            node_id = None
        if node_id is None:
            node_id = _vm_id(claims, tee)

        raw_time = record.get("time") if wrapped else None
        if raw_time is not None:
            when = parse_time(raw_time, "time")
        else:
            iat = claims.get("iat")
            if iat is None:
                raise NormalizeError("iat: missing (and no wrapper time), the attestation time is unknown")
            if not isinstance(iat, int | float) or isinstance(iat, bool):
                raise NormalizeError(f"iat: expected epoch seconds (a number), got {type(iat).__name__}")
            when = parse_time(iat, "iat")

        jti = _optional_str(claims, "jti")
        return Event(
            id="att:" + jti if jti is not None else content_id("att:", record),
            time=when,
            kind="attestation",
            action="attestation.verify",
            outcome="success" if attested else "failure",
            node=Node(id=node_id, attested=attested, measurement=measurement),
            labels=freeze(labels),
            raw=freeze(record),
        )


def launch_measurement(value: Any, field: str = MEASUREMENT_CLAIM) -> str | None:
    """A SEV-SNP launch measurement as lower-case hex; refuse anything that is not 96 hex digits.

    Shared with the telemetry normalizer, whose records carry the same value under ``measurement``.
    """
    if value is None:
        return None
    if type(value) is not str:
        raise NormalizeError(f"{field}: expected a hex string, got {type(value).__name__}")
    if not _HEX.issuperset(value):
        bad = next(c for c in value if c not in _HEX)
        raise NormalizeError(f"{field}: not hex (found {bad!r})")
    if len(value) != MEASUREMENT_HEX_DIGITS:
        raise NormalizeError(
            f"{field}: expected {MEASUREMENT_HEX_DIGITS} hex digits (SHA-384), got {len(value)}"
        )
    return value.lower()


def _vm_id(claims: dict[str, Any], tee: dict[str, Any]) -> str | None:
    """``x-ms-azurevm-vmid``, else ``x-ms-runtime.vm-configuration.vmUniqueId`` (nested or top level)."""
    vmid = _optional_str(claims, VMID_CLAIM)
    if vmid is not None:
        return vmid.lower()
    for holder in (tee, claims):
        runtime = holder.get(RUNTIME_CLAIM)
        if type(runtime) is dict:
            config = runtime.get("vm-configuration")
            if type(config) is dict:
                unique = config.get("vmUniqueId")
                if type(unique) is str and unique:
                    return unique.lower()
    return None


def _optional_str(holder: Mapping[str, Any], key: str, field: str | None = None) -> str | None:
    """``holder[key]`` when it is a non-empty string, ``None`` when absent; any other type is refused."""
    return _claim_str(holder.get(key), field or key)


def _claim_str(value: Any, field: str) -> str | None:
    if value is None or value == "":
        return None
    if type(value) is not str:
        raise NormalizeError(f"{field}: expected a string, got {type(value).__name__}")
    return value
