"""The remediator contract: ``check → plan → apply (step by step) → verify``, and ``rollback`` where possible.

A remediator knows *how* to change one kind of target (a key, a node, a container); it never decides
*whether* to. Everything that makes remediation safe — maturity gate, dry-run, approvals, blast-radius caps,
rate limits, idempotency, self-protection and the audit trail — lives in the core (:mod:`vigil.response`) and
applies to every remediator alike. What the core needs from a remediator, and why:

* ``check`` reads the live state of the target. It is called before planning and again on every resume, so
  a target already in the desired state is a no-op success and a resumed action never mutates twice.
* ``plan`` has no side effects and returns data: the steps, and the *previous state* that a rollback restores
  (recorded in the action before anything changes). Its :meth:`Plan.digest` is what an approval binds to:
  approve one plan, and a different plan needs a new approval.
* ``apply_step(i)`` performs step ``i`` and must be idempotent on its own: it re-reads what it needs and
  does nothing when its effect is already there, because a crash between the mutation and the persisted
  progress makes the executor run the same step again.
* ``verify`` re-reads live state after the last step and says whether the desired state holds.
* ``rollback`` restores ``plan.before`` (only when ``reversible``).

Remediators act through the platform interfaces (:mod:`vigil.platform`), as principal ``ctx.principal``, so
the local platform and the Azure adapters run the same code. Parameters are a pydantic model with extra keys
forbidden: a typo in a rule's ``params`` is an error at load time, not a surprise at 3 a.m.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Self

import orjson
from pydantic import BaseModel, ConfigDict

from vigil.errors import VigilError
from vigil.platform.compute import Compute
from vigil.platform.keyvault import KeyVault
from vigil.platform.storage import Storage
from vigil.registry import Registry


class RemediationError(VigilError):
    """A remediation cannot proceed (bad target, refused by the platform, verification failed)."""


class NotReversibleError(RemediationError):
    """``rollback`` of a remediator that has none (a rotated key is not un-rotated)."""


class NoParams(BaseModel):
    """Parameters of a remediator that takes none."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True)
class Protected:
    """Vigil's own resources, which no remediation may touch (self-protection, DESIGN §5)."""

    keys: frozenset[str] = frozenset()
    containers: frozenset[str] = frozenset()
    nodes: frozenset[str] = frozenset()
    #: Azure storage accounts (the one holding Vigil's checkpoints): a name, ``<group>/<name>`` or an ARM id
    storage_accounts: frozenset[str] = frozenset()
    #: Azure key vaults (one holding Vigil's own keys): a name, ``<group>/<name>`` or an ARM id
    vaults: frozenset[str] = frozenset()

    def covers(self, target_kind: str, target: str) -> bool:
        """Whether ``target`` (a ``key``, ``container``, ``node``, ``storage_account`` or ``vault``) is
        Vigil's own.

        Storage accounts and vaults compare by resource name, case-insensitively, whichever form the target
        and the entry take: Azure account and vault names are globally unique and case-insensitive, and a
        rule's target is usually the ARM id from ``resource.id`` while an operator writes the bare name."""
        segment = {"storage_account": "storageaccounts", "vault": "vaults"}.get(target_kind)
        if segment is not None:
            entries = self.storage_accounts if target_kind == "storage_account" else self.vaults
            names = {n for n in (resource_name(e, segment) for e in entries) if n}
            return resource_name(target, segment) in names
        guarded = {"key": self.keys, "container": self.containers, "node": self.nodes}.get(
            target_kind, frozenset()
        )
        return target in guarded


def resource_name(target: str, segment: str) -> str:
    """The resource named by ``name``, ``<group>/<name>`` or an ARM id (of the resource or of one of its
    sub-resources) whose type segment is ``segment`` (lower case: ``storageaccounts``, ``vaults``), lower
    case; ``""`` for an empty target."""
    parts = [p for p in target.strip().split("/") if p]
    for i, part in enumerate(parts[:-1]):
        if part.lower() == segment:
            return parts[i + 1].lower()
    return parts[-1].lower() if parts else ""


class StorageLockProvider(Protocol):
    """Lockdown of a cloud storage account (:class:`vigil.platform.azure.storage_lock.AzureStorageLock`),
    as the ``lock_storage_account`` remediator drives it. A protocol, so this module (and a deployment
    without the Azure extra) never imports the Azure SDK."""

    async def check(self, target: str) -> dict[str, Any]: ...

    def plan_steps(self, state: dict[str, Any]) -> list[str]: ...

    async def apply_step(self, target: str, step: str, before: dict[str, Any]) -> dict[str, Any]: ...

    async def rollback(self, target: str, before: dict[str, Any]) -> dict[str, Any]: ...


class VaultState(Protocol):
    """A vault lockdown's record of a vault (:class:`vigil.platform.azure.keyvault_lockdown.VaultSnapshot`):
    what a rollback restores, and JSON for ``plan.before``."""

    @property
    def vault_id(self) -> str: ...

    def to_json(self) -> dict[str, Any]: ...

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self: ...


