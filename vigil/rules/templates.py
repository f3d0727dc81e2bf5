"""Scaffolds for ``vigil rules new KIND``: a rule that lints and whose two test cases pass as generated.

Each kind gets a realistic starting condition and a matching pair of events, so an analyst edits a working
rule instead of a blank page.
"""

from __future__ import annotations

from typing import Final

# kind -> (match expression, positive event fields, negative event fields), as YAML flow mappings
_EXAMPLES: Final[dict[str, tuple[str, str, str]]] = {
    "azure.activity": (
        'action == "microsoft.authorization/locks/delete" and outcome == "success"',
        "action: microsoft.authorization/locks/delete, outcome: success",
        "action: microsoft.authorization/locks/write, outcome: success",
    ),
    "azure.keyvault": (
        'action == "secretget" and outcome == "failure"',
        "action: secretget, outcome: failure, actor: {ip: 203.0.113.9}",
        "action: secretget, outcome: success, actor: {ip: 203.0.113.9}",
    ),
    "azure.storage": (
        'action == "getblob" and actor.type == "anonymous"',
        "action: getblob, outcome: success, actor: {type: anonymous}",
        "action: getblob, outcome: success, actor: {type: oauth}",
    ),
    "sentinel.alert": (
        'action == "alert.new" and severity == "high"',
        "action: alert.new, severity: high",
        "action: alert.new, severity: low",
    ),
    "sentinel.incident": (
        'action == "incident.create" and severity == "high"',
        "action: incident.create, severity: high",
        "action: incident.create, severity: medium",
    ),
    "azure.monitor.alert": (
        'action == "alert.fired" and severity == "high"',
        "action: alert.fired, severity: high",
        "action: alert.resolved, severity: high",
    ),
    "eventgrid": (
        'action == "microsoft.keyvault.keyexpired"',
        "action: microsoft.keyvault.keyexpired",
        "action: microsoft.keyvault.keynewversioncreated",
    ),
    "attestation": (
        'action == "attestation.verify" and node.attested == false',
        "action: attestation.verify, outcome: failure, node: {id: node-1, attested: false}",
        "action: attestation.verify, outcome: success, node: {id: node-1, attested: true}",
    ),
    "node.telemetry": (
        'action == "node.heartbeat" and node.attested == false',
        "action: node.heartbeat, node: {id: node-1, attested: false}",
        "action: node.heartbeat, node: {id: node-1, attested: true}",
    ),
    "generic": (
        'action == "example.action"',
        "action: example.action",
        "action: other.action",
    ),
}


def template_for(kind: str, rule_id: str | None = None) -> str:
    """YAML for a new rule of ``kind`` (must be a known kind)."""
    match, positive, negative = _EXAMPLES[kind]
    rid = rule_id or f"{kind.replace('azure.', '').replace('.', '-')}.new-rule"
    return f"""\
# Scaffolded by `vigil rules new {kind}`. Edit the match and the cases, then:
#   vigil rules lint THIS_FILE && vigil rules test THIS_FILE
id: {rid}
title: Describe what this rule detects
description: >
  Why it matters, and what an on-call engineer should check first.
status: experimental          # experimental | test | stable (only stable rules may remediate automatically)
severity: medium              # informational | low | medium | high | critical
tags: [attack.t1078]          # MITRE ATT&CK: attack.<tactic> and attack.tNNNN
kind: {kind}
match: {match}
actions:
  - alert: [console]
falsepositives:
  - Name the legitimate activity that looks like this, and how to exclude it.
tests:
  - name: fires on the suspicious event
    events: [{{kind: {kind}, {positive}}}]
    expect: {{findings: 1}}
  - name: stays quiet on the benign event
    events: [{{kind: {kind}, {negative}}}]
    expect: {{findings: 0}}
"""
