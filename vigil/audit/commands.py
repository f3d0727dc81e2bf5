"""The audit commands of the CLI: ``vigil audit verify | show | hmac``.

They read the settings profile (``--config``) for where the audit database (``audit.path``), its exported
checkpoints (``audit.checkpoint_files``) and the local platform's key vault (``platform.dir``) are. The
database is opened read-only: inspecting evidence never writes to it. The vault is opened through
:class:`~vigil.platform.local.platform.LocalPlatform`, the same way the daemon opens it, but only when it
already exists: a verify on the wrong machine must fail, not create an empty platform.

Exit codes follow ``vigil.cli``: 0 clean, 1 damage found (``verify``: the message names the first bad seq
and the kind of damage), 2 usage or configuration error (no audit log, no vault, unreadable checkpoint
file). Results go to stdout, warnings and summaries to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import orjson

from vigil.audit.record import AuditKind, AuditRecord
from vigil.errors import ConfigError, VigilError

if TYPE_CHECKING:  # loaded when a command runs, so that `vigil --help` stays fast
    from vigil.audit.checkpoint import Checkpoint
    from vigil.audit.verify import PublicKeys
    from vigil.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
PRINCIPAL: Final = "vigil"
#: the local vault's file under ``platform.dir`` (LocalPlatform's layout)
VAULT_FILE: Final = "vault.db"

VERIFY_EPILOG = """\
Walks the hash chain from record 1 and checks every signed checkpoint (those stored in the database and
those exported to checkpoint files) with the audit signing key's public keys from the key vault. Damage
is named by the first bad sequence number and its kind: edited, deleted, reordered, truncated, replaced
(a shorter or different valid chain) or bad signature. Truncation and replacement can only be seen
against an exported checkpoint: by default the files of audit.checkpoint_files are read.

Examples:
  vigil audit verify
  vigil audit verify --checkpoint /mnt/offsite/audit-checkpoints.jsonl
"""

SHOW_EPILOG = """\
One record per line, oldest first: seq, time (UTC), actor, kind, subject, details. With --json, one JSON
object per line, including both hashes. The newest --limit records that match every filter are shown.

Examples:
  vigil audit show --since 1h --kind action_intent
  vigil audit show --subject vm/web-1 --json
  vigil audit show --since 2026-01-05T10:00:00Z --limit 500
