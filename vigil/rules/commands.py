"""The rule commands of the CLI: ``vigil rules lint|test|new|explain`` and ``vigil replay``.

Exit codes follow ``vigil.cli``: 0 clean, 1 problems found (lint errors, failed cases, ``--strict``
warnings), 2 usage errors. Diagnostics go to stdout (they are the command's output), summaries to stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from vigil.rules.diagnostics import has_errors, render_json, render_text

DEFAULT_RULES = "rules"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_parsers(sub: Any) -> None:
    """Register ``rules`` and ``replay`` on the top-level subparsers."""
    rules = sub.add_parser("rules", help="lint, test, scaffold and explain detection rules")
    rsub = rules.add_subparsers(dest="rules_command", metavar="SUBCOMMAND")
    rsub.required = True

    lint = rsub.add_parser("lint", help="check rule files; every problem as path:line:col: CODE message")
    lint.add_argument(
        "paths", nargs="*", metavar="PATH", help=f"rule files or folders (default: {DEFAULT_RULES}/)"
    )
    lint.add_argument(
        "--overlay", action="append", default=[], metavar="FILE", help="environment overlay file"
    )
    lint.add_argument("--format", choices=("text", "json"), default="text", help="diagnostics format")
    lint.add_argument("--strict", action="store_true", help="warnings fail too")

    test = rsub.add_parser("test", help="run every rule's embedded test cases through the engine")
    test.add_argument(
        "paths", nargs="*", metavar="PATH", help=f"rule files or folders (default: {DEFAULT_RULES}/)"
    )
    test.add_argument(
        "--overlay", action="append", default=[], metavar="FILE", help="environment overlay file"
    )
    test.add_argument("--rule", action="append", default=[], metavar="ID", help="only this rule (repeatable)")
    test.add_argument("-v", "--verbose", action="store_true", help="print passing cases too")

    new = rsub.add_parser("new", help="scaffold a rule with a positive and a negative test case")
    new.add_argument("kind", metavar="KIND", help="event kind, e.g. azure.keyvault (see docs/events.md)")
    new.add_argument("--id", dest="rule_id", metavar="ID", help="rule id (default: derived from the kind)")
    new.add_argument(
        "--output", metavar="FILE", help="write to FILE (refuses to overwrite) instead of stdout"
    )

    explain = rsub.add_parser("explain", help="show which clause of a rule held or failed for each event")
    explain.add_argument("--rules", default=DEFAULT_RULES, metavar="PATH", help="rule files or folder")
    explain.add_argument("rule_id", metavar="RULE_ID")
    explain.add_argument("event_file", metavar="EVENT_FILE", help="source records or canonical events")
    explain.add_argument(
        "--format", dest="fmt", default="auto", metavar="NAME", help="input format (default: auto)"
    )
    explain.add_argument(
        "--advance",
        type=_duration_arg,
        metavar="DURATION",
        help="after the events, move event time this far so flatlines and absent steps can fire",
    )

    rp = sub.add_parser("replay", help="normalise files and evaluate rules over them; findings as JSON Lines")
    rp.add_argument("files", nargs="+", metavar="FILE", help="input files; - reads standard input")
    rp.add_argument("--rules", default=DEFAULT_RULES, metavar="PATH", help="rule files or folder")
    rp.add_argument("--overlay", action="append", default=[], metavar="FILE", help="environment overlay file")
    rp.add_argument(
        "--format", dest="fmt", default="auto", metavar="NAME", help="input format (default: auto)"
    )
    rp.add_argument("--stats", action="store_true", help="print a JSON statistics object to stderr")
    rp.add_argument(
        "--lateness",
        default="5m",
        type=_duration_arg,
        metavar="DURATION",
        help="allowed lateness of event time (default: 5m); later events are counted and clamped",
    )
    rp.add_argument(
        "--advance",
        type=_duration_arg,
        metavar="DURATION",
        help="at the end, move event time this far past the last event so pending flatlines and absent "
        "steps fire (default: leave them pending)",
    )
    rp.add_argument(
        "--state",
        metavar="FILE",
        help="load detector state (open windows, sequences, flatlines) from FILE if it exists, save it back",
    )


def _duration_arg(text: str) -> str:
    from vigil.rules.schema_forms import parse_duration

    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def run(args: argparse.Namespace) -> int:
    """Dispatch a parsed ``rules``/``replay`` command."""
    if args.command == "replay":
        return _replay(args)
    handler = {"lint": _lint, "test": _test, "new": _new, "explain": _explain}[args.rules_command]
    return handler(args)


def _load(paths: list[str], overlays: list[str]) -> Any:
    from vigil.rules.loader import load_rules

    return load_rules(paths or [DEFAULT_RULES], overlays=overlays)


def _lint(args: argparse.Namespace) -> int:
    from vigil.rules.lint import lint

    ruleset = _load(args.paths, args.overlay)
    diagnostics = list(ruleset.diagnostics) + lint(ruleset, strict=args.strict)
    if args.format == "json":
        print(render_json(diagnostics))
    elif diagnostics:
        print(render_text(diagnostics))
    errors = sum(1 for d in diagnostics if d.severity == "error")
    warnings = len(diagnostics) - errors
    print(f"{len(ruleset.rules)} rules loaded, {errors} errors, {warnings} warnings", file=sys.stderr)
    if has_errors(diagnostics) or (args.strict and warnings):
        return EXIT_FAILED
    return EXIT_OK


def _test(args: argparse.Namespace) -> int:
    from vigil.rules.testing import run_tests

    ruleset = _load(args.paths, args.overlay)
    if not ruleset.ok:
        print(render_text(d for d in ruleset.diagnostics if d.severity == "error"))
        print("rule files have errors; fix them first (vigil rules lint)", file=sys.stderr)
    wanted = set(args.rule) if args.rule else None
    if wanted:
        unknown = wanted - {r.id for r in ruleset.rules}
        if unknown:
            print(f"vigil: unknown rule id(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return EXIT_USAGE
    results = run_tests(ruleset, wanted)
    for res in results:
        if args.verbose or not res.passed:
            print(res.describe())
    failed = sum(1 for r in results if not r.passed)
    print(f"{len(results) - failed} passed, {failed} failed")
    return EXIT_FAILED if failed or not ruleset.ok else EXIT_OK


def _explain(args: argparse.Namespace) -> int:

    from vigil.detectors.engine import Detector
    from vigil.detectors.match import Matcher
    from vigil.events.batch import BatchNormalizer

    ruleset = _load([args.rules], [])
    rule = ruleset.get(args.rule_id)
    if rule is None:
        print(f"vigil: no rule {args.rule_id!r} loaded from {args.rules}", file=sys.stderr)
        return EXIT_USAGE
    # what is explained clause by clause: the rule's filter, or each step of a sequence
    filters = [(f"rule {rule.id}", rule)]
    if rule.sequence is not None:
        filters = [
            (
                f"step {i + 1}" + (f" ({step.name})" if step.name != f"step {i + 1}" else ""),
                rule.step_filter(i),
            )
            for i, step in enumerate(rule.sequence.steps)
            if step.expr is not None
        ]
    result = BatchNormalizer(args.fmt).body(Path(args.event_file).read_bytes(), args.event_file)
    print(f"rule {rule.id} ({rule.path}:{rule.line}), form {rule.form}: {_form_summary(rule)}")
    for event in result.events:
        print(f"\nevent {event.id} kind={event.kind} action={event.action} time={event.time.isoformat()}")
        for label, part in filters:
            _explain_filter(label, part, event, Matcher([part]))
    if rule.form != "event" or rule.suppress is not None:
        detector = Detector([r for r in ruleset.rules if r.id == rule.id or _referenced(rule, r.id)])
        found = [f for e in result.events for f in detector.process(e) if f.rule == rule.id]
        if args.advance:
            from vigil.rules.schema_forms import parse_duration

            found += [f for f in detector.advance(parse_duration(args.advance)) if f.rule == rule.id]
        print(f"\nover these events, in the order given: {len(found)} finding(s) of {rule.id}")
        for f in found:
            value = f" value={f.value:g}" if f.value is not None else ""
            print(f"  {f.time.isoformat()} group={dict(f.group)} events={list(f.event_ids)}{value}")
    for dl in result.dead:
        print(f"\ndead letter {dl.location()}: {dl.reason}")
    return EXIT_OK


def _explain_filter(label: str, rule: Any, event: Any, matcher: Any) -> None:
    if rule.kinds and event.kind not in rule.kinds:
        print(f"  {label}: kind {event.kind!r} is not one of {sorted(rule.kinds)}: not evaluated")
        return
    candidate = bool(matcher.candidates(event))
    print(f"  {label}: {rule.expr.text.strip()}")
    if not candidate:
        print("    the index rules it out: it fails a required ==, in or startswith clause (see below)")
    for clause, value, error in rule.expr.explain(event):
        mark = "ERROR" if error else ("true " if value else "false")
        print(f"    {mark}  {clause}" + (f"  ({error})" if error else ""))
    print(f"    => {'MATCH' if candidate and matcher.match(event) else 'no match'}")


def _referenced(rule: Any, rule_id: str) -> bool:
    return rule.sequence is not None and any(s.rule_id == rule_id for s in rule.sequence.steps)


def _dur(delta: Any) -> str:
    """A timedelta the way rules write it: 90s, 5m, 1h30m, 7d."""
    left = int(delta.total_seconds())
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            parts.append(f"{left // size}{unit}")
            left %= size
    return "".join(parts) or "0s"


def _form_summary(rule: Any) -> str:
    """One line for the stateful part of a rule (what a match feeds)."""
    if rule.threshold is not None:
        t = rule.threshold
        measure = t.measure if t.field is None else f"{t.measure} of {t.field}"
        bounds = " and ".join(
            b
            for b in (
                f">= {t.at_least:g}" if t.at_least is not None else "",
                f"<= {t.at_most:g}" if t.at_most is not None else "",
            )
            if b
        )
        return f"{measure} {bounds} within {_dur(t.window)} per {list(t.group_by) or 'everything'}"
    if rule.sequence is not None:
        steps = " then ".join(("not " if s.absent else "") + s.name for s in rule.sequence.steps)
        return f"{steps}, within {_dur(rule.sequence.within)}, joined by {list(rule.sequence.steps[0].by)}"
    if rule.flatline is not None:
        return f"silent for {_dur(rule.flatline.period)} per {list(rule.flatline.group_by)}"
    return str(rule.expr.text.strip())


def _replay(args: argparse.Namespace) -> int:
    from vigil.detectors.engine import Detector
    from vigil.detectors.finding import Finding
    from vigil.events.deadletter import DeadLetter, DeadLetterWriter
    from vigil.rules.schema_forms import parse_duration
    from vigil.runtime import tune_gc
    from vigil.streams.replay import replay

    ruleset = _load([args.rules], args.overlay)
    if not ruleset.ok:
        print(render_text(d for d in ruleset.diagnostics if d.severity == "error"), file=sys.stderr)
        print("vigil: the rule files have errors (see vigil rules lint); nothing replayed", file=sys.stderr)
        return EXIT_FAILED
    tune_gc()
    out = sys.stdout.buffer
    dead = DeadLetterWriter(sys.stderr.buffer)

    def write_findings(found: list[Finding]) -> None:
        out.write(b"".join(_finding_json(f) + b"\n" for f in found))

    def write_dead(letters: list[DeadLetter]) -> None:
        dead.write(letters)

    detector = Detector(ruleset.rules, lateness=parse_duration(args.lateness))
    if args.state:
        from vigil.detectors.snapshot import load

        report = load(detector, args.state)
        if report is not None and args.stats:
            print(
                f"vigil: restored {report.keys} keys of {report.rules} rules from {args.state}"
                + (f"; dropped (rule changed): {', '.join(report.dropped)}" if report.dropped else ""),
                file=sys.stderr,
            )
    advance = parse_duration(args.advance) if args.advance else None
    stats = replay(
        args.files, detector, fmt=args.fmt, on_findings=write_findings, on_dead=write_dead, advance=advance
    )
    if args.state:
        from vigil.detectors.snapshot import save

        save(detector, args.state)
    out.flush()
    if args.stats:
        sys.stderr.write(orjson.dumps(stats.to_dict()).decode() + "\n")
    return EXIT_OK


def _finding_json(finding: Any) -> bytes:
    from vigil.events.model import encode_event

    return encode_event(finding)


def scaffold(kind: str, rule_id: str | None = None) -> str:
    """The YAML text of a new rule for ``kind``, with one positive and one negative case."""
    from vigil.rules.templates import template_for

    return template_for(kind, rule_id)


def _new(args: argparse.Namespace) -> int:
    from vigil.events.model import KINDS

    if args.kind not in KINDS:
        print(f"vigil: unknown kind {args.kind!r}; known: {', '.join(sorted(KINDS))}", file=sys.stderr)
        return EXIT_USAGE
    text = scaffold(args.kind, args.rule_id)
    if args.output:
        path = Path(args.output)
        if path.exists():
            print(f"vigil: {path} exists; not overwriting", file=sys.stderr)
            return EXIT_FAILED
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}; next: vigil rules test {path}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK
