"""``vigil alerts test SINK``: one sample alert straight to a configured sink, and the answer printed."""

from __future__ import annotations

from pathlib import Path

from tests.alerts.fakes import ROUTING_KEY, FakePagerDuty
from tests.conftest import run_vigil


def _profile(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "profile.yaml"
    path.write_text(
        f"data_dir: var\nalerts:\n  pagerduty:\n    routing_key: {ROUTING_KEY}\n    url: {url}\n",
        encoding="utf-8",
    )
    return path


def test_a_test_alert_reaches_pagerduty_and_its_resolve_closes_it(tmp_path: Path) -> None:
    with FakePagerDuty() as pagerduty:
        profile = _profile(tmp_path, pagerduty.enqueue_url)
        sent = run_vigil("alerts", "--config", str(profile), "test", "pagerduty", cwd=tmp_path)
        assert sent.returncode == 0, sent.stderr
        assert sent.stdout.decode().strip() == "pagerduty: sent (HTTP 202)"
        resolved = run_vigil(
            "alerts", "--config", str(profile), "test", "pagerduty", "--resolve", cwd=tmp_path
        )
        assert resolved.returncode == 0, resolved.stderr
        [incident] = pagerduty.incidents_for("vigil-test-alert")
        assert [e["event_action"] for e in incident.events] == ["trigger", "resolve"]
        assert ROUTING_KEY.encode() not in sent.stdout + sent.stderr


def test_an_unreachable_sink_is_reported_and_an_unconfigured_one_names_the_configured(tmp_path: Path) -> None:
    profile = _profile(tmp_path, "http://127.0.0.1:9/v2/enqueue")  # discard port: nothing listens
    down = run_vigil("alerts", "--config", str(profile), "test", "pagerduty", cwd=tmp_path)
    assert down.returncode == 1 and down.stdout.decode().startswith("pagerduty: retry"), down
    missing = run_vigil("alerts", "--config", str(profile), "test", "teams", cwd=tmp_path)
    assert missing.returncode == 2
    assert b"not configured (configured: console, pagerduty)" in missing.stderr
