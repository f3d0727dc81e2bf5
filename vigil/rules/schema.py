"""The YAML documents of the rule language (DESIGN §4), as strict pydantic models.

A rule file holds one or more documents separated by ``---``; each is one of four kinds, told apart by its
top-level keys:

* a **rule** (it has ``id`` or ``match``): :class:`RuleDoc`;
* a **library** (``lists:`` and/or ``macros:``): :class:`LibraryDoc`, shared by every file loaded together;
* an **overlay** (``overlay:``): :class:`OverlayDoc`, accepted only from files given as overlays
  (``--overlay FILE``), where it appends to or replaces a list explicitly.

The models forbid unknown keys and coerce nothing (a quoted ``"70"`` is not a score). They check what can be
checked in one document; what needs the whole set (duplicate ids, undefined lists, expressions, test events)
is the loader's job. The stateful forms (``threshold``, ``sequence``, ``flatline``) live in
``schema_forms.py``.

Example (the scaffold of ``vigil rules new`` validates)::

    >>> from vigil.rules.schema import RuleDoc
    >>> doc = RuleDoc.model_validate({"id": "kv.read", "title": "t", "severity": "high", "match": "true"})
    >>> doc.effective_score, doc.status
    (70, 'experimental')
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from vigil.events.model import KINDS
from vigil.rules.model import SEVERITY_SCORE
from vigil.rules.schema_forms import Duration, FlatlineSpec, SequenceSpec, ThresholdSpec, parse_duration

Sink = Literal["pagerduty", "teams", "slack", "webhook", "console"]
Remediation = Literal[
    "rotate_key", "quarantine_vm", "lock_storage", "lock_storage_account", "lockdown_vault", "revoke_release"
]
#: alert sinks and remediations known to this release (anything else is E132)
SINKS: Final = frozenset(get_args(Sink))
REMEDIATIONS: Final = frozenset(get_args(Remediation))

RULE_ID_PATTERN: Final = r"^[a-z0-9]+([._-][a-z0-9]+)+$"
#: names of lists and macros: identifiers, because expressions spell them ``lists.NAME`` and ``NAME``
NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]*$"
#: ``attack.t1552``, ``attack.t1552.001``, ``attack.credential_access``, ``attack.g0016``, ``attack.s0002``
ATTACK_TAG: Final = re.compile(r"^attack\.(t\d{4}(\.\d{3})?|[gs]\d{4}|[a-z]+(_[a-z]+)*)$")
TAG_PATTERN: Final = r"^[a-z0-9][a-z0-9_.-]*$"
#: the default remediation target: the resource the event is about
DEFAULT_TARGET: Final = "{{ resource.id }}"


def _known_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}")
    return kind


def _attack_tag(tag: str) -> str:
    if tag.startswith("attack.") and not ATTACK_TAG.match(tag):
        raise ValueError(f"malformed ATT&CK tag {tag!r}: use attack.tNNNN[.NNN] or attack.<tactic_name>")
    return tag


RuleId = Annotated[str, StringConstraints(pattern=RULE_ID_PATTERN)]
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
TagStr = Annotated[str, StringConstraints(pattern=TAG_PATTERN), AfterValidator(_attack_tag)]
Kind = Annotated[str, AfterValidator(_known_kind)]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]


def _as_list(value: Any) -> Any:
    """One value or a list of them: a single string becomes a one-item list."""
    return [value] if isinstance(value, str) else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# -- actions -----------------------------------------------------------------------------------------------


class AlertSpec(_Strict):
    """``- alert: [pagerduty, teams]`` (or one sink: ``- alert: console``)."""

    alert: Annotated[list[Sink], Field(min_length=1)]

    _one_or_many = field_validator("alert", mode="before")(_as_list)


class RemediateSpec(_Strict):
    """``- remediate: rotate_key`` with ``target`` (a ``{{ field }}`` template), ``approval``, ``params``."""

    remediate: Remediation
    target: NonEmpty = DEFAULT_TARGET
    approval: Literal["required", "auto"] = "required"
    params: dict[str, Any] = Field(default_factory=dict)
    #: plan, audit and alert, but change nothing
    dry_run: bool = False
    #: blast radius: more targets than this in one decision (or one idempotency window) stops them all
    max_targets: Annotated[int, Field(ge=1)] | None = None
    #: blast radius: more than this percentage of the fleet of that target kind stops them all
    max_percent: Annotated[float, Field(gt=0, le=100)] | None = None


def _action_tag(value: Any) -> str | None:
    if isinstance(value, dict):
        if "alert" in value and "remediate" not in value:
            return "alert-action"
        if "remediate" in value and "alert" not in value:
            return "remediate-action"
    return None


ActionSpec = Annotated[
    Annotated[AlertSpec, Tag("alert-action")] | Annotated[RemediateSpec, Tag("remediate-action")],
    Discriminator(
        _action_tag,
        custom_error_type="unknown_action",
        custom_error_message="an action is a mapping with exactly one of 'alert' or 'remediate'",
    ),
]

# -- tests -------------------------------------------------------------------------------------------------


class Expect(_Strict):
    """``expect: {findings: N}``."""

    findings: Annotated[int, Field(ge=0)]


class TestSpec(_Strict):
    """One embedded test case: ``events`` (partial canonical events) or ``records`` (raw source records)."""

    __test__ = False  # not a pytest class

    name: NonEmpty
    events: Annotated[list[dict[str, Any]], Field(min_length=1)] | None = None
    records: Annotated[list[dict[str, Any]], Field(min_length=1)] | None = None
    #: after the events, move the clock this far past the last one (flatlines and absent steps fire)
    advance: Duration | None = None
    expect: Expect

    @model_validator(mode="after")
    def _exactly_one_input(self) -> TestSpec:
        if (self.events is None) == (self.records is None):
            raise ValueError("a test case gives exactly one of 'events' or 'records'")
        return self


# -- documents ---------------------------------------------------------------------------------------------


class RuleDoc(_Strict):
    """A rule document (DESIGN §4)."""

    id: RuleId
    title: NonEmpty
    description: str = ""
    status: Literal["experimental", "test", "stable"] = "experimental"
    severity: Literal["informational", "low", "medium", "high", "critical"]
    score: Annotated[int, Field(ge=0, le=100)] | None = None
    tags: list[TagStr] = Field(default_factory=list)
    kind: list[Kind] = Field(default_factory=list)
    match: NonEmpty | None = None
    threshold: ThresholdSpec | None = None
    sequence: SequenceSpec | None = None
    flatline: FlatlineSpec | None = None
    suppress: Duration | None = None
    actions: list[ActionSpec] = Field(default_factory=list)
    tests: list[TestSpec] = Field(default_factory=list)
    references: list[str] = Field(default_factory=list)
    author: str = ""
    falsepositives: list[str] = Field(default_factory=list)

    _one_or_many = field_validator("kind", mode="before")(_as_list)

    @model_validator(mode="after")
    def _form(self) -> RuleDoc:
        forms = [f for f in ("threshold", "sequence", "flatline") if getattr(self, f) is not None]
        if len(forms) > 1:
            raise ValueError(
                f"a rule has at most one of threshold, sequence, flatline (got {', '.join(forms)})"
            )
        if self.match is None and self.sequence is None:
            raise PydanticCustomError(
                "missing_match",
                "missing required key 'match' (only a sequence rule, whose steps match, may omit it)",
            )
        return self

    @property
    def form(self) -> str:
        """``event`` for a single-event rule, else the stateful form's name."""
        return next(
            (f for f in ("threshold", "sequence", "flatline") if getattr(self, f) is not None), "event"
        )

    @property
    def effective_score(self) -> int:
        """``score``, or the default of the severity when none is given."""
        return self.score if self.score is not None else SEVERITY_SCORE[self.severity]

    @property
    def suppress_delta(self) -> timedelta | None:
        return parse_duration(self.suppress) if self.suppress is not None else None


