"""The response engine through a real ``vigil run``: events in over HTTP, effects checked on the platform.

One daemon for the module (its start costs seconds); each scenario uses its own targets and rule.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import run_vigil, wait_until
from tests.streams.test_embedded import COMMANDS, Daemon
from vigil.platform.client import PlatformClient
from vigil.platform.compute import NodeState
from vigil.platform.storage import Lock

MEASUREMENT = "ab" * 48
RULES = """\
id: t.exfil-rotate
title: Key exfiltration pattern
status: stable
severity: high
author: alice
kind: generic
match: action == "key.export"
actions:
  - remediate: rotate_key
    target: "{{ resource.id }}"
    approval: auto
tests:
  - {name: fires, events: [{kind: generic, action: key.export}], expect: {findings: 1}}
---
id: t.fleet-quarantine
title: Nodes reported compromised
status: stable
severity: high
author: alice
kind: generic
match: action == "node.compromised"
actions:
  - remediate: quarantine_vm
    target: "{{ node.id }}"
    approval: auto
    max_targets: 5
tests:
  - {name: fires, events: [{kind: generic, action: node.compromised}], expect: {findings: 1}}
---
id: t.exposed-dry
title: Container exposed (dry run)
status: stable
severity: medium
author: alice
kind: generic
match: action == "container.exposed"
actions:
  - remediate: lock_storage
    target: "{{ resource.id }}"
    approval: auto
    dry_run: true
tests:
  - {name: fires, events: [{kind: generic, action: container.exposed}], expect: {findings: 1}}
---
id: t.leak-approve
title: Container leaking (approval)
status: stable
severity: high
author: alice
kind: generic
match: action == "container.leak"
actions:
  - remediate: lock_storage
    target: "{{ resource.id }}"
    approval: required
tests:
  - {name: fires, events: [{kind: generic, action: container.leak}], expect: {findings: 1}}
