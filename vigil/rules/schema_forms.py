"""The stateful rule forms of the v1 schema: ``threshold``, ``sequence`` and ``flatline`` (DESIGN §4).

These are the YAML shapes only; what they mean (the window approximation, the sequence state machine, when
a flatline fires) is documented in ``docs/rules.md`` and implemented in ``vigil/detectors/``. Like the rest
of the schema they are strict: unknown keys and wrong types are errors, and every field a form names
(``group_by``, ``distinct``, ``sum``, ``by``) must be a canonical event field or a ``raw.*`` / ``labels.*``
path, checked here so that the error points at the field.

Example::

    >>> ThresholdSpec.model_validate({"count": 20, "window": "5m", "group_by": ["actor.ip"]}).bounds
    (20.0, None)
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Final

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from vigil.rules.expr_source import EVENT_FIELDS

#: the largest count a window can hold per bucket (counts are packed into one int per key)
MAX_COUNT: Final = (1 << 24) - 1
#: the most distinct values a window keeps per bucket (their 8-byte hashes are stored)
MAX_DISTINCT: Final = 4096
MAX_STEPS: Final = 8
MAX_GROUP_FIELDS: Final = 4


def field_known(dotted: str) -> bool:
    """Whether ``dotted`` names a canonical event field (``raw.*`` and ``labels.*`` are open)."""
    head, _, rest = dotted.partition(".")
    if head in ("labels", "raw"):
        return bool(rest) and all(rest.split(".")) and (head == "raw" or "." not in rest)
    return dotted in EVENT_FIELDS


def _event_field(dotted: str) -> str:
    if not field_known(dotted):
        raise ValueError(f"unknown event field {dotted!r} (a canonical field, raw.<path> or labels.<name>)")
    return dotted


DURATION: Final = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str) -> timedelta:
    """``90s``, ``30m``, ``1h``, ``1h30m``, ``7d`` as a timedelta; ValueError for anything else or zero."""
    m = DURATION.match(text)
    if not text or m is None:
        raise ValueError(f"invalid duration {text!r}: use a number and a unit, e.g. 90s, 30m, 1h, 1h30m, 7d")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    delta = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    if not delta:
        raise ValueError("duration must be greater than zero")
    return delta


def _duration(text: str) -> str:
    parse_duration(text)
    return text


FieldName = Annotated[str, AfterValidator(_event_field)]
Duration = Annotated[str, AfterValidator(_duration)]
GroupBy = Annotated[list[FieldName], Field(max_length=MAX_GROUP_FIELDS)]
Bound = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ThresholdSpec(_Strict):
    """``count: N`` (fire at N or more), or ``count: true`` / ``distinct: FIELD`` / ``sum: FIELD`` with
    ``at_least`` and/or ``at_most``; over ``window``, per ``group_by`` group."""

    count: Annotated[int, Field(ge=1, le=MAX_COUNT)] | bool | None = None
    distinct: FieldName | None = None
    sum: FieldName | None = None
    at_least: Bound | None = None
    at_most: Bound | None = None
    window: Duration
    group_by: GroupBy = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_measure(self) -> ThresholdSpec:
        measures = [m for m in ("count", "distinct", "sum") if getattr(self, m) not in (None, False)]
        if len(measures) != 1:
            raise ValueError("a threshold gives exactly one of 'count', 'distinct' or 'sum'")
        shorthand = self.count is not None and self.count is not True
        if shorthand and (self.at_least is not None or self.at_most is not None):
            raise ValueError("'count: N' is already the bound; write 'count: true' with at_least/at_most")
        if not shorthand and self.at_least is None and self.at_most is None:
            raise ValueError("give 'at_least' and/or 'at_most' (or 'count: N')")
        low, high = self.bounds
        if high is not None and low is not None and low > high:
            raise ValueError(f"at_least ({low:g}) is greater than at_most ({high:g})")
        if self.distinct is not None and max(low or 0, (high or 0) + 1) > MAX_DISTINCT:
            raise ValueError(f"distinct bounds above {MAX_DISTINCT} are not supported")
        if self.measure == "count" and max(low or 0, high or 0) > MAX_COUNT:
            raise ValueError(f"count bounds above {MAX_COUNT} are not supported")
        return self

    @property
    def measure(self) -> str:
        return "distinct" if self.distinct else "sum" if self.sum else "count"

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        """(at_least, at_most); ``count: N`` is at_least N."""
        if type(self.count) is int:
            return float(self.count), None
        return self.at_least, self.at_most


class StepSpec(_Strict):
    """One step of a sequence: its own ``match`` (and ``kind``) or another rule's id, optionally its own
    ``by`` fields; ``absent: true`` makes it the step that must *not* happen (last step only)."""

    name: str = ""
    kind: list[str] | None = None
    match: Annotated[str, StringConstraints(min_length=1)] | None = None
    rule: str | None = None
    by: GroupBy | None = None
    absent: bool = False

    @model_validator(mode="before")
    @classmethod
    def _kind_list(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("kind"), str):
            return {**data, "kind": [data["kind"]]}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> StepSpec:
        if (self.match is None) == (self.rule is None):
            raise ValueError("a step gives exactly one of 'match' or 'rule'")
        if self.rule is not None and self.kind is not None:
            raise ValueError("a step that names a rule takes that rule's kinds; drop 'kind'")
        return self


class SequenceSpec(_Strict):
    """Ordered ``steps`` joined ``by`` fields, all ``within`` a duration of the first step."""

    by: GroupBy = Field(default_factory=list)
    within: Duration
    steps: Annotated[list[StepSpec], Field(min_length=2, max_length=MAX_STEPS)]

    @model_validator(mode="after")
    def _shape(self) -> SequenceSpec:
        for i, step in enumerate(self.steps):
            if step.absent and i != len(self.steps) - 1:
                raise ValueError(f"steps[{i}]: only the last step can be 'absent'")
            if step.by is not None and len(step.by) != len(self.by):
                raise ValueError(
                    f"steps[{i}].by: give {len(self.by)} field(s), as many as the sequence's 'by'"
                )
        if self.steps[0].absent:
            raise ValueError("the first step cannot be 'absent'")
        return self


class FlatlineSpec(_Strict):
    """No matching event for a ``group_by`` group that was seen before, for ``period``; groups not seen for
    ``expire`` are forgotten (default: 24 hours, or 10 periods if longer)."""

    period: Duration
    group_by: GroupBy = Field(default_factory=list)
    expire: Duration | None = None


FORMS: Final = ("threshold", "sequence", "flatline")
