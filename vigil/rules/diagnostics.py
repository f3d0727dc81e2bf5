"""Diagnostics: every problem in every rule file, reported at once as ``path:line:col: CODE message (rule)``.

Analysts fix rules from these messages, and CI parses them, so codes are stable: a code keeps its meaning
forever, new problems get new codes. ``E`` codes are errors (the file is rejected), ``W`` codes warnings
(reported; they fail only ``vigil rules lint --strict``). Line and column are 1-based.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Final, Literal

Severity = Literal["error", "warning"]

#: every code, with what it means; docs/rules.md is generated from the same text
CODES: Final[dict[str, str]] = {
    # files and YAML
    "E100": "file cannot be read",
    "E101": "YAML syntax error",
    "E102": "document is not a mapping / of no known type (rule, lists, macros, overlay)",
    "E103": "file too large or too many documents/aliases (hostile input)",
    # schema
    "E110": "unknown key",
    "E111": "missing required key",
    "E112": "wrong type or invalid value",
    "E113": "duplicate rule id",
    "E114": "duplicate list or macro name",
    # expressions
    "E120": "expression syntax error",
    "E121": "unknown event field",
    "E122": "undefined list",
    "E123": "undefined macro, or macro cycle",
    "E124": "type error in expression",
    "E125": "invalid regular expression (RE2: no backreferences or lookaround)",
    "E126": "expression exceeds the cost budget",
    "E127": "unknown function or wrong arguments",
    "E128": "invalid CIDR in a list or expression",
    # rule semantics
    "E130": "rule form not supported (retired: threshold, sequence and flatline are supported now)",
    "E131": "auto approval requires status: stable",
    "E132": "unknown action, alert sink or remediation",
    "E133": "overlay targets an unknown list",
    "E134": "invalid test case",
    "E135": "rule has no positive test case (lint: a case expecting findings is required)",
    "E136": "rule has no negative test case (lint: a case expecting no findings is required)",
    "E137": "invalid stateful form (a sequence step names a missing rule or one it cannot wait for)",
    # lint warnings
    "W200": "rule has no positive test case (a case expecting findings)",
    "W201": "rule has no negative test case (a case expecting none)",
    "W202": "rule has no MITRE ATT&CK tag",
    "W203": "score disagrees with severity by more than 30",
    "W204": "rule is not indexable: it is evaluated against every event of its kinds",
    "W205": "rule has no kind: it is evaluated against every event",
}


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem, located."""

    code: str
    message: str
    path: str
    line: int = 0
    col: int = 0
    rule_id: str | None = None

    @property
    def severity(self) -> Severity:
        return "warning" if self.code.startswith("W") else "error"

    def format(self) -> str:
        """``path:line:col: CODE message (rule id)``."""
        where = self.path
        if self.line:
            where += f":{self.line}:{self.col or 1}"
        tail = f" ({self.rule_id})" if self.rule_id else ""
        return f"{where}: {self.code} {self.message}{tail}"

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["severity"] = self.severity
        return data


def sort_key(d: Diagnostic) -> tuple[str, int, int, str]:
    return (d.path, d.line, d.col, d.code)


def render_text(diagnostics: Iterable[Diagnostic]) -> str:
    """One diagnostic per line, sorted by file and position."""
    return "\n".join(d.format() for d in sorted(diagnostics, key=sort_key))


def render_json(diagnostics: Iterable[Diagnostic]) -> str:
    """The same diagnostics as a JSON list of objects (``--format json``)."""
    return json.dumps([d.to_dict() for d in sorted(diagnostics, key=sort_key)], indent=2)


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.severity == "error" for d in diagnostics)