"""

HMAC_EPILOG = """\
Secrets never enter the audit log; where an investigator must match one, the log holds
hmac-sha256:<hex> of it under the vault's audit HMAC key. This prints that value for VALUE (read it from
standard input with - , so it stays out of the shell history), then the records that contain it. After the
key was rotated it prints one value per enabled version, the current one first, and finds the records
holding any of them.
"""


def add_commands(sub: Any) -> None:
    """Register ``audit`` and its subcommands on the top-level subparsers."""
    audit = sub.add_parser(
        "audit",
        help="verify, search and query the tamper-evident audit log",
        description="The audit log: every decision Vigil takes, hash-chained and checkpointed.",
    )
    asub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    asub.required = True
    raw = argparse.RawDescriptionHelpFormatter

    ver = asub.add_parser(
        "verify", help="check the chain and every checkpoint; name the first bad record",
        description="Verify the audit log.", epilog=VERIFY_EPILOG, formatter_class=raw,
    )  # fmt: skip
    ver.add_argument(
        "--checkpoint", action="append", default=[], metavar="FILE",
        help="exported checkpoint file (JSON Lines; repeatable; default: the audit.checkpoint_files)",
    )  # fmt: skip

    show = asub.add_parser(
        "show", help="list audit records for an investigation",
        description="Show audit records.", epilog=SHOW_EPILOG, formatter_class=raw,
    )  # fmt: skip
    show.add_argument(
        "--since",
        metavar="TIME",
        help="records from TIME on: ISO 8601 (UTC unless it has an offset) or a duration ago (90m, 2d)",
    )
    show.add_argument("--kind", choices=[k.value for k in AuditKind], metavar="KIND",
                      help="only this kind: " + ", ".join(k.value for k in AuditKind))  # fmt: skip
    show.add_argument("--subject", metavar="S", help="only records about this subject (exact match)")
    show.add_argument("--limit", type=int, default=50, metavar="N", help="at most N records (default 50)")
    show.add_argument("--json", action="store_true", help="one JSON object per line")

    hm = asub.add_parser(
        "hmac", help="the HMAC under which a secret value appears in the log, and the records holding it",
        description="Compute the audit HMAC of a value.", epilog=HMAC_EPILOG, formatter_class=raw,
    )  # fmt: skip
    hm.add_argument("value", metavar="VALUE", help="the secret value, or - to read one line from stdin")

    for parser in (ver, show, hm):
        parser.add_argument(
            "--config", metavar="CFG",
            help="YAML settings profile (default: $VIGIL_CONFIG or config/local.yaml)",
        )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Run the ``audit`` subcommand in ``args``; the exit code."""
    from vigil.settings import load_settings

    try:
        settings = load_settings(args.config)
        if args.audit_command == "verify":
            return _verify(settings, args.checkpoint)
        if args.audit_command == "show":
            return _show(settings, args)
        if args.audit_command == "hmac":
            return _hmac(settings, args.value)
    except ConfigError as exc:
        print(f"vigil audit: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (VigilError, OSError, ValueError) as exc:
        print(f"vigil audit: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"vigil audit: unknown subcommand {args.audit_command!r}", file=sys.stderr)
    return EXIT_USAGE


def _verify(settings: Settings, files: Sequence[str]) -> int:
    from vigil.audit.checkpoint import load_all
    from vigil.audit.verify import verify

    paths = [Path(f) for f in files] or [p for p in settings.audit.checkpoint_files if p.exists()]
    path = _audit_path(settings)
    exported: list[Checkpoint] = load_all(paths)
    keys = _with_vault(settings, _public_keys)
    report = verify(path, keys, exported)
    for warning in report.warnings:
        print(f"vigil audit: warning: {warning}", file=sys.stderr)
    print(report.summary() + (f" (checkpoint files: {', '.join(map(str, paths))})" if paths else ""))
    return EXIT_OK if report.ok else EXIT_FAILED


def _show(settings: Settings, args: argparse.Namespace) -> int:
    from vigil.audit.db import AuditDB

    if args.limit < 1:
        raise ValueError("--limit must be at least 1")
    since = _parse_since(args.since) if args.since else None
    db = AuditDB(_audit_path(settings), readonly=True)
    try:
        records = db.query(since_us=since, kind=args.kind, subject=args.subject, limit=args.limit)
    finally:
        db.close()
    _print_records(records, as_json=args.json)
    return EXIT_OK


def _hmac(settings: Settings, value: str) -> int:
    from vigil.audit.db import AuditDB
    from vigil.audit.log import HMAC_KEY, hmac_of

    if value == "-":
        value = sys.stdin.readline().rstrip("\r\n")
    if not value:
        raise ValueError("hmac: the value is empty")

    async def every_version(vault: Any) -> list[str]:
        """The value's HMAC under each enabled version of the key, the current one first: records written
        before a rotation hold an older one."""
        info = await vault.get_key(PRINCIPAL, HMAC_KEY)
        versions = [v.version for v in reversed(info.versions) if v.enabled]
        return [await hmac_of(vault, PRINCIPAL, value, version) for version in versions]

    digests: list[str] = _with_vault(settings, every_version)
    print("\n".join(digests))
    path = _audit_path(settings)
    if path.exists():
        db = AuditDB(path, readonly=True)
        try:
            found = {r.seq: r for d in digests for r in db.query(contains=f'"{d}"', limit=1000)}
        finally:
            db.close()
        records = [found[seq] for seq in sorted(found)]
        _print_records(records, as_json=False)
        print(f"{len(records)} records contain it", file=sys.stderr)
    return EXIT_OK


# -- helpers ----------------------------------------------------------------------------------------------


def _audit_path(settings: Settings) -> Path:
    path = settings.audit.path
    if not path.exists():
        raise FileNotFoundError(f"no audit log at {path} (audit.path; start the daemon once to create it)")
    return path


async def _public_keys(vault: Any) -> PublicKeys:
    from vigil.audit.verify import public_keys

    return await public_keys(vault, PRINCIPAL)


def _with_vault(settings: Settings, fn: Any) -> Any:
    """Open the local platform's key vault (only if it exists), run the coroutine ``fn(vault)``."""
    from vigil.platform.local.platform import LocalPlatform

    vault_file = settings.platform.dir / VAULT_FILE
    if not vault_file.exists():
        raise FileNotFoundError(f"no key vault at {vault_file} (platform.dir): it holds the audit keys")

    async def call() -> Any:
        platform = LocalPlatform(settings.platform)
        try:
            return await fn(platform.vault)
        finally:
            platform.close()

    return asyncio.run(call())


def _parse_since(text: str) -> int:
    """``--since`` as epoch microseconds: an ISO 8601 time (UTC when no offset), or a duration ago."""
    from vigil.rules.schema_forms import parse_duration

    try:
        return int((time.time() - parse_duration(text).total_seconds()) * 1e6)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: use an ISO 8601 time or a duration such as 90m or 2d") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1e6)


def _print_records(records: Sequence[AuditRecord], *, as_json: bool) -> None:
    out = sys.stdout
    for rec in records:
        if as_json:
            out.write(orjson.dumps(rec.to_json()).decode() + "\n")
            continue
        when = datetime.fromtimestamp(rec.time_us / 1e6, UTC).isoformat(timespec="milliseconds")
        details = orjson.dumps(rec.details, option=orjson.OPT_SORT_KEYS).decode()
        out.write(
            f"{rec.seq:>8} {when.replace('+00:00', 'Z')} {rec.actor.kind.value}:{rec.actor.id} "
            f"{rec.kind.value} {rec.subject} {details}\n"
        )
    out.flush()
