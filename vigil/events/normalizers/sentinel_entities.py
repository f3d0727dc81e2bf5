"""The entity model shared by Sentinel alerts and incidents (split from :mod:`.sentinel`, which normalises
the rows): ``$id``/``$ref`` resolution with a cap on expansion, the actor and resource an entity list names,
and the small readers both normalizers use for labels and times.

Entities reference each other by ``$ref`` to an earlier ``$id``; a crafted list could reference itself into
an exponential tree, so :func:`resolve_refs` stops at :data:`MAX_ENTITY_NODES` nodes and the record is
dead-lettered instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from vigil.errors import NormalizeError
from vigil.events.arm import parse_resource_id
from vigil.events.fields import parse_time, text
from vigil.events.model import NO_ACTOR, NO_RESOURCE, Actor, Resource

#: most containers one entity list may expand to while resolving ``$ref`` references
MAX_ENTITY_NODES: Final = 100_000


def resolve_refs(entities: list[Any], field: str) -> list[Any]:
    """Resolve Json.NET ``{"$ref": id}`` references against the objects carrying ``"$id"``.

    Returns new containers (the input is not changed). References to unknown ids and references that would
    form a cycle are kept as they are; more than :data:`MAX_ENTITY_NODES` containers is an error naming
    ``field``.
    """
    index: dict[str, dict[str, Any]] = {}
    _index_ids(entities, index)
    budget = [MAX_ENTITY_NODES]
    return [_expand(e, index, set(), budget, field) for e in entities]


def _index_ids(node: Any, index: dict[str, dict[str, Any]]) -> None:
    if type(node) is dict:
        ident = node.get("$id")
        if ident is not None and "$ref" not in node:
            index.setdefault(str(ident), node)
        for value in node.values():
            if type(value) is dict or type(value) is list:
                _index_ids(value, index)
    elif type(node) is list:
        for value in node:
            if type(value) is dict or type(value) is list:
                _index_ids(value, index)


def _expand(
    node: Any, index: dict[str, dict[str, Any]], active: set[str], budget: list[int], field: str
) -> Any:
    if type(node) is dict:
        ref = node.get("$ref")
        if ref is not None:
            target = index.get(str(ref))
            if target is None or str(ref) in active:
                return node
            node = target
        budget[0] -= 1
        if budget[0] < 0:
            raise NormalizeError(f"{field}: $ref expansion exceeds {MAX_ENTITY_NODES} objects")
        ident = node.get("$id")
        key = str(ident) if ident is not None else None
        if key is not None:
            active.add(key)
        out = {k: _expand(v, index, active, budget, field) for k, v in node.items()}
        if key is not None:
            active.discard(key)
        return out
    if type(node) is list:
        budget[0] -= 1
        if budget[0] < 0:
            raise NormalizeError(f"{field}: $ref expansion exceeds {MAX_ENTITY_NODES} objects")
        return [_expand(v, index, active, budget, field) for v in node]
    return node


def alert_entities(entities: Any) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """SecurityAlert entities: ``{"Type": "account", "Name": ...}`` (properties at the top level)."""
    if type(entities) is not list:
        return
    for entity in entities:
        if type(entity) is dict:
            etype = entity.get("Type")
            if isinstance(etype, str):
                yield etype.lower().replace("-", ""), entity


def incident_entities(entities: Any) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Incident related entities: ``{"kind": "Account", "properties": {"accountName": ...}}``."""
    if type(entities) is not list:
        return
    for entity in entities:
        if type(entity) is dict:
            kind = entity.get("kind")
            props = entity.get("properties")
            if isinstance(kind, str) and type(props) is dict:
                yield kind.lower().replace("-", ""), props


def actor_and_resource(entities: Iterable[tuple[str, Mapping[str, Any]]]) -> tuple[Actor, Resource]:
    """The first account and ip entities make the actor; the first Azure resource (or host) the resource.

    Entity types are lower-cased without dashes (``azure-resource`` and ``AzureResource`` are the same);
    property names are read in both the alert (``AadUserId``) and the incident (``aadUserId``) spelling.
    """
    account: Mapping[str, Any] | None = None
    ip: str | None = None
    resource_id: str | None = None
    host_id: str | None = None
    for etype, props in entities:
        if etype == "account":
            if account is None:
                account = props
        elif etype == "ip":
            if ip is None:
                ip = text(prop(props, "Address", "address"))
        elif etype == "azureresource":
            if resource_id is None:
                resource_id = text(prop(props, "ResourceId", "resourceId"))
        elif etype == "host" and host_id is None:
            host_id = text(prop(props, "AzureID", "azureID"))

    actor = NO_ACTOR
    if account is not None or ip is not None:
        user_id = tenant = name = None
        if account is not None:
            user_id = text(prop(account, "AadUserId", "aadUserId"))
            tenant = text(prop(account, "AadTenantId", "aadTenantId"))
            name = text(prop(account, "Name", "accountName"))
            suffix = text(prop(account, "UPNSuffix", "upnSuffix"))
            if name and suffix and "@" not in name:
                name = f"{name}@{suffix}"
            if not name:
                name = text(prop(account, "DisplayName", "displayName")) or text(
                    prop(account, "FriendlyName", "friendlyName")
                )
        if user_id or tenant or name or ip:
            actor = Actor(id=user_id, name=name, ip=ip, tenant=tenant)
    rid = resource_id or host_id
    return actor, (parse_resource_id(rid.strip()) if rid and rid.strip() else NO_RESOURCE)


def prop(props: Mapping[str, Any], pascal: str, camel: str) -> Any:
    value = props.get(pascal)
    return props.get(camel) if value is None else value


# -- small helpers ----------------------------------------------------------------------------------------


def parse_when(value: Any, field: str) -> datetime:
    """Like :func:`~vigil.events.fields.parse_time`; also takes ``datetime`` (``LogsQueryClient`` rows)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return parse_time(value, field)


def token(value: Any) -> str | None:
    """``"InProgress"`` -> ``"inprogress"``, ``"In Progress"`` -> ``"inprogress"``; non-strings -> None."""
    if not isinstance(value, str):
        return None
    return "".join(value.lower().split()) or None


def join_values(value: Any) -> str | None:
    """A comma-separated string or a list of strings as ``"A,B"`` (blank items dropped)."""
    if isinstance(value, str):
        items: Iterable[Any] = value.split(",")
    elif isinstance(value, list | tuple):
        items = value
    else:
        return None
    parts = [s for s in (text(i) for i in items) if s and s.strip()]
    return ",".join(p.strip() for p in parts) or None


def put_label(labels: dict[str, str], key: str, value: Any) -> None:
    value = text(value)
    if value is not None and value.strip():
        labels[key] = value.strip()
