from __future__ import annotations

import pytest

from vigil.errors import RegistryError
from vigil.events.normalize import Normalizer, normalizers
from vigil.registry import Registry


def test_register_get_and_lazy_reference() -> None:
    reg: Registry[object] = Registry("vigil.test-only")

    @reg.register("answer")
    class Answer:
        pass

    reg.add("lazy", "vigil.errors:VigilError")
    assert reg.get("answer") is Answer
    from vigil.errors import VigilError

    assert reg.get("lazy") is VigilError
    assert reg.names() == ["answer", "lazy"]
    assert "answer" in reg and "missing" not in reg


def test_errors_name_the_problem() -> None:
    reg: Registry[object] = Registry("vigil.test-only")
    reg.add("broken", "vigil.nope:Thing")
    with pytest.raises(RegistryError, match="does not load"):
        reg.get("broken")
    with pytest.raises(RegistryError, match="unknown name 'x'"):
        reg.get("x")
    reg.add("a", "m:A")
    with pytest.raises(RegistryError, match="already registered"):
        reg.add("a", "m:B")


def test_every_builtin_normalizer_loads_and_is_complete() -> None:
    for name, cls in normalizers.items():
        assert issubclass(cls, Normalizer)
        assert cls.name == name, f"{cls.__name__}.name is {cls.name!r}, registered as {name!r}"
        assert cls.summary and cls.kind and cls.__doc__
        assert cls.__module__.startswith("vigil.events.normalizers.")
