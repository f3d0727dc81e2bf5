"""Remediation templates: a rule action's target and string parameters bound to the triggering event."""

from __future__ import annotations

from tests.detectors.stateful_helpers import ev
from vigil.response.model import idempotency_key
from vigil.response.templates import bind, is_template
from vigil.rules.model import RemediateAction

EVENT = ev("e1", 0, node="n1", actor_id="0f9e8d7c", ip="198.51.100.7", resource="kv-1", raw={"n": 3})


def test_fixed_parameters_bind_to_nothing() -> None:
    action = RemediateAction(
        "lockdown_vault", "{{ resource.id }}", params={"bypass": "None", "ip_rules": ["10.0.0.0/8"]}
    )
    bound = bind(action, EVENT)
    assert (bound.target, bound.params, bound.binding, bound.problem) == ("kv-1", None, "", "")


def test_templated_parameters_resolve_in_strings_and_lists_and_make_a_sorted_binding() -> None:
    action = RemediateAction(
        "lockdown_vault",
        "{{ resource.id }}",
        params={
            "object_id": "{{ actor.id }}",
            "ip_rules": ["{{ actor.ip }}/32", "10.0.0.0/8"],
            "bypass": "None",
        },
    )
    bound = bind(action, EVENT)
    assert bound.params == {
        "object_id": "0f9e8d7c",
        "ip_rules": ["198.51.100.7/32", "10.0.0.0/8"],
        "bypass": "None",
    }
    assert bound.binding == "ip_rules=198.51.100.7/32,10.0.0.0/8\x1fobject_id=0f9e8d7c"
    assert action.params["object_id"] == "{{ actor.id }}"  # the rule's action is left as it was


def test_a_parameter_that_does_not_resolve_is_the_problem_and_the_target_stays_resolved() -> None:
    action = RemediateAction("quarantine_vm", "{{ node.id }}", params={"reason": "count {{ raw.missing }}"})
    bound = bind(action, EVENT)
    assert bound.target == "n1" and bound.params is None
    assert bound.problem == (
        "params.reason template 'count {{ raw.missing }}' did not resolve: raw.missing is missing from event 'e1'"
    )
    assert bind(action, None, "gone").problem.endswith("event 'gone' not found")


def test_binding_joins_the_idempotency_key_only_when_there_is_one() -> None:
    assert idempotency_key("r", "t", "x", 0, "") == idempotency_key("r", "t", "x", 0)
    assert idempotency_key("r", "t", "x", 0, "a=1") != idempotency_key("r", "t", "x", 0, "a=2")
    assert idempotency_key("r", "t", "x", 0, "a=1") != idempotency_key("r", "t", "x", 0)


def test_is_template() -> None:
    assert is_template("{{ a.b }}") and is_template(["x", "y{{a}}"])
    assert (
        not is_template("plain")
        and not is_template(["plain"])
        and not is_template(3)
        and not is_template({"a": "{{ b }}"})
    )
