"""``vigil platform keys|storage|nodes|principals ...``: the operator's command line for the local platform.

Every command except ``principals`` talks to the running daemon over its loopback API
(:mod:`vigil.platform.client`) rather than opening the databases itself, so that each change goes through
the same access policy, reaches the audit log and Vigil's own pipeline, and cannot race the daemon.
It acts as principal ``vigil`` with the token the daemon keeps in ``{platform.dir}/operator.token``, or as
another principal with ``--token-file``. ``principals`` edits the token file directly: issuing credentials
is the one step that must work before anyone can call the API.

Exit status: 0 done, 1 the platform refused or failed (the message says why), 2 usage or configuration.
The parsers live in :mod:`vigil.platform.command_args`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigil.errors import VigilError
from vigil.fsutil import DAEMON_URL_FILE
from vigil.platform.compute import Node
from vigil.platform.keyvault import KeyInfo, KeyKind, KeyOp, KeyVersion
from vigil.platform.storage import ContainerInfo, Lock, ObjectInfo, StorageOp

if TYPE_CHECKING:  # the client, the settings and the platform load only when a command runs: --help is fast
    from vigil.platform.client import PlatformClient
    from vigil.platform.principals import PrincipalTokens
    from vigil.settings import Settings


def run(args: argparse.Namespace) -> int:
    """Run one ``vigil platform`` command; PlatformError and other VigilErrors reach the caller."""
    from vigil.platform.client_base import ServiceUnreachableError
    from vigil.platform.local.platform import read_operator_token
    from vigil.platform.principals import PrincipalTokens
    from vigil.settings import load_settings

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise on a terminal
    settings = load_settings(args.config)
    if args.area == "principals":
        return _principals(args, PrincipalTokens(settings.platform.dir / "principals.json"))
    url = args.url or default_url(settings)
    token = Path(args.token_file).read_text(encoding="ascii").strip() if args.token_file else None
    if token is None:
        try:
            token = read_operator_token(settings.platform.dir)
        except FileNotFoundError as exc:  # (no daemon has run on this data directory yet)
            raise VigilError(str(exc)) from None
    try:
        return asyncio.run(_remote(args, url, token))
    except ServiceUnreachableError as exc:
        raise VigilError(
            f"cannot reach the platform at {url} ({exc}); is the daemon running (vigil run)?"
        ) from None


def default_url(settings: Settings) -> str:
    """The running daemon's URL: what it wrote to ``{data_dir}/daemon.url`` at start (the real port, also
    when ``http.port`` is 0), else the configured host and port."""
    try:
        written = (settings.data_dir / DAEMON_URL_FILE).read_text(encoding="ascii").strip()
    except OSError:
        written = ""
    if written:
        return written
    host = settings.http.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{'[' + host + ']' if ':' in host else host}:{settings.http.port}"


def _principals(args: argparse.Namespace, tokens: PrincipalTokens) -> int:
    if args.op == "add":
        print(tokens.issue(args.name))
        print(f"token issued for {args.name}; it is shown only now", file=sys.stderr)
    elif args.op == "revoke":
        if not tokens.revoke(args.name):
            raise VigilError(f"principal {args.name!r} has no token")
    else:
        rows = [{"principal": e.principal, "created": e.created} for e in tokens.principals()]
        _print(args, rows, ("principal", "created"))
    return 0


async def _remote(args: argparse.Namespace, url: str, token: str) -> int:
    from vigil.platform.client import PlatformClient

    async with PlatformClient(url, token) as client:
        handler = {"keys": _keys_op, "storage": _storage_op, "nodes": _nodes_op}[args.area]
        await handler(args, client, args.principal)
    return 0


async def _keys_op(args: argparse.Namespace, client: PlatformClient, me: str) -> None:
    keys = client.keys
    if args.op == "list":
        infos = await keys.list_keys(me, include_deleted=args.deleted)
        _print(
            args, [_key_row(k) for k in infos], ("name", "kind", "current", "versions", "exportable", "state")
        )
        return
    simple: dict[str, Callable[[], Awaitable[Any]]] = {
        "show": lambda: keys.get_key(me, args.name),
        "rotate": lambda: keys.rotate_key(me, args.name),
        "delete": lambda: keys.delete_key(me, args.name),
        "recover": lambda: keys.recover_key(me, args.name),
        "purge": lambda: keys.purge_key(me, args.name),
    }
    if args.op in simple:
        _show(args, await simple[args.op]())
    elif args.op == "create":
        policy = _read_json(args.policy) if args.policy else None
        info = await keys.create_key(me, args.name, KeyKind(args.kind), exportable=args.exportable,
                                     release_policy=policy)  # fmt: skip
        _show(args, info)
    elif args.op in ("enable", "disable"):
        _show(args, await keys.set_version_enabled(me, args.name, args.version, args.op == "enable"))
    elif args.op == "policy":
        if not args.clear and not args.file:
            raise VigilError("keys policy: give a policy FILE or --clear")
        _show(
            args, await keys.set_release_policy(me, args.name, None if args.clear else _read_json(args.file))
        )
    elif args.op == "grant":
        await keys.grant(me, args.grantee, args.name, _ops(args.ops, KeyOp))
    elif args.op == "revoke":
        await keys.revoke(me, args.grantee, args.name, _ops(args.ops, KeyOp) if args.ops else None)


async def _storage_op(args: argparse.Namespace, client: PlatformClient, me: str) -> None:
    st = client.storage
    if args.op == "list":
        rows = [_container_row(c) for c in await st.list_containers(me)]
        _print(args, rows, ("name", "key", "lock", "public_read", "principals"))
    elif args.op == "create":
        _show(args, await st.create_container(me, args.name, key_name=args.key))
    elif args.op == "show":
        _show(args, await st.get_container(me, args.name))
        objects = await st.list_objects(me, args.name)
        _print(args, [_object_row(o) for o in objects], ("name", "size", "key_version", "created"))
    elif args.op == "put":
        info = await st.put(me, args.container, args.object, _file_blocks(args.file))
        _show(args, info)
    elif args.op == "get":
        out = open(args.output, "wb") if args.output else sys.stdout.buffer  # noqa: SIM115
        try:
            async for chunk in st.get(me, args.container, args.object):
                out.write(chunk)
        finally:
            if args.output:
                out.close()
    elif args.op == "rm":
        await st.delete(me, args.container, args.object)
    elif args.op == "lock":
        _show(args, await st.set_lock(me, args.container, Lock(args.lock)))
    elif args.op == "access":
        ops = frozenset() if args.ops == "none" else frozenset(_ops(args.ops, StorageOp))
        _show(args, await st.set_access(me, args.container, args.grantee, ops))
    elif args.op == "rewrap":
        print(f"{await st.rewrap(me, args.container)} objects re-wrapped")


async def _nodes_op(args: argparse.Namespace, client: PlatformClient, me: str) -> None:
    compute = client.compute
    if args.op == "list":
        rows = [_node_row(n) for n in await compute.list_nodes(me)]
        _print(args, rows, ("id", "principal", "state", "measurement"))
    elif args.op == "show":
        _show(args, await compute.get_node(me, args.id))
    elif args.op == "register":
        node = await compute.register(
            me, args.id, node_principal=args.node_principal, measurement=args.measurement,
            control_url=args.control_url,
        )  # fmt: skip
        _show(args, node)
    elif args.op == "quarantine":
        _show(
            args, await compute.quarantine(me, args.id, reason=args.reason, evidence={"by": "vigil platform"})
        )
    elif args.op == "release":
        _show(args, await compute.release(me, args.id, reason=args.reason))


# -- output ------------------------------------------------------------------------------------------------


def _key_row(k: KeyInfo) -> dict[str, Any]:
    state = "deleted" if k.deleted else "enabled" if k.current else "no enabled version"
    return {"name": k.name, "kind": k.kind.value, "current": k.current or "-", "versions": len(k.versions),
            "exportable": k.exportable, "state": state}  # fmt: skip


def _container_row(c: ContainerInfo) -> dict[str, Any]:
    return {"name": c.name, "key": c.key_name, "lock": c.lock.value, "public_read": c.public_read,
            "principals": ",".join(sorted(c.access)) or "-"}  # fmt: skip


def _object_row(o: ObjectInfo) -> dict[str, Any]:
    return {"name": o.name, "size": o.size, "key_version": o.key_version, "created": o.created}


def _node_row(n: Node) -> dict[str, Any]:
    return {
        "id": n.id,
        "principal": n.principal,
        "state": n.state.value,
        "measurement": n.measurement[:16] + "…",
    }


def _show(args: argparse.Namespace, value: Any) -> None:
    """One result: JSON (the API's own shape) with --json, else indented JSON too (readable, complete)."""
    from vigil.platform import wire

    encoders: dict[type, Callable[[Any], dict[str, Any]]] = {
        KeyInfo: wire.key_info_json,
        KeyVersion: wire.key_version_json,
        ContainerInfo: wire.container_json,
        ObjectInfo: wire.object_json,
        Node: wire.node_json,
    }
    encode = encoders.get(type(value))
    if encode is not None:
        data = encode(value)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        data = dataclasses.asdict(value)
    else:
        data = value
    print(json.dumps(data, indent=None if args.json else 2, sort_keys=True, default=str))


def _print(args: argparse.Namespace, rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    if args.json:
        print(json.dumps(rows, default=str))
        return
    table = [[str(r[c]) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in table)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in table:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def _ops(text: str, enum: Any) -> set[Any]:
    try:
        return {enum(part.strip()) for part in text.split(",") if part.strip()}
    except ValueError:
        known = ", ".join(o.value for o in enum)
        raise VigilError(f"unknown operation in {text!r}; known: {known}") from None


def _read_json(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise VigilError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise VigilError(f"{path}: expected a JSON object")
    return data


async def _file_blocks(path: str, size: int = 1 << 20) -> AsyncIterator[bytes]:
    fh = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    try:
        while block := fh.read(size):
            yield block
    finally:
        if path != "-":
            fh.close()
