"""The read API (findings, dead letters, rules) and the detection metrics, over a real store, a real rule set
and a real detector, through the real app.

httpx's ASGI transport rather than Starlette's TestClient, as in test_health.py: the installed Starlette
deprecates the latter with plain httpx, and the suite turns warnings into errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.detectors.stateful_helpers import at, ev, ms, rule_doc
from vigil.api import create_app
from vigil.detectors.engine import Detector
from vigil.detectors.finding import Finding, finding_id
from vigil.events.deadletter import DeadLetter
from vigil.rules.lint import lint
from vigil.rules.loader import load_rules
from vigil.rules.model import RuleSet
from vigil.settings import load_settings
from vigil.store.sqlite import Store
from vigil.streams import RunState
from vigil.streams.pipeline import DetectStats

LOGIN = 'kind: generic\nmatch: action == "login"\n'
LOGOUT = 'kind: generic\nmatch: action == "logout"\n'
RULES = (
    rule_doc("r.login", LOGIN + "tags: [attack.initial_access]\n"),
    rule_doc("r.burst", LOGIN + "threshold: {count: 2, window: 5m, group_by: [actor.ip]}\n"),
    rule_doc("r.quiet", LOGOUT + "threshold: {count: 10, window: 5m, group_by: [actor.ip]}\n"),
)
METRIC_LINE = re.compile(r"^([a-z_]+)(\{[^}]*\})? (\S+)$")


class Client:
    """A synchronous face over ``httpx.AsyncClient`` + ``ASGITransport``, one request per event loop."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def get(self, path: str, **params: str | int) -> httpx.Response:
        async def fetch() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://vigil.test") as client:
                response = await client.get(path, params=params)
                await response.aread()
                return response

        return asyncio.run(fetch())


@dataclasses.dataclass
class World:
    """A RunState as ``vigil run`` builds it, after some detection, and the pieces behind it."""

    state: RunState
    client: Client
    store: Store
    ruleset: RuleSet
    detector: Detector
    rules_path: Path
    findings: list[tuple[int, Finding]]


def bare_state(tmp_path: Path) -> RunState:
    profile = tmp_path / "profile.yaml"
    profile.write_text(f"data_dir: {tmp_path / 'var'}\nhttp:\n  port: 0\n", encoding="utf-8")
    return RunState(settings=load_settings(profile, env={}))


@pytest.fixture
def world(tmp_path: Path) -> World:
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text("---\n".join(RULES), encoding="utf-8")
    loaded = load_rules([rules_path])
    assert loaded.ok, [d.format() for d in loaded.diagnostics]
    # the loader reports errors only; lint's warnings stand in for the ones a runner would keep with the set
    warnings = tuple(d for d in lint(loaded) if d.severity == "warning")
    ruleset = dataclasses.replace(loaded, diagnostics=(*loaded.diagnostics, *warnings))
    detector = Detector(ruleset.rules, lateness=timedelta(minutes=5), max_keys=1)

    store = Store(tmp_path / "vigil.db")
    events = [
        ev("e1", 0, ip="203.0.113.1"),
        ev("e2", 60, ip="203.0.113.1"),  # r.burst: the second login of .1 in 5 minutes
        ev("e3", 120, ip="203.0.113.2"),  # r.burst holds one key already: a key-limit hit
        ev("e4", 180, action="logout", ip="203.0.113.1"),
        ev("e5", -600, action="logout", ip="203.0.113.1"),  # behind the watermark: late
    ]
    assert store.append_events(events, "drop") == (1, 5)
    found = [(s.seq, f) for s in store.read_events(0) for f in detector.process(s.event)]
    assert store.commit_detection(found, 5, None) == len(found) == 4
    store.append_events([ev("e6", 240), ev("e7", 250)], "drop")  # not detected yet: a lag of 2

    state = bare_state(tmp_path)
    state.store, state.ruleset, state.detector = store, ruleset, detector
    state.detect = DetectStats(events=5, findings=len(found), new_findings=len(found))
    return World(state, Client(create_app(state)), store, ruleset, detector, rules_path, found)


def times(body: dict[str, Any]) -> list[datetime]:
    return [datetime.fromisoformat(f["time"]) for f in body["findings"]]


