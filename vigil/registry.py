"""One registry pattern for every plug-in family (normalizers now; remediators, sinks, detectors later).

A :class:`Registry` maps a stable name to either an object or a lazy ``"module:attribute"`` reference, which
is imported on first use. Third-party packages add plug-ins through the entry-point group named by the
registry (``vigil.normalizers`` ...), so nothing outside Vigil has to edit a central file.

Example::

    >>> reg: Registry[int] = Registry("vigil.example")
    >>> @reg.register("answer")
    ... class Answer: ...
    >>> reg.get("answer") is Answer
    True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from vigil.errors import RegistryError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named plug-ins of one family, with lazy references and entry-point discovery."""

    def __init__(self, group: str) -> None:
        self.group = group
        self._items: dict[str, T | str] = {}
        self._entry_points_loaded = False

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator: register the decorated object under ``name`` (a duplicate name is an error)."""

        def deco(obj: Any) -> Any:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T | str) -> None:
        """Register ``obj`` (or a lazy ``"module:attr"`` string) under ``name``."""
        existing = self._items.get(name)
        if existing is not None and existing is not obj:
            raise RegistryError(f"{self.group}: {name!r} is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        """Return the plug-in called ``name``, importing it on first use."""
        self._load_entry_points()
        try:
            item = self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise RegistryError(f"{self.group}: unknown name {name!r} (known: {known})") from None
        if isinstance(item, str):
            item = self._import(name, item)
            self._items[name] = item
        return item

    def names(self) -> list[str]:
        """All registered names, sorted."""
        self._load_entry_points()
        return sorted(self._items)

    def items(self) -> Iterator[tuple[str, T]]:
        """Every (name, plug-in) pair, loading lazy references."""
        for name in self.names():
            yield name, self.get(name)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return name in self._items

    def _import(self, name: str, ref: str) -> T:
        module_name, _, attr = ref.partition(":")
        try:
            obj: T = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise RegistryError(f"{self.group}: {name!r} -> {ref!r} does not load: {exc}") from exc
        return obj

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.group):
            self._items.setdefault(ep.name, ep.value)
