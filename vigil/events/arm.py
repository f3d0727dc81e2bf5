"""Azure Resource Manager ids: lower-case them and parse out subscription, group, type and name.

Ids arrive upper-cased, mixed-case or lower-cased depending on the source (reference/azure.md §0), so the
canonical form is lower case. The common shape (``/subscriptions/S/resourcegroups/G/providers/NS/TYPE/NAME``)
takes a fast path of fixed positions; everything else goes through the general walk. Results are memoised
in a bounded dictionary (oldest entries evicted a slice at a time), because a fleet has few distinct
resources and many events about each.
"""

from __future__ import annotations

import itertools
from typing import Final

from vigil.events.model import NO_RESOURCE, Resource

_CACHE_MAX: Final = 65536
#: the memo of parse_resource_id (ARM id as given -> Resource); the compiled Activity path reads it directly
RESOURCE_CACHE: Final[dict[str, Resource]] = {}
_cache = RESOURCE_CACHE


def parse_resource_id(resource_id: str | None) -> Resource:
    """Parse an ARM id into a :class:`Resource` with the lower-cased id and its parts.

    ``type`` follows ARM: the provider namespace and every type segment
    (``microsoft.storage/storageaccounts/blobservices``); ``name`` joins the name segments the same way
    (``stcctrainckpt/default``). Extension resources (``.../providers/microsoft.authorization/locks/x`` under
    another resource) take the last provider. A value that is not an ARM id still becomes ``resource.id``
    (lower-cased) with no parts, so a rule can match on it.
    """
    if not resource_id:
        return NO_RESOURCE
    hit = _cache.get(resource_id)
    if hit is not None:
        return hit
    rid = resource_id.lower()
    parts = rid.split("/")
    if (
        len(parts) == 9
        and parts[5] == "providers"
        and parts[1] == "subscriptions"
        and parts[3] == "resourcegroups"
        and not parts[0]
    ):
        res = Resource(
            id=rid,
            type=parts[6] + "/" + parts[7],
            name=parts[8],
            subscription=parts[2],
            group=parts[4],
        )
    else:
        res = _parse_general(rid.strip())
    if len(_cache) >= _CACHE_MAX:
        # Forget the oldest sixteenth, not everything: a clear() of 65k entries stalls an event for tens
        # of milliseconds, and a cold cache makes the next ones slow too.
        for old in list(itertools.islice(_cache, _CACHE_MAX // 16)):
            del _cache[old]
    _cache[resource_id] = res
    return res


def _parse_general(rid: str) -> Resource:
    if not rid.startswith("/"):
        return Resource(id=rid)
    rid = rid.rstrip("/")
    parts = rid.split("/")[1:]
    subscription: str | None = None
    group: str | None = None
    rtype: str | None = None
    name: str | None = None
    i = 0
    n = len(parts)
    if n >= 2 and parts[0] == "subscriptions":
        subscription = parts[1]
        rtype, name = "microsoft.resources/subscriptions", subscription
        i = 2
    if i + 1 < n and parts[i] == "resourcegroups":
        group = parts[i + 1]
        rtype, name = "microsoft.resources/resourcegroups", group
        i += 2
    # The last "providers/<namespace>" pair wins; after it, segments alternate type/name.
    last = -1
    for j in range(i, n - 1):
        if parts[j] == "providers":
            last = j
    if last >= 0:
        namespace = parts[last + 1]
        rest = parts[last + 2 :]
        types = rest[0::2]
        names = rest[1::2]
        if types:
            rtype = namespace + "/" + "/".join(types)
            name = "/".join(names) if names else None
        else:
            rtype, name = namespace, None
    return Resource(id=rid, type=rtype, name=name, subscription=subscription, group=group)