# -- /v1/findings -----------------------------------------------------------------------------------------


def test_findings_newest_first(world: World) -> None:
    response = world.client.get("/v1/findings")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == len(body["findings"]) == 4
    assert times(body) == sorted(times(body), reverse=True)
    assert {f["id"] for f in body["findings"]} == {finding_id(f) for _, f in world.findings}
    newest = body["findings"][0]
    assert (newest["rule"], newest["event_ids"], newest["severity"]) == ("r.login", ["e3"], "high")


def test_findings_by_rule(world: World) -> None:
    body = world.client.get("/v1/findings", rule="r.burst").json()
    assert body["count"] == 1
    (burst,) = body["findings"]
    assert (burst["rule"], burst["form"], burst["event_ids"]) == ("r.burst", "threshold", ["e2"])
    assert burst["value"] == 2
    assert burst["group"] == {"actor.ip": "203.0.113.1"}
    assert world.client.get("/v1/findings", rule="r.nope").json() == {"findings": [], "count": 0}


def test_findings_of_an_incident(world: World) -> None:
    everything = world.client.get("/v1/findings").json()["findings"]
    incidents = {f["incident"] for f in everything}
    assert None not in incidents and len(incidents) >= 2  # each finding names the incident it joined
    for iid in incidents:
        body = world.client.get("/v1/findings", incident=iid).json()
        assert body["count"] >= 1 and {f["incident"] for f in body["findings"]} == {iid}
        assert body["count"] == sum(f["incident"] == iid for f in everything)
    assert world.client.get("/v1/findings", incident="nope").json() == {"findings": [], "count": 0}
    assert world.client.get("/v1/findings", rule="").json()["count"] == 4  # empty: no filter


@pytest.mark.parametrize(
    "since",
    [
        "2026-01-01T00:01:00Z",
        "2026-01-01T00:01:00+00:00",
        "2026-01-01T01:01:00+01:00",  # an offset, sent encoded (%2B)
        "2026-01-01T00:01:00",  # no zone: UTC
        "2026-01-01T00:00:59.999001Z",
        str(ms(60)),
    ],
)
def test_findings_since(world: World, since: str) -> None:
    body = world.client.get("/v1/findings", since=since).json()
    assert body["count"] == 3
    assert min(times(body)) == at(60)


def test_findings_since_bounds(world: World) -> None:
    assert world.client.get("/v1/findings", since="").json()["count"] == 4
    assert world.client.get("/v1/findings", since="0").json()["count"] == 4
    assert world.client.get("/v1/findings", since=str(ms(120) + 1)).json()["count"] == 0
    assert world.client.get("/v1/findings", since="2026-01-02").json()["count"] == 0


@pytest.mark.parametrize(
    ("since", "message"),
    [
        (
            "yesterday",
            "since: expected an ISO-8601 time (such as 2026-01-01T00:00:00Z) or epoch milliseconds",
        ),
        ("-1", "got '-1'"),
        ("1.7e12", "got '1.7e12'"),
        ("2026-13-01T00:00:00Z", "got '2026-13-01T00:00:00Z'"),
        ("2026-01-01T01:00:00 01:00", "write a '+' offset as %2B"),  # a '+' sent unencoded reads as a space
        ("9" * 19, "epoch milliseconds out of range"),
    ],
)
def test_findings_bad_since_is_400(world: World, since: str, message: str) -> None:
    response = world.client.get("/v1/findings", since=since)
    assert response.status_code == 400
    assert set(response.json()) == {"error"}
    assert message in response.json()["error"]


def test_findings_limit(world: World) -> None:
    body = world.client.get("/v1/findings", limit=2).json()
    assert body["count"] == 2 and times(body) == [at(120), at(60)]
    assert world.client.get("/v1/findings", limit=1000).json()["count"] == 4
    for bad in (0, -1, 1001, "many"):
        assert world.client.get("/v1/findings", limit=bad).status_code == 422, bad
        assert world.client.get("/v1/dead-letters", limit=bad).status_code == 422, bad


# -- /v1/dead-letters -------------------------------------------------------------------------------------


