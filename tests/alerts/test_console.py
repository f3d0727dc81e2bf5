"""The console sink: JSON Lines appended and fsynced to a file (0600) or written to stdout; a failed write
is a retry, never a lost alert."""

from __future__ import annotations

import asyncio
import json
import stat
import threading
from pathlib import Path

import httpx
import pytest

from tests.alerts.fakes import deliver, sample_alert
from vigil.alerts.console import ConsoleSink
from vigil.alerts.model import Alert, AlertKind, Delivery, sinks
from vigil.alerts.webhook import WebhookSink


def send(sink: ConsoleSink, alert: Alert | None = None) -> Delivery:
    return asyncio.run(deliver(sink, alert or sample_alert()))


def test_registered_under_console_without_limits() -> None:
    assert sinks.get("console") is ConsoleSink
    assert (ConsoleSink.per_second, ConsoleSink.per_hour) == (None, None)


def test_appends_one_json_line_per_alert(tmp_path: Path) -> None:
    path = tmp_path / "alerts" / "alerts.jsonl"  # the folder is created on first write
    sink = ConsoleSink("console", {"path": path})  # settings give a Path
    alerts = [sample_alert(), sample_alert(kind=AlertKind.RESOLVE)]
    assert [send(sink, a).outcome for a in alerts] == ["sent", "sent"]
    lines = path.read_bytes().splitlines()
    assert len(lines) == 2 and path.read_bytes().endswith(b"\n")
    docs = [json.loads(line) for line in lines]
    assert [Alert.from_json(doc) for doc in docs] == alerts
    assert all(doc["version"] == 1 for doc in docs)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # alerts describe security findings


def test_same_document_as_the_webhook(tmp_path: Path) -> None:
    hook = WebhookSink("h", {"url": "https://receiver.example/in", "secret": "s"})
    assert ConsoleSink("c", {"path": str(tmp_path / "a.jsonl")}).render(sample_alert()) == hook.render(
        sample_alert()
    )


def test_existing_content_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    path.write_bytes(b'{"earlier": true}\n')
    send(ConsoleSink("console", {"path": str(path)}))
    assert path.read_bytes().startswith(b'{"earlier": true}\n') and len(path.read_bytes().splitlines()) == 2


def test_concurrent_sends_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    sink = ConsoleSink("console", {"path": str(path)})
    big = sample_alert(details={"blob": "x" * 200_000})

    async def many() -> list[Delivery]:
        async with httpx.AsyncClient() as client:
            return list(await asyncio.gather(*(sink.send(client, big) for _ in range(8))))

    def other_sink() -> None:  # a second sink object on the same file, from another thread
        send(ConsoleSink("other", {"path": str(path)}), big)

    thread = threading.Thread(target=other_sink)
    thread.start()
    results = asyncio.run(many())
    thread.join()
    assert {d.outcome for d in results} == {"sent"}
    lines = path.read_bytes().splitlines()
    assert len(lines) == 9 and all(json.loads(line)["details"]["blob"] == "x" * 200_000 for line in lines)


@pytest.mark.parametrize("path", [None, "", "-"])
def test_no_path_writes_to_stdout(path: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    assert send(ConsoleSink("console", {"path": path})).outcome == "sent"
    out = capsys.readouterr().out
    assert out.endswith("\n") and Alert.from_json(json.loads(out)) == sample_alert()


def test_a_failed_write_is_retry(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the folder should be")
    delivery = send(ConsoleSink("console", {"path": str(blocker / "alerts.jsonl")}))
    assert delivery.outcome == "retry" and "cannot write to" in delivery.reason
    assert delivery.reason.count("\n") == 0


def test_a_directory_as_path_is_retry(tmp_path: Path) -> None:
    delivery = send(ConsoleSink("console", {"path": str(tmp_path)}))
    assert delivery.outcome == "retry" and "IsADirectoryError" in delivery.reason


def test_an_alert_that_is_not_json_is_dead(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    delivery = send(ConsoleSink("console", {"path": str(path)}), sample_alert(details={"x": object()}))
    assert delivery.outcome == "dead" and not path.exists()


def test_repr_shows_only_the_name(tmp_path: Path) -> None:
    assert repr(ConsoleSink("console", {"path": str(tmp_path / "a.jsonl")})) == "ConsoleSink('console')"
