"""Hot reload against a real ``vigil run``: a broken set is rejected whole with its diagnostics while the
running set goes on; a good set replaces it, keeps the open windows of unchanged rules, and no event posted
during the reloads is lost."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import wait_until
from tests.streams.test_embedded import COMMANDS, Daemon

BURST = """\
id: t.burst
title: three writes from one address
severity: high
kind: azure.activity
match: action == "microsoft.keyvault/vaults/write"
threshold: {count: 3, window: 1h, group_by: [actor.ip]}
tests:
  - name: fires
    events: [{action: microsoft.keyvault/vaults/write}, {action: microsoft.keyvault/vaults/write}, {action: microsoft.keyvault/vaults/write}]
    expect: {findings: 1}
  - {name: quiet, events: [{action: other}], expect: {findings: 0}}
"""
EXTRA = """\
id: t.any-delete
title: a delete
severity: low
kind: azure.activity
match: action == "microsoft.keyvault/vaults/delete"
tests:
  - {name: fires, events: [{action: microsoft.keyvault/vaults/delete}], expect: {findings: 1}}
  - {name: quiet, events: [{action: other}], expect: {findings: 0}}
"""


def _record(i: int, op: str = "WRITE", ip: str = "203.0.113.7") -> dict[str, object]:
    return {
        "time": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
        "resourceId": "/SUBSCRIPTIONS/S1/RESOURCEGROUPS/G1/PROVIDERS/MICROSOFT.KEYVAULT/VAULTS/KV1",
        "operationName": f"MICROSOFT.KEYVAULT/VAULTS/{op}",
        "category": "Administrative",
        "resultType": "Success",
        "correlationId": f"c-{i}",
        "callerIpAddress": ip,
    }


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "main.yaml").write_text(BURST, encoding="utf-8")
    (tmp_path / "profile.yaml").write_text(
        "data_dir: var\nhttp:\n  port: 0\ndetect:\n  rules: rules\n", encoding="utf-8"
    )
    proc = Daemon([*COMMANDS["cli"], str(tmp_path / "profile.yaml")], tmp_path)
    try:
        base = proc.wait_for_log(r"serving on (http://127\.0\.0\.1:\d+)").group(1)
        yield base, (tmp_path / "var" / "ingest.token").read_text().strip(), tmp_path
    finally:
        proc.stop()


def _post(base: str, token: str, records: list[dict[str, object]]) -> None:
    body = "".join(json.dumps(r) + "\n" for r in records)
    r = httpx.post(
        f"{base}/v1/events", content=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert r.status_code == 200, r.text


def _wait(check: Callable[[], object], what: str, deadline: float = 20.0) -> None:
    wait_until(check, what, deadline=deadline)


def _findings(base: str, rule: str) -> list[dict[str, object]]:
    return httpx.get(f"{base}/v1/findings", params={"rule": rule}).json()["findings"]


def test_bad_set_rejected_good_set_applied_state_kept(daemon: tuple[str, str, Path]) -> None:
    base, token, work = daemon
    _post(base, token, [_record(1), _record(2)])  # two of three: the window is open

    # a broken set: rejected whole, with its diagnostics; the running set stays
    (work / "rules" / "extra.yaml").write_text(
        EXTRA.replace("severity: low", "severity: urgent"), encoding="utf-8"
    )
    _wait(lambda: (httpx.get(f"{base}/v1/rules").json()["reload"] or {}).get("ok") is False, "the rejection")
    rules = httpx.get(f"{base}/v1/rules").json()
    assert [r["id"] for r in rules["rules"]] == ["t.burst"]
    assert any("E112" in e and "extra.yaml" in e for e in rules["reload"]["errors"])
    assert "vigil_rules_reload_failures_total 1" in httpx.get(f"{base}/metrics").text

    # fixed: applied, and t.burst (unchanged text) keeps its open window: the third write fires
    (work / "rules" / "extra.yaml").write_text(EXTRA, encoding="utf-8")
    _wait(lambda: (httpx.get(f"{base}/v1/rules").json()["reload"] or {}).get("ok") is True, "the reload")
    assert httpx.get(f"{base}/v1/rules").json()["reload"]["kept_state"] == ["t.burst"]
    _post(base, token, [_record(3), _record(4, op="DELETE")])
    _wait(
        lambda: len(_findings(base, "t.burst")) == 1 and len(_findings(base, "t.any-delete")) == 1, "findings"
    )


def test_reload_endpoint_and_no_event_lost_while_reloading(daemon: tuple[str, str, Path]) -> None:
    base, token, work = daemon
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.post(f"{base}/v1/rules/reload").status_code == 401
    posted = 0
    stop = threading.Event()

    def feed() -> None:
        nonlocal posted
        i = 0
        while not stop.is_set():
            _post(base, token, [_record(100 + i * 5 + k, ip=f"198.51.100.{i % 200}") for k in range(5)])
            posted += 5
            i += 1

    thread = threading.Thread(target=feed)
    thread.start()
    try:
        for n in range(4):
            text = BURST if n % 2 == 0 else BURST + "---\n" + EXTRA
            (work / "rules" / "main.yaml").write_text(text, encoding="utf-8")
            r = httpx.post(f"{base}/v1/rules/reload", headers=auth, timeout=30)
            assert r.status_code == 200 and r.json()["ok"] is True, r.text
        # a broken set through the endpoint: 422 with the diagnostics, at path:line:col; the set runs on
        (work / "rules" / "main.yaml").write_text(BURST.replace("severity: high", "severity: urgent"))
        r = httpx.post(f"{base}/v1/rules/reload", headers=auth, timeout=30)
        assert r.status_code == 422 and r.json()["ok"] is False, r.text
        assert any(re.search(r"main\.yaml:\d+:\d+: E112", e) for e in r.json()["errors"]), r.text
        assert [x["id"] for x in httpx.get(f"{base}/v1/rules").json()["rules"]] == ["t.burst", "t.any-delete"]
        (work / "rules" / "main.yaml").write_text(BURST, encoding="utf-8")
        assert httpx.post(f"{base}/v1/rules/reload", headers=auth, timeout=30).status_code == 200
    finally:
        stop.set()
        thread.join(30)
    assert posted > 0

    def processed() -> bool:
        text = httpx.get(f"{base}/metrics").text

        def value(name: str) -> float:
            return float(next(x for x in text.splitlines() if x.startswith(name + " ")).split()[1])

        # the platform's own changes (the audit log's keys at first start) are events too
        return value("vigil_detect_events_total") == posted + value("vigil_platform_events_total")

    _wait(processed, f"all {posted} posted events detected")