def test_dead_letters_newest_first(world: World) -> None:
    assert world.client.get("/v1/dead-letters").json() == {"dead_letters": [], "count": 0}
    world.store.add_dead_letters([DeadLetter(source="drop", reason="not JSON", line=3, text="{")], "drop")
    world.store.add_dead_letters([DeadLetter(source="drop", reason="no time", line=9)], "drop")
    body = world.client.get("/v1/dead-letters").json()
    assert body["count"] == 2
    assert [d["reason"] for d in body["dead_letters"]] == ["no time", "not JSON"]
    assert body["dead_letters"][1] == {"source": "drop", "reason": "not JSON", "line": 3, "text": "{"}
    assert world.client.get("/v1/dead-letters", limit=1).json()["count"] == 1


# -- without a store or rules, and with a broken store ----------------------------------------------------


def test_503_before_the_runner_opened_anything(tmp_path: Path) -> None:
    state = bare_state(tmp_path)
    client = Client(create_app(state))
    for path in ("/v1/findings", "/v1/dead-letters"):
        response = client.get(path)
        assert (response.status_code, response.json()) == (503, {"error": "store not open"}), path
    response = client.get("/v1/rules")
    assert (response.status_code, response.json()) == (503, {"error": "rules not loaded"})
    # a bad since is still the client's fault once the store is there, but not before: 503 comes first
    assert client.get("/v1/findings", since="nonsense").status_code == 503
    assert client.get("/v1/status").json()["detect"] is None
    text = client.get("/metrics").text
    assert "vigil_events_total 0" in text
    for name in ("vigil_findings_total", "vigil_detect_lag_events", "vigil_rules_loaded", "vigil_rule_key"):
        assert name not in text


def test_store_read_failure_is_503_and_metrics_survive(world: World) -> None:
    world.store.close()
    response = world.client.get("/v1/findings")
    assert response.status_code == 503
    assert "read failed: " in response.json()["error"]
    assert world.client.get("/v1/dead-letters").status_code == 503
    samples = scrape(world.client)
    # the detect stage's position and the log's end are kept in memory: the lag needs no store read
    assert samples["vigil_detect_lag_events"] == world.store.last_seq() - world.store.cursor()
    assert samples["vigil_findings_total"] == 4
    detect = world.client.get("/v1/status").json()["detect"]
    assert detect["lag_events"] == samples["vigil_detect_lag_events"] and "store_error" not in detect


# -- /v1/rules --------------------------------------------------------------------------------------------


def test_rules(world: World) -> None:
    response = world.client.get("/v1/rules")
    assert response.status_code == 200
    body = response.json()
    assert body["hash"] == world.ruleset.hash and len(body["hash"]) == 64
    assert body["count"] == 3
    assert [r["id"] for r in body["rules"]] == ["r.login", "r.burst", "r.quiet"]
    login, burst, _ = body["rules"]
    assert login == {
        "id": "r.login",
        "title": "r.login",
        "severity": "high",
        "status": "test",
        "form": "event",
        "kinds": ["generic"],
        "tags": ["attack.initial_access"],
        "path": str(world.rules_path),
        "line": 1,
        "hash": world.ruleset.rules[0].content_hash,
    }
    assert (burst["form"], burst["line"], burst["tags"]) == ("threshold", 9, [])
    assert burst["hash"] and burst["hash"] != login["hash"]
    # warnings are reported as the CLI prints them; r.login has an ATT&CK tag, the others do not
    w202 = [d for d in body["diagnostics"] if " W202 " in d]
    assert w202 == [
        f"{world.rules_path}:9:1: W202 no MITRE ATT&CK tag (attack.<tactic> or attack.tNNNN) (r.burst)",
        f"{world.rules_path}:17:1: W202 no MITRE ATT&CK tag (attack.<tactic> or attack.tNNNN) (r.quiet)",
    ]
    assert body["diagnostics"] == [d.format() for d in world.ruleset.diagnostics]


# -- /metrics and /v1/status ------------------------------------------------------------------------------


