"""Recording an action's progress, fail closed: the audit record first, the timeline note when it fails.

The executor (``executor.py``) writes an audit record before every step and outcome, and must not take the
step when that record cannot be written; :class:`Recorder` is that rule in one place, with the note on the
action's timeline that says why a step did not run (so an operator sees it without reading logs).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from typing import Any, Final, Protocol

from vigil.audit.record import Actor, AuditKind
from vigil.response.model import Action
from vigil.response.store import ActionNotFoundError, ActionStore
from vigil.store.sqlite import StoreError

log = logging.getLogger(__name__)

#: what every action record of the audit log carries besides its own details
_AUDIT_CONTEXT: Final = ("rule", "remediation", "finding_id", "incident_id", "decided_by", "plan_digest")


class AuditAppender(Protocol):
    """What the executor needs of the audit log (:class:`vigil.audit.log.AuditLog` is one)."""

    async def append(
        self, actor: Actor, kind: AuditKind, subject: str, details: Mapping[str, Any] | None = None, /
    ) -> object: ...


class Recorder:
    """The audit log and the action store, as the executor writes to them."""

    def __init__(self, store: ActionStore, audit: AuditAppender) -> None:
        self.store = store
        self.audit = audit

    def stored(self, action_id: str) -> Action:
        """The action as stored now (ActionNotFoundError if there is none)."""
        action = self.store.get(action_id)
        if action is None:
            raise ActionNotFoundError(f"no action {action_id}")
        return action

    async def record(
        self,
        action: Action,
        kind: AuditKind,
        what: str,
        details: Mapping[str, Any],
        *,
        actor: Actor | None = None,
    ) -> None:
        """Append the record; on any failure note it on the timeline and re-raise (the step must not run)."""
        record = action.to_json()
        base = {"action": action.id, **{key: record[key] for key in _AUDIT_CONTEXT}}
        try:
            await self.audit.append(
                actor or Actor.rule(action.rule), kind, action.target, {**base, **details}
            )
        except Exception as exc:
            self.blocked(action, what, exc)
            raise

    def blocked(self, action: Action, what: str, exc: Exception) -> None:
        """Note on the timeline that ``what`` did not run because it could not be recorded."""
        error = {"error": f"{type(exc).__name__}: {exc}"}
        with contextlib.suppress(StoreError, ActionNotFoundError):  # the store may share the full disk
            self.store.log(action.id, "vigil", f"{what} not run: not recorded", error)
        log.error("action %s: %s not run, the action stays %s: %s", action.id, what, action.state.value, exc)