class VaultLockProvider(Protocol):
    """Lockdown of one Azure key vault (:class:`vigil.platform.azure.keyvault_lockdown.AzureVaultLockdown`,
    bound to its vault when built), as the ``lockdown_vault`` remediator drives it. A protocol, so this
    module never imports the Azure SDK. ``restore`` takes a snapshot of the provider's own type, which this
    module cannot name: the remediator makes one with ``type(await snapshot()).from_json(...)``."""

    async def snapshot(self) -> VaultState: ...

    async def lock_network(self, *, bypass: str = ..., ip_rules: Sequence[str] = ...) -> bool: ...

    async def remove_access_policy(self, object_id: str) -> dict[str, Any] | None: ...

    async def restore(
        self, snapshot: Any, *, object_ids: Sequence[str] = ..., network: bool = ...
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Context:
    """What a remediator acts through: the platform, as ``principal``."""

    vault: KeyVault
    storage: Storage
    compute: Compute
    principal: str = "vigil"
    protected: Protected = field(default_factory=Protected)
    #: the Azure storage-account lockdown, when Vigil is deployed with ARM access (else None)
    storage_lock: StorageLockProvider | None = None
    #: the Azure key vault lockdown of the configured vault, when Vigil is deployed with ARM access
    vault_lock: VaultLockProvider | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One mutation: ``name`` (stable, e.g. ``suspend_key_access``), what it does in words, and its data."""

    name: str
    description: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    """What a remediation will do to one target; pure data, stored with the action before anything runs.

    ``noop`` is true when ``check`` found the target already in the desired state (no steps). ``before`` is
    the recorded previous state, for rollback and for the incident timeline.
    """

    remediation: str
    target: str
    params: dict[str, Any]
    steps: tuple[Step, ...]
    before: dict[str, Any] = field(default_factory=dict)
    noop: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "remediation": self.remediation,
            "target": self.target,
            "params": self.params,
            "steps": [{"name": s.name, "description": s.description, "data": s.data} for s in self.steps],
            "before": self.before,
            "noop": self.noop,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        steps = tuple(Step(s["name"], s["description"], dict(s.get("data", {}))) for s in data["steps"])
        before = dict(data.get("before", {}))
        noop = bool(data.get("noop", False))
        return cls(data["remediation"], data["target"], dict(data["params"]), steps, before, noop)

    def digest(self) -> str:
        """SHA-256 of the canonical plan: what an approval binds to."""
        return hashlib.sha256(orjson.dumps(self.to_json(), option=orjson.OPT_SORT_KEYS)).hexdigest()


class Remediator(ABC):
    """One kind of remediation. Subclasses set the class attributes and implement the methods."""

    #: registry name, as rules write it (``remediate: rotate_key``)
    name: ClassVar[str]
    #: one line for ``vigil actions`` and the docs
    summary: ClassVar[str]
    #: the parameter model (extra keys forbidden)
    Params: ClassVar[type[BaseModel]] = NoParams
    #: platform permissions the acting principal needs, as ``area:operation`` (``keys:rotate``; an Azure
    #: remediator names its RBAC actions as ``azure:<action>``)
    permissions: ClassVar[tuple[str, ...]] = ()
    #: whether :meth:`rollback` exists
    reversible: ClassVar[bool] = False
    #: what a target is: ``key``, ``node``, ``container``, ``storage_account`` or ``vault`` (the fleet for
    #: blast-radius percentages)
    target_kind: ClassVar[str]

    def refuse_protected(self, ctx: Context, target: str) -> None:
        """RemediationError ``protected: ...`` when ``target`` is one of Vigil's own resources (checked in
        ``check`` and again before every step, so a stored plan cannot act on a newly protected target)."""
        if ctx.protected.covers(self.target_kind, target):
            raise RemediationError(
                f"protected: {self.name} refuses to touch Vigil's own {self.target_kind} {target!r}"
            )

    def params(self, raw: dict[str, Any]) -> BaseModel:
        """The validated parameters (pydantic ValidationError on a bad or unknown key)."""
        return self.Params.model_validate(raw)

    @abstractmethod
    async def fleet(self, ctx: Context) -> list[str]:
        """Every target of this kind on the platform (the denominator of a blast-radius percentage)."""

    @abstractmethod
    async def check(self, ctx: Context, target: str, params: BaseModel) -> dict[str, Any]:
        """The target's live state, as JSON-ready data (RemediationError when the target does not exist)."""

    @abstractmethod
    def plan(self, target: str, params: BaseModel, state: dict[str, Any]) -> Plan:
        """The steps that take ``state`` to the desired state; no steps (``noop``) when it is there."""

    @abstractmethod
    async def apply_step(self, ctx: Context, plan: Plan, index: int) -> dict[str, Any]:
        """Perform ``plan.steps[index]``, idempotently; returns what it did (JSON-ready, for the audit)."""

    @abstractmethod
    async def verify(self, ctx: Context, plan: Plan) -> str | None:
        """None when the desired state holds now, else what is wrong."""

    async def rollback(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        """Restore ``plan.before``; returns what it did. Only when :attr:`reversible`."""
        raise NotReversibleError(f"{self.name} cannot be rolled back")


#: every remediator, by name (entry-point group ``vigil.remediators`` for third-party ones)
remediators: Registry[type[Remediator]] = Registry("vigil.remediators")

for _name in (
    "rotate_key",
    "quarantine_vm",
    "lock_storage",
    "revoke_release",
    "lock_storage_account",
    "lockdown_vault",
):
    remediators.add(_name, f"vigil.remediators.{_name}:{''.join(p.title() for p in _name.split('_'))}")
