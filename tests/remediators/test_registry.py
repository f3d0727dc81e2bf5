"""Every remediation the rule language accepts resolves to a remediator that keeps the contract."""

from __future__ import annotations

import inspect

import pytest
from pydantic import BaseModel

from vigil.remediators.base import Remediator, remediators
from vigil.rules.schema import REMEDIATIONS


@pytest.mark.parametrize("name", sorted(REMEDIATIONS))
def test_every_rule_remediation_has_a_remediator(name: str) -> None:
    cls = remediators.get(name)
    assert inspect.isclass(cls) and issubclass(cls, Remediator) and not inspect.isabstract(cls)
    assert cls.name == name
    assert cls.summary and cls.__doc__ and inspect.getmodule(cls).__doc__
    assert cls.target_kind in {"key", "node", "container", "storage_account", "vault"}
    assert cls.permissions and all(":" in p for p in cls.permissions)
    assert issubclass(cls.Params, BaseModel) and cls.Params.model_config.get("extra") == "forbid"
    cls.Params.model_validate({})  # every parameter has a default: a rule may name the remediation alone
    assert cls.reversible == (cls.rollback is not Remediator.rollback)
