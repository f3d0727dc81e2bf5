"""The faust agents of ``vigil worker`` through ``agent.test_context()``: no broker, real stages.

What an agent produces is caught by the app's ``send`` hook (the producer's place); the response engine
behind the act agent is the real one on the local platform (:class:`tests.response.test_engine.Env`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson

from tests.detectors.stateful_helpers import ev, load, poison
from tests.response.test_engine import Env
from vigil.events.model import Event, encode_event
from vigil.response.model import ActionState, idempotency_key
from vigil.rules.model import RuleSet
from vigil.streams.kafka_app import Hooks, KafkaApp
from vigil.streams.kafka_settings import KafkaSettings
from vigil.streams.kafka_stages import Out
from vigil.streams.kafka_state import PartitionDetectors

RULES = """\
id: t.burst
title: three reads of one resource
status: test
severity: high
kind: generic
match: action == "read"
threshold: {count: 3, window: 10m, group_by: [resource.id]}
---
id: t.delete
title: a delete
status: stable
severity: high
author: alice
kind: generic
match: action == "delete"
actions:
  - remediate: lock_storage
    target: "{{ resource.id }}"
    approval: required
"""


class Sent:
    """The send hook: what the agents produced, by topic."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, Out]] = []

    async def __call__(self, topic: str, message: Out) -> None:
        self.messages.append((topic, message))

    def on(self, topic: str) -> list[Out]:
        return [m for t, m in self.messages if t == topic]


def make(tmp_path: Path, sent: Sent, text: str = RULES, **hooks: Any) -> tuple[KafkaApp, RuleSet]:
    rules = load(tmp_path, text)
    settings = KafkaSettings(
        broker="kafka://127.0.0.1:9", batch_within=0.01, state_interval=0, live_timers=False, topic_prefix="t"
    )
    app = KafkaApp(settings, rules, hooks=Hooks(send=sent, **hooks))
    app.app.finalize()
    app.app.flow_control.resume()
    return app, rules


def reads(n: int, resource: str = "/r/1", start: int = 0) -> list[Event]:
    return [ev(f"e{i}", i, action="read", resource=resource) for i in range(start, start + n)]


def test_normalise_keys_events_by_resource_and_dead_letters_with_reasons(tmp_path: Path) -> None:
    sent = Sent()
    app, _ = make(tmp_path, sent)

    async def main() -> None:
        async with app.normalise_agent.test_context() as agent:
            body = encode_event(ev("e1", 0, resource="/r/9")) + b"\n" + encode_event(ev("e2", 1, node="n7"))
            await agent.put(body, key=b"any")
            await agent.put(b'{"kind": "generic", "action": "x"}', key=b"any")

    asyncio.run(main())
    assert [(m.key, orjson.loads(m.value)["id"]) for m in sent.on("t-events")] == [
        (b"/r/9", "e1"),
        (b"n7", "e2"),
    ]
    [letter] = sent.on("t-deadletter")
    body = orjson.loads(letter.value)
    assert body["reason"] and body["source"].startswith("kafka:")


def test_detect_counts_windows_and_proposes_actions_keyed_by_target(tmp_path: Path) -> None:
    sent = Sent()
    app, _ = make(tmp_path, sent)
    events = [*reads(3), ev("d1", 5, action="delete", resource="/r/2")]

    async def main() -> None:
        async with app.detect_agent.test_context() as agent:
            for e in events:
                await agent.put(encode_event(e), key=(e.resource.id or e.id).encode(), partition=0)
            assert agent.results  # one result per batch taken

    asyncio.run(main())
    findings = [orjson.loads(m.value) for m in sent.on("t-findings")]
    assert [(f["rule"], f["event_ids"]) for f in findings] == [("t.burst", ["e2"]), ("t.delete", ["d1"])]
    [intent] = sent.on("t-intents")
    assert intent.key == b"/r/2" and orjson.loads(intent.value)["target"] == "/r/2"
    assert len(sent.on("t-alerts")) == 2
    assert PartitionDetectors.covered(app.state.data[b"0"]) == 3  # saved through the last offset


def test_detect_restores_a_partition_from_the_table_and_skips_what_it_covers(tmp_path: Path) -> None:
    first_sent, second_sent = Sent(), Sent()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, _ = make(tmp_path / "a", first_sent)
    second, _ = make(tmp_path / "b", second_sent)

    async def main() -> None:
        async with first.detect_agent.test_context() as agent:
            for e in reads(2):
                await agent.put(encode_event(e), partition=1)
        # the changelog's content, as recovery would put it in the next owner's table
        second.state.data[b"1"] = first.state.data[b"1"]
        async with second.detect_agent.test_context() as agent:
            # offsets 0 and 1 again (re-delivered past the committed offset): already in the state
            for e in reads(2):
                await agent.put(encode_event(e), partition=1)
            # the same event id at a new offset (published twice upstream): counted once
            await agent.put(encode_event(reads(1, start=1)[0]), partition=1)
            await agent.put(encode_event(reads(1, start=2)[0]), partition=1)

    asyncio.run(main())
    assert first_sent.on("t-findings") == []
    [found] = [orjson.loads(m.value) for m in second_sent.on("t-findings")]
    assert found["event_ids"] == ["e2"]  # the third read: the window carried over, nothing twice
    assert second.detectors.skipped == 2 and second.detectors.duplicates == 1