"""


class Running:
    def __init__(self, base: str, work: Path, daemon: Daemon) -> None:
        self.base, self.work, self.daemon = base, work, daemon
        self.ingest = (work / "var" / "ingest.token").read_text().strip()
        self.operator = (work / "var" / "platform" / "operator.token").read_text().strip()
        self.tokens = {name: self._principal(name) for name in ("alice", "bob", "carol")}

    def _principal(self, name: str) -> str:
        done = run_vigil("platform", "--config", "profile.yaml", "principals", "add", name, cwd=self.work)
        assert done.returncode == 0, done.stderr
        return done.stdout.decode().strip()

    def post(self, events: list[dict[str, Any]]) -> None:
        body = "\n".join(httpx.Response(200, json=e).text for e in events)
        r = httpx.post(
            f"{self.base}/v1/events", content=body, headers={"Authorization": f"Bearer {self.ingest}"}
        )
        assert r.status_code == 200, r.text

    def actions(self, rule: str) -> list[dict[str, Any]]:
        r = self.get("/v1/actions", params={"rule": rule, "limit": 1000})
        assert r.status_code == 200, r.text
        return r.json()["actions"]  # type: ignore[no-any-return]

    def get(self, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        """A read of the read API, which this daemon closes (http.read_auth): with the local token unless
        another is given."""
        auth = {"Authorization": f"Bearer {token or self.ingest}"}
        return httpx.get(f"{self.base}{path}", headers=auth, timeout=30, **kw)

    def decide(self, action: str, what: str, who: str) -> httpx.Response:
        auth = {"Authorization": f"Bearer {self.tokens[who]}"}
        return httpx.post(f"{self.base}/v1/actions/{action}/{what}", headers=auth, json={}, timeout=30)

    def platform_events(self, kind: str) -> int:
        db = sqlite3.connect(self.work / "var" / "vigil.db")
        try:
            rows = db.execute("SELECT body FROM event_batches WHERE source = 'platform'").fetchall()
        finally:
            db.close()
        lines = [line.decode() for (body,) in rows for line in body.split(b"\n")]  # (JSON Lines of events)
        return sum(f'"action":"{kind}"' in line and '"outcome":"success"' in line for line in lines)

    def platform(self, fn: Callable[[PlatformClient], Any]) -> Any:
        async def call() -> Any:
            async with PlatformClient(self.base, self.operator) as client:
                return await fn(client)

        return asyncio.run(call())


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    work = tmp_path_factory.mktemp("response")
    (work / "rules.yaml").write_text(RULES, encoding="utf-8")
    (work / "profile.yaml").write_text(
        "data_dir: var\nhttp:\n  port: 0\n  read_auth: true\ndetect:\n  rules: rules.yaml\n"
        "response:\n  approvers: [alice, bob]\n  batch_window: 0.5\n  rate_limit: 100\n",
        encoding="utf-8",
    )
    proc = Daemon([*COMMANDS["cli"], str(work / "profile.yaml")], work)
    try:
        base = proc.wait_for_log(r"serving on (http://127\.0\.0\.1:\d+)").group(1)
        yield Running(base, work, proc)
    finally:
        proc.stop()


def _wait(check: Callable[[], object], what: str, deadline: float = 30.0) -> None:
    wait_until(check, what, deadline=deadline)


def _event(i: str, action: str, **fields: Any) -> dict[str, Any]:
    return {"id": i, "kind": "generic", "action": action, "time": "2026-11-26T03:00:00Z", **fields}


def test_an_exfiltration_pattern_rotates_the_key_once_however_often_it_is_delivered(daemon: Running) -> None:
    daemon.platform(lambda c: c.keys.create_key("vigil", "exfil-key"))
    export = _event("x-1", "key.export", resource={"id": "exfil-key"})
    for _ in range(3):  # the same delivery three times (a retrying sender)
        daemon.post([export])
    daemon.post([_event(f"x-{i}", "key.export", resource={"id": "exfil-key"}) for i in (2, 3)])  # and more
    _wait(lambda: [a["state"] for a in daemon.actions("t.exfil-rotate")] == ["succeeded"], "one rotation")
    time.sleep(1.5)  # a later batch would have made a second action by now
    assert len(daemon.actions("t.exfil-rotate")) == 1
    info = daemon.platform(lambda c: c.keys.get_key("vigil", "exfil-key"))
    assert len(info.versions) == 2 and daemon.platform_events("platform.key.rotate") == 1


def test_a_rule_matching_forty_nodes_with_max_targets_five_touches_none_and_alerts_once(
    daemon: Running,
) -> None:
    async def register(client: PlatformClient) -> None:
        for i in range(40):
            await client.compute.register(
                "vigil", f"fleet-{i}", node_principal=f"fleet-{i}", measurement=MEASUREMENT
            )

    daemon.platform(register)
    daemon.post([_event(f"n-{i}", "node.compromised", node={"id": f"fleet-{i}"}) for i in range(40)])
    _wait(lambda: len(daemon.actions("t.fleet-quarantine")) == 40, "40 decided actions")
    actions = daemon.actions("t.fleet-quarantine")
    assert {a["state"] for a in actions} == {"refused"}
    assert all(a["reason"].startswith("blast radius: 40 targets > max_targets 5") for a in actions)
    nodes = daemon.platform(lambda c: c.compute.list_nodes("vigil"))
    assert all(n.state is NodeState.PENDING for n in nodes if n.id.startswith("fleet-"))
    assert daemon.platform_events("platform.node.quarantine") == 0
    assert 'vigil_response_alerts_total{kind="blast_radius"} 1' in daemon.get("/metrics").text


def test_dry_run_plans_and_alerts_with_zero_mutations(daemon: Running) -> None:
    daemon.platform(lambda c: c.keys.create_key("vigil", "dry-key"))
    daemon.platform(lambda c: c.storage.create_container("vigil", "exposed", key_name="dry-key"))
    before = {
        k: daemon.platform_events(k)
        for k in ("platform.storage.set_lock", "platform.storage.set_public_read")
    }
    daemon.post([_event("d-1", "container.exposed", resource={"id": "exposed"})])
    _wait(lambda: [a["state"] for a in daemon.actions("t.exposed-dry")] == ["dry_run"], "the dry run")
    action = daemon.actions("t.exposed-dry")[0]
    assert [s["name"] for s in action["plan"]["steps"]] == ["disable_public_read", "set_lock"] or action[
        "plan"
    ]["steps"]
    after = {k: daemon.platform_events(k) for k in before}
    assert after == before  # the platform's own event log: nothing was changed
    assert daemon.platform(lambda c: c.storage.get_container("vigil", "exposed")).lock is Lock.NONE
    assert 'vigil_response_alerts_total{kind="dry_run"} 1' in daemon.get("/metrics").text


def test_an_approval_waits_refuses_the_author_and_outsiders_runs_once_and_rolls_back(daemon: Running) -> None:
    daemon.platform(lambda c: c.keys.create_key("vigil", "leak-key"))
    daemon.platform(lambda c: c.storage.create_container("vigil", "leaky", key_name="leak-key"))
    daemon.post([_event("l-1", "container.leak", resource={"id": "leaky"})])
    _wait(
        lambda: [a["state"] for a in daemon.actions("t.leak-approve")] == ["pending_approval"],
        "a pending action",
    )
    action = daemon.actions("t.leak-approve")[0]["id"]
    # the read API is closed to callers without a token here (http.read_auth), probes are not
    assert httpx.get(f"{daemon.base}/v1/actions/{action}").status_code == 401
    assert httpx.get(f"{daemon.base}/v1/findings").status_code == 401
    assert daemon.get("/v1/findings", token="not-a-token").status_code == 401
    assert httpx.get(f"{daemon.base}/healthz").status_code == 200
    assert daemon.platform(lambda c: c.storage.get_container("vigil", "leaky")).lock is Lock.NONE
    assert httpx.post(f"{daemon.base}/v1/actions/{action}/approve").status_code == 401
    assert daemon.decide(action, "approve", "alice").status_code == 403  # the rule's author
    assert daemon.decide(action, "approve", "carol").status_code == 403  # not an approver
    # a token file the daemon cannot read: approvals and platform-token reads answer 503 and decide nothing
    # (the local token needs no file); once it is readable again, everything is as before
    tokens_file = daemon.work / "var" / "platform" / "principals.json"
    kept = tokens_file.read_bytes()
    tokens_file.write_bytes(b"{not json")
    try:
        assert daemon.decide(action, "approve", "bob").status_code == 503
        assert daemon.get("/v1/findings", token=daemon.tokens["bob"]).status_code == 503
        assert daemon.get("/v1/findings").status_code == 200
    finally:
        tokens_file.write_bytes(kept)
    assert daemon.get("/v1/findings", token=daemon.tokens["bob"]).status_code == 200
    assert daemon.actions("t.leak-approve")[0]["state"] == "pending_approval"
    listed = run_vigil(
        "actions", "--config", "profile.yaml", "list", "--state", "pending_approval", cwd=daemon.work
    )
    assert listed.returncode == 0 and action[:12] in listed.stdout.decode(), listed
    (daemon.work / "carol.token").write_text(daemon.tokens["carol"])
    (daemon.work / "bob.token").write_text(daemon.tokens["bob"])
    refused = run_vigil(
        "actions",
        "--config",
        "profile.yaml",
        "approve",
        action,
        "--token-file",
        "carol.token",
        cwd=daemon.work,
    )
    assert refused.returncode == 1 and b"403" in refused.stderr, refused
    # the approver sees what approving would run before approving it, and approves exactly that plan
    shown = run_vigil("actions", "--config", "profile.yaml", "--json", "show", action, cwd=daemon.work)
    assert shown.returncode == 0, shown
    proposed = json.loads(shown.stdout)["proposed"]
    assert proposed["plan_digest"] and proposed["plan"]["steps"], proposed
    approve = ["actions", "--config", "profile.yaml", "approve", action, "--token-file", "bob.token"]
    stale = run_vigil(*approve, "--plan-digest", "0" * 64, cwd=daemon.work)
    assert stale.returncode == 1 and b"409" in stale.stderr and b"plan is now" in stale.stderr, stale
    assert daemon.actions("t.leak-approve")[0]["state"] == "pending_approval"  # nothing ran
    done = run_vigil(*approve, "--plan-digest", proposed["plan_digest"], cwd=daemon.work)
    assert done.returncode == 0, done.stderr
    _wait(lambda: daemon.actions("t.leak-approve")[0]["state"] == "succeeded", "the approved run")
    assert daemon.decide(action, "approve", "bob").status_code == 409  # decided already
    assert daemon.platform(lambda c: c.storage.get_container("vigil", "leaky")).lock is Lock.READ_ONLY
    assert daemon.platform_events("platform.storage.set_lock") >= 1
    locks = daemon.platform_events("platform.storage.set_lock")

    shown = daemon.get(f"/v1/actions/{action}").json()
    assert shown["incident_id"], shown
    incident = daemon.get(f"/v1/incidents/{shown['incident_id']}", token=daemon.tokens["bob"]).json()
    assert [a["id"] for a in incident["actions"]] == [action]
    states = [h["state"] for h in shown["history"]]
    assert states[0] == "pending_approval" and "approved" in states and states[-1] == "succeeded", states
    rolled = daemon.decide(action, "rollback", "bob")
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["state"] == "rolled_back"
    assert daemon.platform(lambda c: c.storage.get_container("vigil", "leaky")).lock is Lock.NONE
    assert daemon.platform_events("platform.storage.set_lock") == locks + 1  # the rollback's, nothing else


def test_the_kill_switch_stops_remediation_at_run_time_and_only_an_approver_turns_it(daemon: Running) -> None:
    """Reliability C11: during an incident an approver stops every remediation without a restart; the auto
    rule's action is then a dry run with zero mutations; an outsider cannot turn it; turning it off lets
    the next action run."""

    async def register(client: PlatformClient) -> None:
        for name in ("ks-1", "ks-2"):
            await client.compute.register("vigil", name, node_principal=name, measurement=MEASUREMENT)

    daemon.platform(register)
    (daemon.work / "carol.token").write_text(daemon.tokens["carol"])
    (daemon.work / "bob.token").write_text(daemon.tokens["bob"])
    cli = ["actions", "--config", "profile.yaml", "kill-switch"]
    shown = run_vigil(*cli, cwd=daemon.work)
    assert shown.returncode == 0 and shown.stdout.decode().strip() == "remediation running", shown
    outsider = run_vigil(*cli, "on", "--token-file", "carol.token", cwd=daemon.work)
    assert outsider.returncode == 1 and b"403" in outsider.stderr, outsider
    assert httpx.post(f"{daemon.base}/v1/response/kill-switch", json={"on": True}).status_code == 401
    on = run_vigil(*cli, "on", "--reason", "IR-142", "--token-file", "bob.token", cwd=daemon.work)
    assert on.returncode == 0 and "STOPPED" in on.stdout.decode() and "by bob" in on.stdout.decode(), on
    switch = daemon.get("/v1/response/kill-switch").json()
    assert switch["on"] is True and switch["switched"]["reason"] == "IR-142"

    def mine() -> list[str]:  # (the daemon is shared with the other tests of this module)
        actions = daemon.actions("t.fleet-quarantine")
        return sorted(a["state"] for a in actions if a["target"].startswith("ks-"))

    daemon.post([_event("ks-e1", "node.compromised", node={"id": "ks-1"})])
    _wait(lambda: mine() == ["dry_run"], "a dry run")
    assert daemon.platform(lambda c: c.compute.get_node("vigil", "ks-1")).state is NodeState.PENDING

    off = run_vigil(*cli, "off", "--token-file", "bob.token", cwd=daemon.work)
    assert off.returncode == 0 and "running" in off.stdout.decode(), off
    daemon.post([_event("ks-e2", "node.compromised", node={"id": "ks-2"})])
    _wait(lambda: mine() == ["dry_run", "succeeded"], "the run after the switch is off")
    assert daemon.platform(lambda c: c.compute.get_node("vigil", "ks-2")).state is NodeState.QUARANTINED


GRACE_RULE = """\
id: t.rotate-graceful
title: Key exported (rotation with a grace period)
status: stable
severity: high
author: alice
kind: generic
match: action == "key.export"
actions:
  - remediate: rotate_key
    target: "{{ resource.id }}"
    approval: auto
    params: {grace_seconds: 4}
