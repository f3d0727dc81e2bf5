"""The decision policy: pure functions of what was proposed, what happened recently and the settings.

No I/O and no clock of its own, so every rule of DESIGN §5 is unit-testable on its own and the engine
(:mod:`.engine`) is only plumbing around it. :func:`decide_batch` takes the proposals of *one* rule's *one*
remediate action gathered over the batch window, and decides each one, in this order of precedence
(the first that applies wins, and each refusal says why in one line):

1. **Pre-refused** (``Proposal.problem``): the target template did not resolve, the remediation is not
   registered, its parameters are invalid. Such a proposal is refused and counts for nothing else.
2. **Self-protection** (C13): a target among Vigil's own keys, containers or nodes is refused
   ``protected: ...``, whatever the mode. Protected targets still count towards the blast radius: a rule that
   reaches Vigil's own node is reaching far.
3. **Dry-run**, global (``response.dry_run``, the kill switch) or per action: planned, audited and alerted,
   never applied (C11). It comes before the caps and the maturity gate because it can do no harm, and an
   analyst trying a rule wants to see every plan; the reason says what would have stopped a real run.
4. **Blast radius** (C8): the distinct targets of the batch together with those this rule and remediation
   acted on in the idempotency window; more than ``max_targets``, or more than ``max_percent`` of the fleet
   of that target kind, refuses *every* proposal of the batch with one reason, so none is touched. The
   union with recent targets stops a rule from sneaking past the cap one batch at a time. An unknown
   (empty) fleet with a percentage cap refuses too: a cap that cannot be computed is not a cap.
5. **Maturity and approval** (C10): ``approval: auto`` acts unattended only for a ``stable`` rule; anything
   else waits for a person (``approval``).
6. Otherwise the action **runs**.

:class:`RateLimiter` (a token bucket per remediator) and :class:`CircuitBreaker` (closed → open after N
consecutive failures → half-open after the cool-down with a single trial) are state machines over an
injected clock: the engine asks them at run time, the tests drive them with a fake clock.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import ValidationError

from vigil.errors import RegistryError
from vigil.remediators.base import Protected, Remediator, remediators
from vigil.response.model import Action, ActionState, idempotency_key
from vigil.rules.model import RemediateAction
from vigil.sections import ResponseSettings

Outcome = Literal["run", "approval", "dry_run", "refused"]


#: which protected set guards which target kind
@dataclass(frozen=True, slots=True)
class Proposal:
    """One finding's request that ``action`` be applied to ``target`` (already resolved from its template).

    ``time`` is the finding's event time (epoch seconds): it picks the idempotency window, so the same
    finding re-processed after a crash maps to the same action. ``problem`` is a reason decided before the
    policy ran (unresolvable target, unknown remediation, bad parameters): such a proposal is refused.
    """

    rule: str
    rule_status: str
    rule_author: str
    action: RemediateAction
    finding_id: str
    incident_id: str | None
    target: str
    time: float
    problem: str = ""
    #: the action's parameters with their templates resolved (None: none is templated, ``action.params``
    #: apply); ``action`` itself stays the rule's, so proposals of one rule action still form one batch
    params: Mapping[str, object] | None = None
    #: the resolved templated parameters (``templates.Bound.binding``): part of the action's identity
    binding: str = ""

    @property
    def effective_params(self) -> Mapping[str, object]:
        """The parameters the action will run with."""
        return self.action.params if self.params is None else self.params


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy decided for one proposal, and why (empty for a plain ``run``)."""

    proposal: Proposal
    outcome: Outcome
    reason: str = ""


def same_action(a: Proposal, b: Proposal) -> bool:
    """Whether two proposals belong to one batch: the same rule and the same remediate action."""
    return a.rule == b.rule and a.action == b.action


def protection(
    settings: ResponseSettings, base: Protected, *, always_keys: frozenset[str] = frozenset()
) -> Protected:
    """``base`` (the context's) with the settings' protected names and ``always_keys`` (the audit log's
    own keys) added: what no remediation may touch, whoever configured what."""
    return Protected(
        keys=base.keys | frozenset(settings.protected_keys) | always_keys,
        containers=base.containers | frozenset(settings.protected_containers),
        nodes=base.nodes | frozenset(settings.protected_nodes),
        storage_accounts=base.storage_accounts | frozenset(settings.protected_storage_accounts),
        vaults=base.vaults | frozenset(settings.protected_vaults),
    )


def protected_reason(target: str, target_kind: str, protected: Protected) -> str | None:
    """``protected: ...`` when ``target`` is one of Vigil's own resources of that kind, else None."""
    if protected.covers(target_kind, target):
        return f"protected: {target_kind} {target} is one of Vigil's own resources"
    return None


