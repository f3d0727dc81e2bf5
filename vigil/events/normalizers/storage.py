"""Storage account resource logs (``StorageRead``/``Write``/``Delete``) — reference/azure.md §1.1, §1.4.

Traps handled:

* **``callerIpAddress`` carries the port** (``198.51.100.23:52144``); :func:`~vigil.events.fields.strip_port`
  removes it (and the brackets of ``[2001:db8::1]:443``), so ``actor.ip`` can be compared with CIDR lists.
* **``statusCode`` is a number or a string** (``200`` or ``"200"``); it decides the outcome, and when it is
  absent or not a status, ``statusText`` does: ``Success``, ``SASSuccess``, ``AnonymousSuccess`` (anything
  ending in ``Success``) is a success; every other text (``AuthorizationPermissionMismatch``,
  ``SASAuthorizationError``, ``ClientOtherError``, ``ThrottlingError`` ...) is a failure.
* **The caller is not a token's claims** but ``identity.requester`` (``objectId``, ``upn``, ``appId``,
  ``tenantId``), and *how* the request was authorised is ``identity.type``, which becomes ``actor.type``
  lower-cased with spaces removed: ``sas``, ``oauth``, ``accountkey``, ``anonymous``, ``kerberos``. A SAS or
  account-key request has no requester at all: the actor is then only its IP and its authorisation type.
* **Per-service diagnostic settings.** ``resourceId`` ends with ``/blobServices/default`` (or
  ``queueServices``, ``tableServices``, ``fileServices``); :func:`~vigil.events.arm.parse_resource_id`
  makes that type ``microsoft.storage/storageaccounts/blobservices`` and name ``<account>/default``. Because
  the account is what rules and remediations (``lock_storage``) are about, the event also carries
  ``labels["storage.account"]`` (``properties.accountName``, else the first name segment of the id) and
  ``labels["storage.service"]`` (``properties.serviceType``, else derived from the id: ``blob``,
  ``queue``...), both lower-cased.
* Mixed-case ids and operation names are lower-cased (``GetBlob`` -> ``getblob``).

The event id hashes the storage request id (``correlationId``, unique per request) with the operation and
the time; a record without one falls back to the fields that identify a request (time, resource, operation,
URI, caller, status). Key order does not matter.

Detection requires ``category`` to be one of the three storage categories (any case) and an
``operationName``; records without ``category`` are not recognised, because the remaining fields
(``statusText``, ``operationName``, ``resourceId``) cannot identify the format without a per-record scan of
the id, and a guess would overlap other formats. Records that carry ``properties.eventCategory`` belong to the
Activity Log normalizer and are refused here. ``identity``/``properties`` of the wrong shape are ignored (they
stay in ``raw``); the required fields (``time``, ``resourceId``, ``operationName``) are checked precisely.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from vigil.events.arm import parse_resource_id
from vigil.events.fields import (
    actor_from_parts,
    hash_id,
    outcome_from_http,
    parse_time,
    require_str,
    strip_port,
)
from vigil.events.model import Event, Outcome, Resource, freeze
from vigil.events.normalize import Normalizer

#: ``category`` values of storage resource logs, lower-cased
STORAGE_CATEGORIES: Final = frozenset({"storageread", "storagewrite", "storagedelete"})

#: ``identity.type`` spellings seen in the docs and in Log Analytics, and their ``actor.type``
AUTH_TYPES: Final[dict[str, str]] = {
    "SAS": "sas",
    "OAuth": "oauth",
    "AccountKey": "accountkey",
    "Anonymous": "anonymous",
    "Kerberos": "kerberos",
    "SAS Key": "sas",
    "Account Key": "accountkey",
}

#: storage service resource type -> ``storage.service`` label
_SERVICES: Final[dict[str, str]] = {
    "microsoft.storage/storageaccounts/blobservices": "blob",
    "microsoft.storage/storageaccounts/queueservices": "queue",
    "microsoft.storage/storageaccounts/tableservices": "table",
    "microsoft.storage/storageaccounts/fileservices": "file",
}

_STORAGE_ACCOUNT_TYPE: Final = "microsoft.storage/storageaccounts"
_NO_DICT: Final[dict[str, Any]] = {}


class StorageLogNormalizer(Normalizer):
    """Storage resource-log record (``{"records": [...]}`` envelopes and JSON Lines blobs alike)."""

    name = "storage"
    kind = "azure.storage"
    summary = "Azure Storage resource logs: StorageRead/StorageWrite/StorageDelete (blob, queue, table, file)"
    priority = 30

    def detect(self, record: Mapping[str, Any]) -> bool:
        category = record.get("category")
        if type(category) is not str or "operationName" not in record:
            return False
        if category.lower() not in STORAGE_CATEGORIES:
            return False
        props = record.get("properties")
        return not (type(props) is dict and "eventCategory" in props)

    def normalize(self, record: dict[str, Any]) -> Event:
        raw_time = record.get("time")
        when = parse_time(raw_time, "time")
        resource_id = require_str(record, "resourceId")
        op = require_str(record, "operationName")
        status_code = record.get("statusCode")
        status_text = record.get("statusText")
        outcome = outcome_from_http(status_code)
        if outcome is None:
            outcome = _text_outcome(status_text)
        caller = record.get("callerIpAddress")
        ip = strip_port(caller)
        identity = record.get("identity")
        if type(identity) is dict:
            requester = identity.get("requester")
            if type(requester) is not dict:
                requester = _NO_DICT
            auth = identity.get("type")
            auth_type = (
                (AUTH_TYPES.get(auth) or auth.lower().replace(" ", "") or None) if type(auth) is str else None
            )
            actor = actor_from_parts(
                oid=requester.get("objectId"),
                name=requester.get("upn"),
                app_id=requester.get("appId"),
                tenant=requester.get("tenantId"),
                ip=ip,
                principal_type=auth_type,
            )
        else:
            actor = actor_from_parts(oid=None, name=None, app_id=None, tenant=None, ip=ip)
        props = record.get("properties")
        if type(props) is not dict:
            props = _NO_DICT
        resource = parse_resource_id(resource_id)
        action = op.lower()
        correlation_id = record.get("correlationId")
        if type(correlation_id) is str and correlation_id:
            key = f"{correlation_id}\x1f{action}\x1f{raw_time}"
        else:
            key = (
                f"\x1e{raw_time}\x1f{resource.id}\x1f{action}\x1f{record.get('uri')}\x1f{caller}"
                f"\x1f{status_code}\x1f{status_text}"
            )
        return Event(
            id=hash_id("st:", key, when),
            time=when,
            kind="azure.storage",
            action=action,
            outcome=outcome,
            actor=actor,
            resource=resource,
            labels=_labels(props.get("accountName"), props.get("serviceType"), resource),
            raw=freeze(record),
        )


def _text_outcome(status_text: Any) -> Outcome:
    """``statusText``: ``...Success`` is a success, any other text a failure, nothing at all unknown."""
    if type(status_text) is not str or not status_text:
        return "unknown"
    return "success" if status_text.lower().endswith("success") else "failure"


def _labels(account: Any, service: Any, resource: Resource) -> Mapping[str, str]:
    """``storage.account`` and ``storage.service`` from ``properties``, else from the parsed resource id."""
    labels: dict[str, str] = {}
    if type(account) is str and account:
        labels["storage.account"] = account.lower()
    if type(service) is str and service:
        labels["storage.service"] = service.lower()
    if len(labels) < 2:
        rtype, name = resource.type, resource.name
        if rtype is not None and name is not None and rtype.startswith(_STORAGE_ACCOUNT_TYPE):
            labels.setdefault("storage.account", name.split("/", 1)[0])
            derived = _SERVICES.get(rtype)
            if derived is not None:
                labels.setdefault("storage.service", derived)
    return freeze(labels)
