"""The argument parsers of ``vigil platform``: areas, operations and the options every command takes.

Kept apart from :mod:`vigil.platform.commands` (which runs the commands) so that ``vigil --help`` and a
usage error build the parsers without the code that talks to the daemon.
"""

from __future__ import annotations

import argparse
from typing import Any

from vigil.platform.keyvault import KeyKind, KeyOp
from vigil.platform.storage import Lock, StorageOp

SERVICE = "vigil"

EPILOG = """\
Examples:
  vigil platform keys create data-key --exportable --policy release-policy.json
  vigil platform keys rotate data-key
  vigil platform storage create train --key data-key
  vigil platform storage put train shard-0 shard-0.bin
  vigil platform storage lock train read_only
  vigil platform nodes register node-1 --principal node-1 --measurement <96 hex>
  vigil platform nodes quarantine node-1 --reason "attestation drift"
  vigil platform principals add node-1          # prints the node's API token once

The daemon must be running (vigil run) for keys, storage and nodes; see docs/platform-api.md.
"""


def add_parsers(sub: Any) -> None:
    """Add ``vigil platform`` and its subcommands to the top-level subparsers."""
    p = sub.add_parser(
        "platform",
        help="operate the local platform: keys, storage, nodes, principals",
        description="Operate the local confidential platform that runs inside the daemon.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p, SERVICE, False)
    areas = p.add_subparsers(dest="area", metavar="AREA", required=True)
    _keys(areas.add_parser("keys", help="key vault: create, rotate, disable, release policy, grants"))
    _storage(areas.add_parser("storage", help="secure storage: containers, objects, locks, access"))
    _nodes(areas.add_parser("nodes", help="training nodes: register, quarantine, release"))
    pr = areas.add_parser("principals", help="API tokens of principals (works without the daemon)")
    ps = pr.add_subparsers(dest="op", metavar="OP", required=True)
    ps.add_parser("list", help="principals that have a token")
    ps.add_parser("add", help="issue a token (replacing the old one) and print it once").add_argument("name")
    ps.add_parser("revoke", help="remove a principal's token").add_argument("name")
    for area in areas.choices.values():  # the options also work after the command: `nodes list --config X`
        for action in area._subparsers._group_actions if area._subparsers else ():
            for leaf in getattr(action, "choices", {}).values():
                _common(leaf, argparse.SUPPRESS, argparse.SUPPRESS)


def _common(p: argparse.ArgumentParser, principal: str, json_default: object) -> None:
    """The options every ``vigil platform`` command takes; on the leaves with SUPPRESS defaults, so a value
    given before the command is not overwritten by the leaf's default (and not where a leaf has its own)."""
    default = argparse.SUPPRESS if principal == argparse.SUPPRESS else None
    options: list[tuple[str, dict[str, Any]]] = [
        (
            "--config",
            {"metavar": "FILE", "default": default, "help": "settings profile (default: config/local.yaml)"},
        ),
        ("--url", {"default": default, "help": "platform API base URL (default: the running daemon's)"}),
        (
            "--token-file",
            {
                "metavar": "FILE",
                "default": default,
                "help": "act with this principal's token (default: operator)",
            },
        ),
        (
            "--principal",
            {"default": principal, "help": "the principal the token belongs to (default: vigil)"},
        ),
        (
            "--json",
            {"action": "store_true", "default": json_default, "help": "print JSON instead of a table"},
        ),
    ]
    for flag, kwargs in options:
        if flag not in p._option_string_actions:
            p.add_argument(flag, **kwargs)


def _keys(p: argparse.ArgumentParser) -> None:
    s = p.add_subparsers(dest="op", metavar="OP", required=True)
    s.add_parser("list", help="every key").add_argument(
        "--deleted", action="store_true", help="include deleted"
    )
    s.add_parser("show", help="one key with its versions").add_argument("name")
    c = s.add_parser("create", help="create a key")
    c.add_argument("name")
    c.add_argument("--kind", choices=[k.value for k in KeyKind], default=KeyKind.AES256.value)
    c.add_argument("--exportable", action="store_true", help="may be released to attested nodes")
    c.add_argument("--policy", metavar="FILE", help="release policy (Azure SKR JSON)")
    s.add_parser("rotate", help="new current version").add_argument("name")
    for op in ("enable", "disable"):
        e = s.add_parser(op, help=f"{op} one version")
        e.add_argument("name")
        e.add_argument("version")
    pol = s.add_parser("policy", help="set (or --clear) the release policy")
    pol.add_argument("name")
    pol.add_argument("file", nargs="?", help="policy JSON file")
    pol.add_argument("--clear", action="store_true")
    for op, text in (
        ("delete", "soft-delete"),
        ("recover", "recover a soft-deleted key"),
        ("purge", "purge"),
    ):
        s.add_parser(op, help=text).add_argument("name")
    for op in ("grant", "revoke"):
        g = s.add_parser(op, help=f"{op} operations to a principal on a key (* for every key)")
        g.add_argument("name")
        g.add_argument("grantee")
        g.add_argument("ops", nargs="?", default="", help=f"comma list of {','.join(o.value for o in KeyOp)}")


def _storage(p: argparse.ArgumentParser) -> None:
    s = p.add_subparsers(dest="op", metavar="OP", required=True)
    s.add_parser("list", help="containers")
    c = s.add_parser("create", help="create a container protected by a vault key")
    c.add_argument("name")
    c.add_argument("--key", required=True, help="the aes256 key that wraps its objects' data keys")
    s.add_parser("show", help="a container and its objects").add_argument("name")
    put = s.add_parser("put", help="encrypt and store a file (- for standard input)")
    put.add_argument("container")
    put.add_argument("object")
    put.add_argument("file")
    get = s.add_parser("get", help="decrypt an object to a file or standard output")
    get.add_argument("container")
    get.add_argument("object")
    get.add_argument("-o", "--output", help="file to write (default: standard output)")
    rm = s.add_parser("rm", help="delete an object")
    rm.add_argument("container")
    rm.add_argument("object")
    lock = s.add_parser("lock", help="set a container's lock")
    lock.add_argument("container")
    lock.add_argument("lock", choices=[v.value for v in Lock])
    acc = s.add_parser("access", help="set a principal's operations on a container (none removes)")
    acc.add_argument("container")
    acc.add_argument("grantee")
    acc.add_argument("ops", help=f"comma list of {','.join(o.value for o in StorageOp)}, or none")
    s.add_parser("rewrap", help="re-wrap every data key under the key's current version").add_argument(
        "container"
    )


def _nodes(p: argparse.ArgumentParser) -> None:
    s = p.add_subparsers(dest="op", metavar="OP", required=True)
    s.add_parser("list", help="registered nodes")
    s.add_parser("show", help="one node").add_argument("id")
    r = s.add_parser("register", help="register a node (state pending)")
    r.add_argument("id")
    r.add_argument("--principal", dest="node_principal", required=True, help="the node's API principal")
    r.add_argument("--measurement", required=True, help="expected launch measurement (96 hex)")
    r.add_argument("--control-url", default="", help="loopback URL the node takes stop commands on")
    for op in ("quarantine", "release"):
        q = s.add_parser(op, help=f"{op} a node")
        q.add_argument("id")
        q.add_argument("--reason", required=True)