ListValues = list[str]


class CidrList(_Strict):
    """``NAME: {cidr: [10.0.0.0/8, 2001:db8::/32]}``: networks; a bare address is a /32 or /128."""

    cidr: ListValues


class ValueList(_Strict):
    """``NAME: {values: [a, b]}``, the long form of ``NAME: [a, b]``."""

    values: ListValues


def _list_tag(value: Any) -> str | None:
    if isinstance(value, list):
        return "plain-list"
    if isinstance(value, dict):
        if "cidr" in value:
            return "cidr-list"
        if "values" in value:
            return "value-list"
    return None


ListSpec = Annotated[
    Annotated[ListValues, Tag("plain-list")]
    | Annotated[CidrList, Tag("cidr-list")]
    | Annotated[ValueList, Tag("value-list")],
    Discriminator(
        _list_tag,
        custom_error_type="list_form",
        custom_error_message="a list is [values...], {values: [...]} or {cidr: [...]}",
    ),
]


class LibraryDoc(_Strict):
    """``lists:`` and/or ``macros:``, global to every file loaded together."""

    lists: dict[Name, ListSpec] = Field(default_factory=dict)
    macros: dict[Name, NonEmpty] = Field(default_factory=dict)


class ListPatch(_Strict):
    """``NAME: {append: [...]}`` or ``NAME: {replace: [...]}`` — one of the two, never implied."""

    append: ListValues | None = None
    replace: ListValues | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ListPatch:
        if (self.append is None) == (self.replace is None):
            raise ValueError("an overlay entry gives exactly one of 'append' or 'replace'")
        return self


class OverlayBody(_Strict):
    lists: dict[Name, ListPatch] = Field(default_factory=dict)


class OverlayDoc(_Strict):
    """``overlay: {lists: {NAME: {append: [...]}}}``, from a file given with ``--overlay``."""

    overlay: OverlayBody


DocKind = Literal["rule", "library", "overlay"]


def document_kind(keys: set[str]) -> DocKind | None:
    """Which kind of document has these top-level keys (None: none; the loader reports E102)."""
    if "id" in keys or "match" in keys:
        return "rule"
    if "overlay" in keys:
        return "overlay"
    if keys & {"lists", "macros"}:
        return "library"
    return None


MODELS: Final[dict[DocKind, type[BaseModel]]] = {
    "rule": RuleDoc,
    "library": LibraryDoc,
    "overlay": OverlayDoc,
}


def json_schema() -> dict[str, Any]:
    """JSON Schema of a rule document, for analysts' editors."""
    return RuleDoc.model_json_schema()
