"""PLACEHOLDER: being written; replace this whole module."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vigil.errors import NormalizeError
from vigil.events.model import Control, Event
from vigil.events.normalize import Normalizer


class KeyVaultAuditNormalizer(Normalizer):
    name = "keyvault-KeyVaultAuditNormalizer"
    kind = "azure.keyvault"
    summary = "placeholder"

    def detect(self, record: Mapping[str, Any]) -> bool:
        return False

    def normalize(self, record: dict[str, Any]) -> Event | Control:
        raise NormalizeError("not implemented yet")