def blast_radius(
    targets: set[str],
    action: RemediateAction,
    fleet_size: int,
    target_kind: str,
    default_max_targets: int | None = None,
) -> str | None:
    """Why ``targets`` (this batch and the recent ones) exceed the action's caps, or None when they don't.

    An action that sets neither cap gets ``default_max_targets`` (``response.max_targets``): a rule that
    matches everything must not reach the whole fleet because its author left the caps out (B5)."""
    count = len(targets)
    if action.max_targets is not None and count > action.max_targets:
        return f"blast radius: {count} targets > max_targets {action.max_targets}"
    uncapped = action.max_targets is None and action.max_percent is None
    if uncapped and default_max_targets is not None and count > default_max_targets:
        return (
            f"blast radius: {count} targets > response.max_targets {default_max_targets} "
            "(the rule sets no cap of its own)"
        )
    if action.max_percent is not None and count:
        if fleet_size <= 0:
            return f"blast radius: the fleet of {target_kind}s is empty or unknown; max_percent cannot hold"
        percent = 100.0 * count / fleet_size
        if percent > action.max_percent:
            return (
                f"blast radius: {count} of {fleet_size} {target_kind}s ({percent:.1f}%) "
                f"> max_percent {action.max_percent:g}"
            )
    return None


def decide_batch(
    proposals: Sequence[Proposal],
    *,
    fleet_size: int,
    recent_targets: set[str],
    settings: ResponseSettings,
    protected: Protected,
    target_kind: str,
) -> list[Decision]:
    """Decide every proposal of one rule's one remediate action (see the module docstring for the order).

    ``recent_targets`` are the targets this rule and remediation already have actions for in the current
    idempotency window; of ``settings`` only the global switch ``dry_run`` matters here.
    """
    if not proposals:
        return []
    action = proposals[0].action
    if any(not same_action(proposals[0], p) for p in proposals):
        raise ValueError("decide_batch takes the proposals of one rule and one remediate action")
    resolved = {p.target for p in proposals if not p.problem}
    too_far = blast_radius(resolved | recent_targets, action, fleet_size, target_kind, settings.max_targets)
    dry_run = settings.dry_run
    needs_person = action.approval != "auto" or proposals[0].rule_status != "stable"
    out: list[Decision] = []
    for p in proposals:
        guard = protected_reason(p.target, target_kind, protected) if not p.problem else None
        if p.problem:
            out.append(Decision(p, "refused", p.problem))
        elif guard is not None:
            out.append(Decision(p, "refused", guard))
        elif dry_run or action.dry_run:
            mode = "dry-run (global)" if dry_run else "dry-run (rule)"
            if too_far is not None:
                mode += f"; a real run would be refused: {too_far}"
            elif needs_person:
                mode += f"; a real run would wait: {_approval_reason(p)}"
            out.append(Decision(p, "dry_run", mode))
        elif too_far is not None:
            out.append(Decision(p, "refused", too_far))
        elif needs_person:
            out.append(Decision(p, "approval", _approval_reason(p)))
        else:
            out.append(Decision(p, "run"))
    return out


#: the state an action is created in, per outcome; a dry-run is created approved with ``dry_run`` set, so
#: a crash before its plan was stored leaves it to the executor's resume, which dry-runs it
INITIAL_STATE: Final[dict[str, ActionState]] = {
    "refused": ActionState.REFUSED,
    "approval": ActionState.PENDING_APPROVAL,
    "dry_run": ActionState.APPROVED,
    "run": ActionState.APPROVED,
}


def new_action(decision: Decision, *, now: float, window: float, ttl: float) -> Action:
    """The action a decision creates. Its id *is* its idempotency key: rule, target, remediation, the
    parameters that came from templates, if any, and the start of the ``window`` (seconds) the finding's
    time falls in, so the same finding maps to the same id
    however often it is re-processed. A pending approval expires ``ttl`` seconds after ``now``."""
    p = decision.proposal
    window_ms = max(1, int(window * 1000))
    start = int(p.time * 1000) // window_ms * window_ms
    key = idempotency_key(p.rule, p.target, p.action.remediation, start, p.binding)
    return Action(
        id=key,
        idem_key=key,
        rule=p.rule,
        rule_author=p.rule_author,
        finding_id=p.finding_id,
        incident_id=p.incident_id,
        remediation=p.action.remediation,
        target=p.target,
        params=dict(p.effective_params),
        approval=p.action.approval,
        dry_run=decision.outcome == "dry_run",
        state=INITIAL_STATE[decision.outcome],
        created=now,
        updated=now,
        reason=decision.reason,
        expires=now + ttl if decision.outcome == "approval" else None,
    )


def decision_record(decision: Decision, action: Action) -> dict[str, Any]:
    """The audit details of a decision (no parameters: they may name things the log should not hold)."""
    p = decision.proposal
    return {
        "stage": "decision",
        "outcome": decision.outcome,
        "reason": decision.reason,
        "action": action.id,
        "rule": p.rule,
        "remediation": p.action.remediation,
        "finding": p.finding_id,
        "incident": p.incident_id,
        "expires": action.expires,
    }


def _approval_reason(p: Proposal) -> str:
    if p.action.approval != "auto":
        return "approval required by the rule"
    return f"approval required: rule status is {p.rule_status}, only stable rules act unattended"


class RateLimiter:
    """A token bucket per remediator: ``per_minute`` actions a minute, bursts up to ``per_minute``.

    Pure over ``clock`` (seconds, monotonic in production): :meth:`acquire` takes a token when there is one,
    :meth:`wait` says how long until there will be.
    """

    def __init__(self, per_minute: int, *, clock: Callable[[], float]) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)

    def _tokens(self, name: str) -> float:
        now = self._clock()
        tokens, at = self._buckets.get(name, (self.capacity, now))
        tokens = min(self.capacity, tokens + max(0.0, now - at) * self.rate)
        self._buckets[name] = (tokens, now)
        return tokens

    def acquire(self, name: str) -> bool:
        """Take one token for ``name``; False (nothing taken) when the bucket is empty."""
        tokens = self._tokens(name)
        if tokens < 1.0:
            return False
        self._buckets[name] = (tokens - 1.0, self._buckets[name][1])
        return True

    def wait(self, name: str) -> float:
        """Seconds until :meth:`acquire` can succeed for ``name`` (0 when it can now)."""
        tokens = self._tokens(name)
        return 0.0 if tokens >= 1.0 else math.ceil((1.0 - tokens) / self.rate * 1000) / 1000


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(slots=True)
class _Breaker:
    state: BreakerState = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    trial: bool = False  # half-open: the single trial is out


class CircuitBreaker:
    """Per remediator: opens after ``failures`` consecutive failures, refuses for ``cooldown`` seconds,
    then lets exactly one trial through (half-open); the trial's success closes it, its failure re-opens
    it for another cool-down (C9). A success while closed resets the count."""

    def __init__(self, failures: int, cooldown: float, *, clock: Callable[[], float]) -> None:
        if failures < 1 or cooldown <= 0:
            raise ValueError("failures must be at least 1 and cooldown positive")
        self.failures = failures
        self.cooldown = cooldown
        self._clock = clock
        self._state: dict[str, _Breaker] = {}

    def state(self, name: str) -> BreakerState:
        b = self._state.get(name)
        if b is None:
            return BreakerState.CLOSED
        if b.state is BreakerState.OPEN and self._clock() - b.opened_at >= self.cooldown:
            b.state, b.trial = BreakerState.HALF_OPEN, False
        return b.state

    def allow(self, name: str) -> bool:
        """Whether an action of ``name`` may start now; in half-open state, True once (the trial)."""
        state = self.state(name)
        if state is BreakerState.CLOSED:
            return True
        b = self._state[name]
        if state is BreakerState.HALF_OPEN and not b.trial:
            b.trial = True
            return True
        return False

    def cancel(self, name: str) -> None:
        """The action :meth:`allow` let through never ran (it could not be audited): give the half-open
        trial back instead of holding the breaker half-open forever."""
        b = self._state.get(name)
        if b is not None and b.state is BreakerState.HALF_OPEN:
            b.trial = False

    def success(self, name: str) -> None:
        self._state.pop(name, None)

    def failure(self, name: str) -> None:
        b = self._state.setdefault(name, _Breaker())
        if self.state(name) is BreakerState.HALF_OPEN:
            b.state, b.opened_at, b.trial = BreakerState.OPEN, self._clock(), False
            return
        b.failures += 1
        if b.state is BreakerState.CLOSED and b.failures >= self.failures:
            b.state, b.opened_at = BreakerState.OPEN, self._clock()


def remediator_for(p: Proposal) -> tuple[Remediator | None, str, str]:
    """(remediator, its target kind, "") or (None, "", why every proposal of the group is refused: the
    remediation is unknown). Parameters are checked per proposal (:func:`params_problem`): templated ones
    differ from one proposal to the next."""
    name = p.action.remediation
    try:
        remediator = remediators.get(name)()
    except RegistryError as exc:
        return None, "", f"unknown remediation {name!r}: {exc}"
    return remediator, remediator.target_kind, ""


def params_problem(remediator: Remediator, p: Proposal) -> str:
    """Why ``remediator`` rejects ``p``'s parameters (as they will run), or "" when it takes them."""
    try:
        remediator.params(dict(p.effective_params))
    except ValidationError as exc:
        fields = ", ".join(".".join(str(x) for x in e["loc"]) for e in exc.errors())
        return f"invalid params for {p.action.remediation}: {fields}"
    return ""
