"""The ``vigil`` command line: ``vigil run``, ``vigil normalize`` (more subcommands arrive with later issues).

Exit codes: 0 success; 1 ``--strict`` saw dead letters, or the daemon stopped on an error; 2 usage or
configuration error (the message names the file, line and key).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import IO

from vigil import __version__
from vigil.errors import ConfigError, RegistryError, VigilError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

NORMALIZE_EPILOG = """\
Input: JSON Lines, one JSON document (object or array, pretty-printed or not), or Event Hubs / diagnostic
settings envelopes {"records": [...]}; every line may itself be an array or an envelope. The format is
detected per record unless --format names one (see --list-formats).

Output: one canonical event per line (JSON) on stdout. Records that cannot be normalised are never dropped:
each becomes a dead letter (source, line, byte offset, index inside the line, reason, and the record
itself) written as JSON Lines to --dead-letter FILE (appended) or, by default, to stderr. A summary line
"N events, M dead-lettered" goes to stderr.

Examples:
  vigil normalize activity.jsonl > events.jsonl
  vigil normalize --dead-letter bad.jsonl --strict hub-dump/*.json
  cat body.json | vigil normalize --format eventgrid -
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="vigil",
        description="Vigil: security monitoring and auto-remediation for confidential ML platforms.",
    )
    parser.add_argument("--version", action="version", version=f"vigil {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser(
        "run",
        help="start the daemon on a settings profile (default: the embedded platform, config/local.yaml)",
        description="Start the Vigil daemon: HTTP ingestion (POST /v1/events and the Event Grid, Azure "
        "Monitor and Sentinel webhooks), the drop folder and followed JSONL files, all into a durable store; "
        "every rule of detect.rules over the stored events (findings and incidents exactly once, hot reload "
        "of the rules); the read API (/v1/findings, /v1/incidents, /v1/rules) and /healthz, /readyz, "
        "/metrics; the local platform with its attestation service, the response engine and the alert sinks; "
        "with nodes.local, that many attested training nodes (make run starts two); with azure.enabled, the "
        "Azure providers and the Event Hubs and Sentinel sources (docs/azure.md). Send events with the token "
        "in {data_dir}/ingest.token; see docs/daemon.md.",
    )
    run.add_argument(
        "--config",
        metavar="FILE",
        help="YAML settings profile (default: $VIGIL_CONFIG or "
        "config/local.yaml); VIGIL_* environment variables override it",
    )

    from vigil.rules.commands import add_parsers

    add_parsers(sub)

    from vigil.platform.command_args import add_parsers as add_platform_parsers

    add_platform_parsers(sub)

    from vigil.audit.commands import add_commands as add_audit_commands

    add_audit_commands(sub)

    from vigil.response.commands import add_parsers as add_action_parsers

    add_action_parsers(sub)

    from vigil.alerts.commands import add_parsers as add_alert_parsers

    add_alert_parsers(sub)

    from vigil.training_node.commands import add_parsers as add_node_parsers

    add_node_parsers(sub)

    from vigil.training_node.demo import add_parsers as add_demo_parsers

    add_demo_parsers(sub)

    from vigil.streams.kafka_worker import add_parsers as add_worker_parsers

    add_worker_parsers(sub)

    norm = sub.add_parser(
        "normalize",
        help="turn source records (Azure logs, Sentinel, Event Grid, attestation, telemetry) into events",
        description="Normalise security records into Vigil's canonical event model.",
        epilog=NORMALIZE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    norm.add_argument("files", nargs="*", metavar="FILE", help="input files; - reads standard input")
    norm.add_argument(
        "--format",
        default="auto",
        metavar="NAME",
        help="source format, or auto to detect it per record (default: auto)",
    )
    norm.add_argument(
        "--dead-letter", metavar="FILE", help="append dead letters to FILE as JSON Lines (default: stderr)"
    )
    norm.add_argument("--strict", action="store_true", help="exit 1 if any record was dead-lettered")
    norm.add_argument(
        "--max-record-bytes",
        type=int,
        default=None,
        metavar="N",
        help="longest accepted line, in bytes (default: 4 MiB)",
    )
    norm.add_argument("--list-formats", action="store_true", help="list the known formats and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vigil`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request (with its URL) is noise
    try:
        if args.command == "normalize":
            return _normalize(args, parser)
        if args.command == "run":
            return _run(args)
        if args.command in ("rules", "replay"):
            from vigil.rules.commands import run as run_rules

            return run_rules(args)
        if args.command == "platform":
            from vigil.platform.commands import run as run_platform

            return run_platform(args)
        if args.command == "node":
            from vigil.training_node.commands import run as run_node

            return run_node(args)
        if args.command == "worker":
            from vigil.streams.kafka_worker import run_worker

            return run_worker(args)
        if args.command == "demo":
            from vigil.training_node.demo import run as run_demo

            return run_demo(args)
        if args.command == "alerts":
            from vigil.alerts.commands import run as run_alerts

            return run_alerts(args)
        if args.command == "actions":
            from vigil.response.commands import run as run_actions

            return run_actions(args)
        if args.command == "audit":
            from vigil.audit.commands import run as run_audit

            return run_audit(args)
    except ConfigError as exc:
        print(f"vigil: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RegistryError as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except VigilError as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:  # `vigil rules explain ... | head`: the reader left; not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's final flush does not complain
        return EXIT_OK
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE  # pragma: no cover - parser.error exits


def _run(args: argparse.Namespace) -> int:
    from vigil.settings import load_settings
    from vigil.streams.embedded import serve

    settings = load_settings(args.config)
    return serve(settings, args.config)


def _normalize(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from vigil.events.batch import DEFAULT_MAX_RECORD_BYTES, BatchNormalizer
    from vigil.events.deadletter import DeadLetterWriter
    from vigil.events.model import encode_events
    from vigil.events.normalize import normalizers
    from vigil.events.reader import open_source
    from vigil.runtime import tune_gc

    if args.list_formats:
        for name, cls in normalizers.items():
            print(f"{name:18s} {cls.kind:20s} {cls.summary}")
        return EXIT_OK
    if not args.files:
        parser.error("normalize: give at least one FILE (or - for standard input)")
    if args.format != "auto" and args.format not in normalizers:
        parser.error(
            f"normalize: unknown --format {args.format!r}; known: auto, {', '.join(normalizers.names())}"
        )
    max_record = args.max_record_bytes or DEFAULT_MAX_RECORD_BYTES
    if max_record <= 0:
        parser.error("normalize: --max-record-bytes must be positive")

    tune_gc()
    normalizer = BatchNormalizer(args.format, max_record_bytes=max_record)
    out = sys.stdout.buffer
    dl_stream: IO[bytes] = open(args.dead_letter, "ab") if args.dead_letter else sys.stderr.buffer  # noqa: SIM115
    dead = DeadLetterWriter(dl_stream)
    events = controls = 0
    try:
        for path in args.files:
            try:
                with open_source(path) as fh:
                    for batch in normalizer.stream(fh, path):
                        if batch.events:
                            out.write(encode_events(batch.events))
                            events += len(batch.events)
                        controls += len(batch.controls)
                        dead.write(batch.dead)
            except OSError as exc:
                print(f"vigil: {path}: {exc.strerror or exc}", file=sys.stderr)
                return EXIT_FAILED
        out.flush()
    except BrokenPipeError:  # `vigil normalize ... | head`: the reader left; not an error of ours
        return EXIT_OK
    finally:
        if args.dead_letter:
            dl_stream.close()
    summary = f"{events} events, {dead.count} dead-lettered"
    if controls:
        summary += f", {controls} control records (Event Grid handshakes)"
    if args.dead_letter and dead.count:
        summary += f" (see {args.dead_letter})"
    print(summary, file=sys.stderr)
    return EXIT_FAILED if args.strict and dead.count else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
