"""Secure Key Release policies: the Azure grammar (azure.md §4.5), its evaluation, its hash."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from vigil.platform.local.policy import evaluate, policy_hash, validate_policy

MAA = "https://sharedweu.weu.attest.azure.net"
VMID = "5E2A9C14-7B3D-4F60-A1E2-9C8B7D6F5A43"

#: the CVM policy of azure.md §4.5, verbatim
CVM_POLICY: dict[str, Any] = {
    "version": "1.0.0",
    "anyOf": [
        {
            "authority": MAA,
            "allOf": [
                {"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm"},
                {"claim": "x-ms-isolation-tee.x-ms-compliance-status", "equals": "azure-compliant-cvm"},
                {"claim": "x-ms-azurevm-vmid", "equals": VMID},
            ],
        }
    ],
}

#: the claims of the guest-attestation token of azure.md §4.3 that the policy reads
CVM_CLAIMS: dict[str, Any] = {
    "iss": MAA,
    "x-ms-attestation-type": "azurevm",
    "x-ms-azurevm-vmid": VMID,
    "x-ms-azurevm-osversion-major": 24,
    "x-ms-isolation-tee": {
        "x-ms-attestation-type": "sevsnpvm",
        "x-ms-compliance-status": "azure-compliant-cvm",
        "x-ms-sevsnpvm-is-debuggable": False,
        "x-ms-sevsnpvm-vmpl": 0,
        "x-ms-sevsnpvm-guestsvn": 2,
        "x-ms-sevsnpvm-smt-allowed": True,
    },
}


def policy(*conditions: dict[str, Any], combinator: str = "allOf", authority: str = MAA) -> dict[str, Any]:
    return {"version": "1.0.0", "anyOf": [{"authority": authority, combinator: list(conditions)}]}


def test_the_azure_cvm_policy_validates_and_is_copied() -> None:
    checked = validate_policy(CVM_POLICY)
    assert checked == CVM_POLICY
    checked["anyOf"][0]["allOf"].clear()
    assert len(CVM_POLICY["anyOf"][0]["allOf"]) == 3
    assert evaluate(validate_policy(CVM_POLICY), MAA, CVM_CLAIMS) is None


@pytest.mark.parametrize(
    ("doc", "where"),
    [
        ([], "$: must be an object"),
        ({"anyOf": []}, "$: missing 'version'"),
        (
            {"version": "1.0", "anyOf": [{"authority": MAA, "allOf": [{"claim": "a", "equals": 1}]}]},
            "$.version",
        ),
        ({"version": "1.0.0", "anyOf": [], "extra": 1}, "$.extra: unknown key"),
        ({"version": "1.0.0", "anyOf": []}, "$.anyOf: must not be empty"),
        ({"version": "1.0.0", "anyOf": {}}, "$.anyOf: must be an array"),
        (
            {"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "a", "equals": 1}]}]},
            "$.anyOf[0]: missing 'authority'",
        ),
        (
            {"version": "1.0.0", "anyOf": [{"authority": "", "allOf": [{"claim": "a", "equals": 1}]}]},
            "$.anyOf[0].authority",
        ),
        (
            {"version": "1.0.0", "anyOf": [{"authority": MAA}]},
            "$.anyOf[0]: needs exactly one of 'allOf' or 'anyOf', got 0",
        ),
        (
            {
                "version": "1.0.0",
                "anyOf": [
                    {
                        "authority": MAA,
                        "allOf": [{"claim": "a", "equals": 1}],
                        "anyOf": [{"claim": "a", "equals": 1}],
                    }
                ],
            },
            "$.anyOf[0]: needs exactly one of 'allOf' or 'anyOf', got 2",
        ),
        (
            policy({"claim": "a", "equals": {"x": 1}}),
            "$.anyOf[0].allOf[0].equals: must be a string, number or boolean, got an object",
        ),
        (
            policy({"claim": "a", "equals": None}),
            "$.anyOf[0].allOf[0].equals: must be a string, number or boolean, got null",
        ),
        (
            policy({"claim": "a", "equals": [1]}),
            "$.anyOf[0].allOf[0].equals: must be a string, number or boolean, got an array",
        ),
        (
            policy({"claim": "a", "equals": float("nan")}),
            "$.anyOf[0].allOf[0].equals: must be a finite number",
        ),
        (policy({"claim": "a"}), "$.anyOf[0].allOf[0]: missing 'equals'"),
        (policy({"claim": "a..b", "equals": 1}), "$.anyOf[0].allOf[0].claim: 'a..b' has an empty segment"),
        (policy({"claim": 7, "equals": 1}), "$.anyOf[0].allOf[0].claim: must be a non-empty string"),
        (policy({"claim": "a", "equals": 1, "matches": "x"}), "$.anyOf[0].allOf[0].matches: unknown key"),
        (policy({"claim": "a", "equals": 1}, {"anyof": []}), "$.anyOf[0].allOf[1].anyof: unknown key"),
        (
            policy({"anyOf": [{"claim": "a", "equals": 1}, {"equals": 2}]}),
            "$.anyOf[0].allOf[0].anyOf[1]: missing 'claim'",
        ),
        (policy({}), "$.anyOf[0].allOf[0]: a condition needs 'claim' and 'equals'"),
        (policy("x-ms-vmid"), "$.anyOf[0].allOf[0]: must be an object, got str"),
        (policy(), "$.anyOf[0].allOf: must not be empty"),
    ],
)
def test_invalid_policies_name_the_json_path(doc: Any, where: str) -> None:
    with pytest.raises(ValueError) as caught:
        validate_policy(doc)
    assert str(caught.value).startswith(where), str(caught.value)


def test_nesting_is_bounded() -> None:
    condition: dict[str, Any] = {"claim": "a", "equals": 1}
    for _ in range(20):
        condition = {"allOf": [condition]}
    with pytest.raises(ValueError, match="nested deeper than 16 levels"):
        validate_policy(policy(condition))


def test_a_missing_claim_fails_and_is_named() -> None:
    claims = copy.deepcopy(CVM_CLAIMS)
    del claims["x-ms-isolation-tee"]["x-ms-compliance-status"]
    reason = evaluate(CVM_POLICY, MAA, claims)
    assert reason == (
        "claim 'x-ms-isolation-tee.x-ms-compliance-status' is missing, the policy requires \"azure-compliant-cvm\""
    )


def test_the_first_failing_claim_is_reported_with_both_values() -> None:
    claims = copy.deepcopy(CVM_CLAIMS)
    claims["x-ms-isolation-tee"]["x-ms-compliance-status"] = "azure-compliant-uvm"
    claims["x-ms-azurevm-vmid"] = "other"
    reason = evaluate(CVM_POLICY, MAA, claims)
    assert reason is not None
    assert "'x-ms-isolation-tee.x-ms-compliance-status' is \"azure-compliant-uvm\"" in reason
    assert 'requires "azure-compliant-cvm"' in reason
    assert "vmid" not in reason


def test_types_are_compared_as_json() -> None:
    claims = {"flag": True, "one": 1, "text": "1", "float": 1.0, "obj": {"a": 1}, "list": [1]}
    assert evaluate(policy({"claim": "flag", "equals": True}), MAA, claims) is None
    assert evaluate(policy({"claim": "one", "equals": True}), MAA, claims) is not None
    assert evaluate(policy({"claim": "flag", "equals": 1}), MAA, claims) is not None
    assert evaluate(policy({"claim": "text", "equals": 1}), MAA, claims) is not None
    assert evaluate(policy({"claim": "one", "equals": "1"}), MAA, claims) is not None
    assert evaluate(policy({"claim": "float", "equals": 1}), MAA, claims) is None
    assert "is an object" in str(evaluate(policy({"claim": "obj", "equals": 1}), MAA, claims))
    assert "is an array" in str(evaluate(policy({"claim": "list", "equals": 1}), MAA, claims))
    # arrays cannot be addressed, and a path through a value is missing
    assert "missing" in str(evaluate(policy({"claim": "list.0", "equals": 1}), MAA, claims))
    assert "missing" in str(evaluate(policy({"claim": "text.x", "equals": 1}), MAA, claims))


def test_any_of_and_nested_groups() -> None:
    either = policy(
        {"claim": "x-ms-azurevm-vmid", "equals": "A"},
        {"claim": "x-ms-azurevm-vmid", "equals": VMID},
        combinator="anyOf",
    )
    assert evaluate(either, MAA, CVM_CLAIMS) is None
    neither = policy(
        {"claim": "x-ms-azurevm-vmid", "equals": "A"},
        {"claim": "x-ms-azurevm-vmid", "equals": "B"},
        combinator="anyOf",
    )
    assert str(evaluate(neither, MAA, CVM_CLAIMS)).startswith(
        "none of 2 alternatives holds (claim 'x-ms-azurevm-vmid'"
    )
    nested = policy(
        {"claim": "x-ms-isolation-tee.x-ms-sevsnpvm-is-debuggable", "equals": False},
        {
            "anyOf": [
                {"claim": "x-ms-azurevm-osversion-major", "equals": 22},
                {"allOf": [{"claim": "x-ms-azurevm-osversion-major", "equals": 24}]},
            ]
        },
    )
    assert evaluate(validate_policy(nested), MAA, CVM_CLAIMS) is None


def test_authority_must_be_the_token_issuer() -> None:
    assert evaluate(CVM_POLICY, MAA + "/", CVM_CLAIMS) is None  # trailing slash normalised
    assert (
        evaluate(policy({"claim": "x-ms-azurevm-vmid", "equals": VMID}, authority=MAA + "/"), MAA, CVM_CLAIMS)
        is None
    )
    reason = evaluate(CVM_POLICY, "https://evil.example", CVM_CLAIMS)
    assert reason == 'token issuer "https://evil.example" is not an authority of the release policy'


def test_a_second_authority_can_satisfy_the_policy() -> None:
    other = "https://sharedneu.neu.attest.azure.net"
    doc = {
        "version": "1.0.0",
        "anyOf": [
            {"authority": MAA, "allOf": [{"claim": "x-ms-azurevm-vmid", "equals": "nope"}]},
            {"authority": other, "allOf": [{"claim": "x-ms-azurevm-vmid", "equals": VMID}]},
            {"authority": MAA, "allOf": [{"claim": "x-ms-azurevm-vmid", "equals": VMID}]},
        ],
    }
    assert evaluate(validate_policy(doc), MAA, CVM_CLAIMS) is None
    assert evaluate(doc, other, CVM_CLAIMS) is None
    doc["anyOf"].pop()
    assert "'x-ms-azurevm-vmid' is" in str(evaluate(doc, MAA, CVM_CLAIMS))


def test_policy_hash_is_canonical() -> None:
    shuffled = {"anyOf": CVM_POLICY["anyOf"], "version": "1.0.0"}
    assert policy_hash(shuffled) == policy_hash(CVM_POLICY)
    assert len(policy_hash(CVM_POLICY)) == 64
    changed = copy.deepcopy(CVM_POLICY)
    changed["anyOf"][0]["allOf"][2]["equals"] = "other"
    assert policy_hash(changed) != policy_hash(CVM_POLICY)