def test_act_submits_intents_to_the_response_engine_once_per_idempotency_key(tmp_path: Path) -> None:
    env = Env(tmp_path / "env")
    sent = Sent()

    async def main() -> list[Any]:
        engine = await env.start(nodes=0)
        app, _ = make(tmp_path, sent, submit=engine.submit)
        intent = {
            "rule": "t.delete",
            "action": 0,
            "finding": "f1",
            "target": "/r/2",
            "time_ms": 1_767_225_600_000,
        }
        async with app.act_agent.test_context() as agent:
            await agent.put(orjson.dumps(intent), key=b"/r/2")
            await agent.put(orjson.dumps(intent | {"finding": "f2"}), key=b"/r/2")  # same window: same action
            await agent.put(orjson.dumps(intent | {"rule": "gone"}), key=b"/r/2")
        actions = engine.list(limit=10)
        await env.close()
        return actions

    [action] = asyncio.run(main())
    assert action.state is ActionState.PENDING_APPROVAL and action.target == "/r/2"
    window = 1_767_225_600_000 - 1_767_225_600_000 % (3600 * 1000)
    assert action.id == idempotency_key("t.delete", "/r/2", "lock_storage", window)
    [letter] = sent.on("t-deadletter")
    assert "not loaded" in orjson.loads(letter.value)["reason"]


TEMPLATED = """\
id: t.lock
title: lock as the event says
status: stable
severity: high
author: alice
kind: generic
match: action == "lock"
actions:
  - remediate: lock_storage
    target: "{{ resource.id }}"
    approval: required
    params: {lock: "{{ raw.mode }}"}
"""


def test_templated_params_cross_kafka_resolved_and_keep_actions_apart(tmp_path: Path) -> None:
    """The detect agent resolves templated parameters into the intent (the act agent has no event to read
    them from); two values on one target become two actions."""
    env = Env(tmp_path / "env")
    sent = Sent()
    events = [
        ev("l1", 1, action="lock", resource="/r/3", raw={"mode": "no_access"}),
        ev("l2", 2, action="lock", resource="/r/3", raw={"mode": "read_only"}),
    ]

    async def main() -> list[Any]:
        engine = await env.start(nodes=0)
        app, _ = make(tmp_path, sent, TEMPLATED, submit=engine.submit)
        async with app.detect_agent.test_context() as agent:
            for e in events:
                await agent.put(encode_event(e), key=b"/r/3", partition=0)
        async with app.act_agent.test_context() as agent:
            for intent in sent.on("t-intents"):
                await agent.put(intent.value, key=intent.key)
        actions = engine.list(limit=10)
        await env.close()
        return actions

    actions = asyncio.run(main())
    intents = [orjson.loads(m.value) for m in sent.on("t-intents")]
    assert [(i["params"], i["binding"]) for i in intents] == [
        ({"lock": "no_access"}, "lock=no_access"),
        ({"lock": "read_only"}, "lock=read_only"),
    ]
    assert sorted((a.target, a.params["lock"], a.state.value) for a in actions) == [
        ("/r/3", "no_access", "pending_approval"),
        ("/r/3", "read_only", "pending_approval"),
    ]


def test_detect_dead_letters_an_event_detection_fails_on_and_the_partition_moves_on(tmp_path: Path) -> None:
    """Reliability A11 on the Kafka path: the message becomes a dead letter, its offset counts as done."""
    from vigil.streams.kafka_stages import Detect

    rules = load(tmp_path, RULES)
    detectors = PartitionDetectors(rules.rules, load=lambda partition: None)
    stage = Detect(rules, detectors)
    poison(detectors.part(0).detector, "e1")
    out = [stage.run(0, offset, encode_event(e)) for offset, e in enumerate(reads(4), start=1)]
    [letter] = out[1]
    assert letter.topic == "deadletter" and letter.key == b"kafka:events/0@2"
    body = orjson.loads(letter.value)
    assert body["reason"] == "detection failed: ZeroDivisionError: a bug" and body["record"]["id"] == "e1"
    assert stage.failed == 1 and detectors.part(0).offset == 4
    assert [orjson.loads(m.value)["event_ids"] for m in out[3] if m.topic == "findings"] == [["e3"]]
