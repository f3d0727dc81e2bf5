"""Benchmark: ``vigil replay``'s in-process path (parse, normalise, indexed match) against naive rule-engine.

Generates 100,000 Activity Log records (``gen_activity.py``) and rule sets of 100 and 1,000 single-event
rules built from eq / in / contains / startswith / endswith / not clauses, each matching a small share of
events. For each size it:

1. writes the rules as YAML and loads them with Vigil's loader (compiled, indexed);
2. runs the replay path over the records file: events/s end to end (CPU time, median of repetitions);
3. runs the naive baseline — one ``rule_engine.Rule`` per rule, in rule-engine's own syntax, every rule on
   every event (the canonical event as a dict) — on a sample of events big enough to time;
4. checks that both find exactly the same (event, rule) matches on the sample, and prints the ratios.

Run: ``make bench`` or ``.venv/bin/python bench/rules.py [--records N] [--repeat R] [--sample S]``.
Targets (issue 3): 1,000 rules >= 150x naive, >= 50,000 events/s end to end, and 1,000-rule throughput
>= 60% of 100-rule throughput.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import msgspec
import orjson
import rule_engine

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gen_activity import OPERATIONS, lines

from vigil.detectors.engine import Detector
from vigil.detectors.match import Matcher
from vigil.events.batch import BatchNormalizer
from vigil.events.model import Event
from vigil.rules.loader import load_rules
from vigil.runtime import tune_gc
from vigil.streams.replay import replay

ACTIONS = [op.lower() for op, _, _ in OPERATIONS]


def _clause(rnd: random.Random) -> tuple[str, str]:
    """One selective clause as (Vigil expression, rule-engine expression) over the canonical event."""
    choice = rnd.randrange(5)
    if choice == 0:
        ip = f"203.0.113.{rnd.randrange(256)}"
        return f'actor.ip == "{ip}"', f'actor["ip"] == "{ip}"'
    if choice == 1:
        groups = [f"rg-team{rnd.randrange(10):02d}" for _ in range(2)]
        return (
            f"resource.group in {orjson.dumps(groups).decode()}",
            f'resource["group"] in {orjson.dumps(groups).decode()}',
        )
    if choice == 2:
        suffix = f"{rnd.randrange(50):04d}"[-2:]
        return f'endswith(resource.name, "{suffix}")', f'resource["name"] =~ "^.*{re.escape(suffix)}$"'
    if choice == 3:
        part = f"{rnd.randrange(16):x}{rnd.randrange(16):x}{rnd.randrange(16):x}"
        return f'contains(actor.id, "{part}")', f'"{part}" in actor["id"]'
    prefix = f"u{rnd.randrange(16):x}{rnd.randrange(16):x}"
    return f'startswith(actor.name, "{prefix}")', f'actor["name"] =~ "^{re.escape(prefix)}"'


def _negation(rnd: random.Random) -> tuple[str, str]:
    outcome = rnd.choice(["success", "failure", "unknown"])
    return f'not (outcome == "{outcome}")', f'not (outcome == "{outcome}")'


def make_rules(n: int, seed: int = 5) -> list[tuple[str, str, str]]:
    """``n`` rules as (id, Vigil expression, rule-engine expression)."""
    rnd = random.Random(seed)
    rules = []
    for i in range(n):
        shape = rnd.randrange(10)
        if shape < 6:  # action == X and <clause> and <clause>
            action = rnd.choice(ACTIONS)
            head_v = head_r = f'action == "{action}"'
        elif shape < 8:  # action in [X, Y] and ...
            acts = rnd.sample(ACTIONS, 2)
            head_v = head_r = f"action in {orjson.dumps(acts).decode()}"
        else:  # startswith(action, namespace) and ...
            ns = rnd.choice(ACTIONS).split("/")[0] + "/"
            head_v, head_r = f'startswith(action, "{ns}")', f'action =~ "^{re.escape(ns)}"'
        c1v, c1r = _clause(rnd)
        c2v, c2r = _clause(rnd) if rnd.random() < 0.5 else _negation(rnd)
        rules.append((f"bench.r{i:04d}", f"{head_v} and {c1v} and {c2v}", f"{head_r} and {c1r} and {c2r}"))
    return rules


def write_rules(rules: list[tuple[str, str, str]], folder: Path) -> None:
    docs = []
    for rid, expr, _ in rules:
        docs.append(
            f"id: {rid}\ntitle: bench {rid}\nstatus: test\nseverity: low\nkind: azure.activity\n"
            f"match: {orjson.dumps(expr).decode()}\n"
        )
    (folder / "bench.yaml").write_text("---\n".join(docs))


def _as_dict(obj: object) -> object:
    """The event as plain data with every field present (defaults included, unlike its JSON form)."""
    if isinstance(obj, msgspec.Struct):
        return {f: _as_dict(getattr(obj, f)) for f in obj.__struct_fields__}
    if isinstance(obj, Mapping):
        return {k: _as_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_as_dict(v) for v in obj]
    return obj


def naive(rules: list[tuple[str, str, str]], events: list[Event]) -> tuple[float, set[tuple[str, str]]]:
    ctx = rule_engine.Context(default_value=None)
    compiled = [(rid, rule_engine.Rule(text, context=ctx)) for rid, _, text in rules]
    dicts = [(e.id, _as_dict(e)) for e in events]
    hits: set[tuple[str, str]] = set()
    t0 = time.process_time()
    for eid, data in dicts:
        for rid, rule in compiled:
            if rule.matches(data):
                hits.add((eid, rid))
    return time.process_time() - t0, hits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--sample", type=int, default=300, help="events for the naive baseline")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    tune_gc()
    report: dict[str, object] = {"records": args.records}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "activity.jsonl"
        data.write_bytes(b"".join(lines(args.records)))
        sample = BatchNormalizer().body(b"".join(lines(args.sample, seed=99)), "sample").events
        sizes = (100, 1000)
        matchers: dict[int, Matcher] = {}
        detectors: dict[int, Detector] = {}
        generated: dict[int, list[tuple[str, str, str]]] = {}
        for n in sizes:
            generated[n] = make_rules(n)
            folder = Path(tmp) / f"rules{n}"
            folder.mkdir()
            write_rules(generated[n], folder)
            t0 = time.perf_counter()
            ruleset = load_rules([folder])
            report[f"load_s_{n}"] = time.perf_counter() - t0
            if not ruleset.ok:
                raise SystemExit("\n".join(d.format() for d in ruleset.diagnostics[:10]))
            detectors[n] = Detector(ruleset.rules)
            matchers[n] = detectors[n].matcher
        # Paired repetitions: both sizes back to back, so each scaling ratio sees the same machine load.
        runs: dict[int, list[float]] = {n: [] for n in sizes}
        findings: dict[int, int] = {}
        for _ in range(args.repeat):
            for n in sizes:
                t0 = time.process_time()
                stats = replay([str(data)], detectors[n])
                runs[n].append(time.process_time() - t0)
                findings[n] = stats.findings
        for n in sizes:
            matcher = matchers[n]
            rate = args.records / statistics.median(runs[n])
            naive_s, naive_hits = naive(generated[n], sample)
            naive_rate = len(sample) / naive_s
            ours = {(e.id, f.rule) for e in sample for f in matcher.match(e)}
            same = ours == naive_hits
            print(
                f"{n:5d} rules: load {report[f'load_s_{n}']:.2f} s; replay {rate:,.0f} events/s end to end "
                f"({findings[n]} findings, {len(matcher.unindexed)} unindexed rules); "
                f"naive rule-engine {naive_rate:,.1f} events/s on {len(sample)} events; "
                f"ratio {rate / naive_rate:,.0f}x; same matches on the sample: {same} ({len(ours)})"
            )
            if not same:
                only_ours, only_naive = sorted(ours - naive_hits)[:5], sorted(naive_hits - ours)[:5]
                raise SystemExit(f"mismatch: only ours {only_ours}, only naive {only_naive}")
            report[f"rules_{n}"] = {
                "events_per_s": rate,
                "naive_events_per_s": naive_rate,
                "ratio": rate / naive_rate,
                "findings": findings[n],
                "runs_s": runs[n],
            }
        scaling = statistics.median(a / b for a, b in zip(runs[100], runs[1000], strict=True))
        print(f"1,000-rule throughput = {scaling:.0%} of 100-rule (median of paired runs; target >= 60%)")
        report["scaling"] = scaling
    if args.json:
        Path(args.json).write_text(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
