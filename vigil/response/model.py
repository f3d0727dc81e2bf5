"""An action: one remediation of one target, asked for by one rule's finding, and everything decided about it.

States (the only transitions the store allows; anything else is a conflict)::

    ┌──────────────► refused        (maturity, blast radius, self-protection, breaker: decided, never run)
    │
 decided ──► pending_approval ──► approved ──► running ──► succeeded | noop | failed | timed_out
    │             │  │                          ▲   │
    │             │  └──► rejected | expired    │   └──► (crash) running again on resume: check, then
    │             │                             │        continue at ``progress`` (steps done)
    ├──────────────────────────────────────────►┘ (approval auto)
    └──► dry_run                    (planned, audited and alerted; zero mutations)

    succeeded | noop | timed_out ──► rolled_back | rollback_failed   (reversible remediators, on request;
                                          rollback_failed ──► tried again on request, as a rollback)

The idempotency key is ``(rule, target, remediation, window)`` (and the parameters resolved from templates,
``templates.py``), window = the start of the
``response.idempotency_window`` the finding falls in: the store keeps one action per key, so a finding
re-detected after a crash, events delivered three times, or two findings racing for the same target give
one action and one mutation.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, field
from typing import Any

SEP = "\x1f"


class ActionState(enum.StrEnum):
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    NOOP = "noop"
    FAILED = "failed"
    #: a remediator call ran past ``response.step_timeout`` and was cancelled: whether the step took
    #: effect is unknown, so the action ends here (alerted, counted by the breaker) for a person to check
    TIMED_OUT = "timed_out"
    REJECTED = "rejected"
    EXPIRED = "expired"
    REFUSED = "refused"
    DRY_RUN = "dry_run"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


#: states an action never leaves (rollback aside)
FINAL = frozenset(
    {
        ActionState.SUCCEEDED,
        ActionState.NOOP,
        ActionState.FAILED,
        ActionState.TIMED_OUT,
        ActionState.REJECTED,
        ActionState.EXPIRED,
        ActionState.REFUSED,
        ActionState.DRY_RUN,
        ActionState.ROLLED_BACK,
        ActionState.ROLLBACK_FAILED,
    }
)


def idempotency_key(rule: str, target: str, remediation: str, window_start_ms: int, binding: str = "") -> str:
    """The action's identity: one per rule, target, remediation and idempotency window, and per set of
    parameters resolved from templates (``binding``; empty when there are none, and then not in the text,
    so keys of fixed-parameter actions are as they always were)."""
    text = SEP.join((rule, target, remediation, str(window_start_ms), *((binding,) if binding else ())))
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Action:
    """One action as stored. ``plan`` is :meth:`vigil.remediators.base.Plan.to_json` once planned;
    ``progress`` the number of plan steps applied; ``result`` what the last stage returned."""

    id: str
    idem_key: str
    rule: str
    rule_author: str
    finding_id: str
    incident_id: str | None
    remediation: str
    target: str
    params: dict[str, Any]
    approval: str  # "auto" | "required"
    dry_run: bool
    state: ActionState
    created: float
    updated: float
    plan: dict[str, Any] | None = None
    plan_digest: str | None = None
    progress: int = 0
    result: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    decided_by: str | None = None
    expires: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "idem_key": self.idem_key,
            "rule": self.rule,
            "rule_author": self.rule_author,
            "finding_id": self.finding_id,
            "incident_id": self.incident_id,
            "remediation": self.remediation,
            "target": self.target,
            "params": self.params,
            "approval": self.approval,
            "dry_run": self.dry_run,
            "state": self.state.value,
            "created": self.created,
            "updated": self.updated,
            "plan": self.plan,
            "plan_digest": self.plan_digest,
            "progress": self.progress,
            "result": self.result,
            "reason": self.reason,
            "decided_by": self.decided_by,
            "expires": self.expires,
        }
