"""Secure Key Release policies: the Azure grammar, validated strictly, evaluated against verified claims.

A release policy says which attested nodes may receive an exportable key. The local vault speaks exactly
the grammar of Azure Key Vault / Managed HSM (``../shared/reference/azure.md`` §4.5), so one policy
document works on both platforms and an analyst reads one language::

    {"version": "1.0.0",
     "anyOf": [{"authority": "https://sharedweu.weu.attest.azure.net",
                "allOf": [{"claim": "x-ms-isolation-tee.x-ms-compliance-status",
                           "equals": "azure-compliant-cvm"},
                          {"anyOf": [{"claim": "x-ms-azurevm-vmid", "equals": "5E2A..."},
                                     {"claim": "x-ms-azurevm-vmid", "equals": "7C41..."}]}]}]}

Rules (each enforced by :func:`validate_policy`, which names the JSON path of the first problem):

* top level: ``version`` (``"1.0.0"``) and a non-empty ``anyOf`` of authorities, nothing else;
* an authority: ``authority`` (the attestation issuer URL) and exactly one of ``allOf`` / ``anyOf``;
* a condition: ``{"claim", "equals"}``, or a nested ``{"allOf": [...]}`` / ``{"anyOf": [...]}``;
* ``equals`` is a string, number or boolean (no null, array or object); arrays cannot be addressed;
* unknown keys are errors, because a misspelt ``"anyof"`` that were ignored would widen the policy.

Evaluation (:func:`evaluate`) is fail-closed: a missing claim fails its condition, a claim holding an
object fails, ``true`` never equals ``1``, and an authority applies only when it is the token's issuer
(trailing slashes ignored). The first failing claim is reported, because "claim X is Y, the policy
requires Z" is what an operator needs to fix a node or a policy. :func:`policy_hash` identifies a policy
in platform events without copying it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

POLICY_VERSION: Final = "1.0.0"
#: nesting deeper than this is refused: no real policy needs it, and evaluation recurses
MAX_DEPTH: Final = 16
_COMBINATORS: Final = ("allOf", "anyOf")


def validate_policy(doc: object) -> dict[str, Any]:
    """A validated deep copy of ``doc``; ValueError naming the JSON path and the problem otherwise."""
    top = _object(doc, "$", required=("version", "anyOf"), allowed=("version", "anyOf"))
    if top["version"] != POLICY_VERSION:
        raise ValueError(f"$.version: must be {POLICY_VERSION!r}, got {_show(top['version'])}")
    authorities = _list(top["anyOf"], "$.anyOf")
    for i, item in enumerate(authorities):
        path = f"$.anyOf[{i}]"
        authority = _object(item, path, required=("authority",), allowed=("authority", *_COMBINATORS))
        issuer = authority["authority"]
        if not isinstance(issuer, str) or not issuer.strip():
            raise ValueError(f"{path}.authority: must be a non-empty string (the attestation issuer URL)")
        _one_combinator(authority, path)
        for combinator in _COMBINATORS:
            if combinator in authority:
                _conditions(authority[combinator], f"{path}.{combinator}", depth=1)
    return copy.deepcopy(dict(top))


def evaluate(policy: Mapping[str, Any], issuer: str, claims: Mapping[str, Any]) -> str | None:
    """None when the verified ``claims`` from ``issuer`` satisfy ``policy``; otherwise why not.

    ``policy`` must have passed :func:`validate_policy`. The reason names the first failing claim of the
    first authority that is the token's issuer, or says that no authority is.
    """
    token_issuer = _normalise_issuer(issuer)
    first_reason: str | None = None
    for authority in policy["anyOf"]:
        if _normalise_issuer(authority["authority"]) != token_issuer:
            continue
        combinator = "allOf" if "allOf" in authority else "anyOf"
        reason = _check(combinator, authority[combinator], claims)
        if reason is None:
            return None
        first_reason = first_reason or reason
    return first_reason or f"token issuer {_show(issuer)} is not an authority of the release policy"


def policy_hash(policy: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON (sorted keys, no spaces): the same policy, the same hash."""
    text = json.dumps(policy, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def claim_value(claims: Mapping[str, Any], name: str) -> tuple[bool, Any]:
    """``(found, value)`` for a dotted claim name: each dot steps into a nested object."""
    node: Any = claims
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


# --- validation -------------------------------------------------------------------------------------------


def _object(value: object, path: str, *, required: Sequence[str], allowed: Sequence[str]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}: must be an object, got {_kind(value)}")
    for key in value:
        if key not in allowed:
            raise ValueError(f"{path}.{key}: unknown key (allowed: {', '.join(allowed)})")
    for key in required:
        if key not in value:
            raise ValueError(f"{path}: missing {key!r}")
    return dict(value)


def _list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{path}: must be an array, got {_kind(value)}")
    if not value:
        raise ValueError(f"{path}: must not be empty")
    return value


def _one_combinator(node: Mapping[str, Any], path: str) -> None:
    present = [c for c in _COMBINATORS if c in node]
    if len(present) != 1:
        raise ValueError(f"{path}: needs exactly one of 'allOf' or 'anyOf', got {len(present)}")


def _conditions(value: object, path: str, *, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError(f"{path}: nested deeper than {MAX_DEPTH} levels")
    for i, item in enumerate(_list(value, path)):
        here = f"{path}[{i}]"
        if isinstance(item, Mapping) and ("claim" in item or "equals" in item):
            condition = _object(item, here, required=("claim", "equals"), allowed=("claim", "equals"))
            _claim_name(condition["claim"], f"{here}.claim")
            _equals_value(condition["equals"], f"{here}.equals")
            continue
        group = _object(item, here, required=(), allowed=_COMBINATORS)
        if not group:
            raise ValueError(f"{here}: a condition needs 'claim' and 'equals', or one of 'allOf'/'anyOf'")
        _one_combinator(group, here)
        combinator = "allOf" if "allOf" in group else "anyOf"
        _conditions(group[combinator], f"{here}.{combinator}", depth=depth + 1)


def _claim_name(value: object, path: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{path}: must be a non-empty string")
    if any(not part for part in value.split(".")):
        raise ValueError(f"{path}: {value!r} has an empty segment (dot notation: 'a.b.c')")


def _equals_value(value: object, path: str) -> None:
    if isinstance(value, bool | str):
        return
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{path}: must be a finite number")
        return
    raise ValueError(f"{path}: must be a string, number or boolean, got {_kind(value)}")


# --- evaluation -------------------------------------------------------------------------------------------


def _check(combinator: str, conditions: Sequence[Mapping[str, Any]], claims: Mapping[str, Any]) -> str | None:
    reasons: list[str] = []
    for condition in conditions:
        if "claim" in condition:
            reason = _condition(condition["claim"], condition["equals"], claims)
        else:
            inner = "allOf" if "allOf" in condition else "anyOf"
            reason = _check(inner, condition[inner], claims)
        if combinator == "allOf" and reason is not None:
            return reason
        if combinator == "anyOf":
            if reason is None:
                return None
            reasons.append(reason)
    if combinator == "anyOf":
        if len(reasons) == 1:
            return reasons[0]
        return f"none of {len(reasons)} alternatives holds ({reasons[0]})"
    return None


def _condition(name: str, expected: Any, claims: Mapping[str, Any]) -> str | None:
    found, actual = claim_value(claims, name)
    if not found:
        return f"claim {name!r} is missing, the policy requires {_show(expected)}"
    if isinstance(actual, Mapping | list):
        return f"claim {name!r} is {_kind(actual)}, the policy requires {_show(expected)}"
    if not _same(actual, expected):
        return f"claim {name!r} is {_show(actual)}, the policy requires {_show(expected)}"
    return None


def _same(actual: Any, expected: Any) -> bool:
    """JSON equality: booleans equal only booleans, numbers compare by value, strings exactly."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(expected, int | float):
        return isinstance(actual, int | float) and actual == expected
    return isinstance(actual, str) and actual == expected


def _normalise_issuer(issuer: str) -> str:
    return issuer.rstrip("/")


def _kind(value: object) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return "null" if value is None else type(value).__name__


def _show(value: object, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, Mapping | list) else ""
    text = text or _kind(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