def scrape(client: Client) -> dict[str, float]:
    """Every sample by name and labels; checks each family is declared once, HELP then TYPE, before it."""
    response = client.get("/metrics")
    assert response.status_code == 200
    samples: dict[str, float] = {}
    kinds: dict[str, str] = {}
    helped: set[str] = set()
    for line in response.text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert name not in helped, f"{name}: second HELP"
            helped.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name in helped and name not in kinds, f"{name}: TYPE out of place"
            kinds[name] = kind
            continue
        match = METRIC_LINE.match(line)
        assert match, line
        name, labels, value = match.groups()
        assert name in kinds, f"{name} has no TYPE line"
        assert kinds[name] != "counter" or name.endswith("_total"), name
        samples[name + (labels or "")] = float(value)
    return samples


def test_detection_metrics(world: World) -> None:
    samples = scrape(world.client)
    assert samples["vigil_findings_total"] == 4
    assert samples["vigil_detect_events_total"] == 5
    assert samples["vigil_detect_lag_events"] == 2
    assert samples["vigil_late_events_total"] == 1
    assert samples["vigil_open_window_keys"] == 2 == world.detector.open_keys()  # .1 in r.burst and r.quiet
    assert samples["vigil_rules_loaded"] == 3
    for pruned in (
        "vigil_events_pruned_total",
        "vigil_incidents_pruned_total",
        "vigil_findings_pruned_total",
    ):
        assert samples[pruned] == 0  # (the retention tests of the store and the stage count them)
    assert samples['vigil_rule_key_limit_hits_total{rule="r.burst"}'] == 1
    assert not any(name.startswith('vigil_rule_key_limit_hits_total{rule="r.quiet"') for name in samples)
    text = world.client.get("/metrics").text
    assert "# TYPE vigil_findings_total counter" in text
    assert "# TYPE vigil_detect_lag_events gauge" in text
    assert "# TYPE vigil_rule_key_limit_hits_total counter" in text
    # the ingest metrics are still there, under their names
    for name in ("vigil_up", "vigil_events_total", "vigil_dead_letters_total", "vigil_ready"):
        assert name in samples, name

    assert samples["vigil_detect_dead_letters_total"] == 0
    assert not any(name.startswith("vigil_rule_errors_total") for name in samples)
    # a rule that raised, and an event detection failed on (tests/detectors, tests/streams: how they arise)
    world.detector.matcher.errors["r.burst"] += 3
    assert world.state.detect is not None
    world.state.detect.dead_letters += 1
    samples = scrape(world.client)
    assert samples['vigil_rule_errors_total{rule="r.burst"}'] == 3
    assert samples["vigil_detect_dead_letters_total"] == 1
    assert world.client.get("/v1/status").json()["detect"]["rules"]["r.burst"]["errors"] == 3

    # the lag follows the store, the counters the state
    world.store.commit_detection([], 7, None)
    assert world.state.detect is not None
    world.state.detect.new_findings += 1
    samples = scrape(world.client)
    assert samples["vigil_detect_lag_events"] == 0
    assert samples["vigil_findings_total"] == 5


def test_no_key_limit_family_without_hits(world: World) -> None:
    world.state.detector = Detector(world.ruleset.rules)
    text = world.client.get("/metrics").text
    assert "vigil_rule_key_limit_hits_total" not in text
    assert "vigil_late_events_total 0" in text


def test_status_detect(world: World) -> None:
    detect = world.client.get("/v1/status").json()["detect"]
    assert {k: detect[k] for k in ("events", "findings", "new_findings", "snapshots", "replayed")} == {
        "events": 5,
        "findings": 4,
        "new_findings": 4,
        "snapshots": 0,
        "replayed": 0,
    }
    assert (detect["late"], detect["future_clamped"], detect["ancient_clamped"]) == (1, 0, 0)
    assert detect["open_keys"] == 2
    assert detect["watermark_ms"] == ms(180 - 300)
    assert detect["rules"]["r.burst"] == {"keys": 1, "key_limit_hits": 1, "stale_events": 0, "bad_values": 0}
    assert (detect["cursor"], detect["last_seq"], detect["lag_events"]) == (5, 7, 2)
    assert (detect["rules_loaded"], detect["ruleset_hash"]) == (3, world.ruleset.hash)