"""


def test_sigterm_while_a_remediation_runs_and_a_restart_finishes_it_once(tmp_path: Path) -> None:
    """Reliability H1: SIGTERM arrives while an action is running (rotate_key waiting out its grace
    period before disabling the old version); the daemon stops cleanly, the action stays running in the
    store, and the next start finishes it: one rotation, the old version disabled once."""
    (tmp_path / "rules.yaml").write_text(GRACE_RULE, encoding="utf-8")
    (tmp_path / "profile.yaml").write_text(
        "data_dir: var\nhttp:\n  port: 0\ndetect:\n  rules: rules.yaml\nresponse:\n  batch_window: 0.2\n",
        encoding="utf-8",
    )
    argv = [*COMMANDS["cli"], str(tmp_path / "profile.yaml")]
    first = Daemon(argv, tmp_path)
    try:
        base = first.wait_for_log(r"serving on (http://127\.0\.0\.1:\d+)").group(1)
        running = Running(base, tmp_path, first)
        running.platform(lambda c: c.keys.create_key("vigil", "grace-key"))
        running.post([_event("g-1", "key.export", resource={"id": "grace-key"})])
        _wait(
            lambda: [a["state"] for a in running.actions("t.rotate-graceful")] == ["running"],
            "the rotation waiting out its grace period",
        )
        first.proc.send_signal(signal.SIGTERM)
        assert first.wait(30) == 0
    finally:
        first.stop()
    second = Daemon(argv, tmp_path)
    try:
        base = second.wait_for_log(r"serving on (http://127\.0\.0\.1:\d+)").group(1)
        running = Running(base, tmp_path, second)
        _wait(
            lambda: [a["state"] for a in running.actions("t.rotate-graceful")] == ["succeeded"],
            "the rotation finished after the restart",
        )
        info = running.platform(lambda c: c.keys.get_key("vigil", "grace-key"))
        assert len(info.versions) == 2  # rotated once, not again after the restart
        assert [v.enabled for v in info.versions] == [False, True]  # the old version disabled
        assert running.platform_events("platform.key.rotate") == 1
    finally:
        second.stop()
