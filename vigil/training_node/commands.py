"""``vigil node seed|run|attest``: set up and run an attested training node against the local platform.

``seed`` is the operator's side, acting as ``vigil`` with the daemon's operator token: it creates the
data key (exportable, with a release policy that requires a non-debuggable guest with the node's launch
measurement, issued by the local attestation service) and the container, stores the Iris data set, issues
the node principal's API token (written 0600 to ``{platform.dir}/nodes/<id>.token``, never printed),
registers the node and grants it ``release`` on the key and ``read``/``write`` on the container. Every
step tolerates "already there", so seeding again (a second node, a re-seed) is safe.

``run`` and ``attest`` are the node's side, with that token: the software TEE is the one the daemon
verifies against (``{platform.dir}/tee``, sealed under the platform's master key: on a laptop the "chip"
and the platform share a machine), launched with the node's measurement. Telemetry goes to the same
daemon's ``POST /v1/events`` with the local ingest token unless ``--ingest-token-file`` says otherwise.

Exit status: 0 done (``run``: trained to the end), 1 refused, failed or quarantined, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigil.errors import ConfigError

if TYPE_CHECKING:  # heavy imports (torch, the platform) load only when a command runs
    from vigil.platform.storage import ObjectInfo
    from vigil.settings import Settings
    from vigil.training_node.node import TrainingNode

SERVICE = "vigil"


def add_parsers(sub: Any) -> None:
    """Add ``vigil node`` and its subcommands to the top-level subparsers."""
    p = sub.add_parser("node", help="attested training nodes: seed, run, attest")
    s = p.add_subparsers(dest="op", required=True)
    for name, text in (
        ("seed", "operator: data key, container, data set, node token, registration and grants"),
        ("run", "attest, get the data key, train, report telemetry"),
        ("attest", "attest and print the token's claims"),
    ):
        c = s.add_parser(name, help=text)
        c.add_argument("--config", metavar="FILE", help="settings profile (default: config/local.yaml)")
        c.add_argument("--url", help="platform API base URL (default: the running daemon's)")
        c.add_argument("--node-id", default="node-1", help="the node's id and principal (default: node-1)")
        c.add_argument("--measurement", help="launch measurement, 96 hex (default: the first allowed one)")
        c.add_argument("--container", default="training", help="data set container (default: training)")
        c.add_argument("--key", default="data-key", help="the data key's name (default: data-key)")
        if name == "seed":
            c.add_argument("--token-file", metavar="FILE", help="operator token (default: the daemon's)")
        else:
            c.add_argument("--token-file", metavar="FILE", help="node token (default: what seed wrote)")
        if name == "run":
            c.add_argument("--epochs", type=int, default=60, help="training epochs (default: 60)")
            c.add_argument("--ingest-token-file", metavar="FILE", help="ingest bearer token file")


def run(args: argparse.Namespace) -> int:
    """Run one ``vigil node`` command; PlatformError and other VigilErrors reach the caller."""
    from vigil.platform.commands import default_url
    from vigil.settings import load_settings

    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = load_settings(args.config)
    url = args.url or default_url(settings)
    measurement = _measurement(args, settings)
    if args.op == "seed":
        return asyncio.run(_seed(args, settings, url, measurement))
    return asyncio.run(_node(args, settings, url, measurement))


def node_token_path(settings: Settings, node_id: str) -> Path:
    return settings.platform.dir / "nodes" / f"{node_id}.token"


def release_policy(issuer: str, measurement: str) -> dict[str, Any]:
    """Azure SKR policy: the local issuer, no debug, exactly this launch measurement."""
    return {
        "version": "1.0.0",
        "anyOf": [
            {
                "authority": issuer,
                "allOf": [
                    {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": False},
                    {"claim": "x-ms-sevsnpvm-launchmeasurement", "equals": measurement},
                ],
            }
        ],
    }


def _measurement(args: argparse.Namespace, settings: Settings) -> str:
    value = args.measurement or (settings.platform.allowed_measurements or [""])[0]
    if len(value) != 96:
        raise ConfigError("no launch measurement: pass --measurement or set platform.allowed_measurements")
    return str(value).lower()


async def _seed(args: argparse.Namespace, settings: Settings, url: str, measurement: str) -> int:
    from vigil.platform.local.platform import read_operator_token

    operator = _read(args.token_file) if args.token_file else read_operator_token(settings.platform.dir)
    info, token_file = await seed_node(
        settings, url, operator, args.node_id, measurement, container=args.container, key=args.key
    )
    print(
        f"seeded {args.container}/{info.name} ({info.size} bytes) for node {args.node_id}; "
        f"token in {token_file}"
    )
    return 0


async def seed_node(
    settings: Settings, url: str, operator: str, node_id: str, measurement: str, *, container: str, key: str
) -> tuple[ObjectInfo, Path]:
    """The operator's set-up for one node (module docstring); returns the data set's object and the node's
    token file. Safe to repeat."""
    from vigil.platform.client import PlatformClient
    from vigil.platform.errors import AlreadyExistsError
    from vigil.platform.keyvault import KeyKind, KeyOp
    from vigil.platform.local.masterkey import write_new_file
    from vigil.platform.principals import PrincipalTokens
    from vigil.platform.storage import StorageOp
    from vigil.training_node import dataset

    policy = release_policy(settings.platform.attestation_issuer, measurement)
    async with PlatformClient(url, operator) as client:
        with contextlib.suppress(AlreadyExistsError):
            await client.keys.create_key(SERVICE, key, KeyKind.AES256, exportable=True, release_policy=policy)
        info = await dataset.seed(client, SERVICE, container, key)
        token_file = node_token_path(settings, node_id)
        if not token_file.exists():
            token_file.parent.mkdir(parents=True, exist_ok=True)
            token = PrincipalTokens(settings.platform.dir / "principals.json").issue(node_id)
            write_new_file(token_file, (token + "\n").encode("ascii"))  # 0600, O_EXCL
        with contextlib.suppress(AlreadyExistsError):
            await client.compute.register(SERVICE, node_id, node_principal=node_id, measurement=measurement)
        await client.keys.grant(SERVICE, node_id, key, {KeyOp.RELEASE})
        await client.storage.set_access(
            SERVICE, container, node_id, frozenset({StorageOp.READ, StorageOp.WRITE})
        )
    return info, token_file


async def _node(args: argparse.Namespace, settings: Settings, url: str, measurement: str) -> int:
    node = _make_node(args, settings, url, measurement)
    async with node:
        await node.attest()
        if args.op == "attest":
            print(json.dumps(node.claims, indent=2, sort_keys=True))
            return 0
        version = await node.release_data_key()
        print(f"node {args.node_id}: attested, data key {args.key} version {version} released")
        result = await node.train()
        losses = ", ".join(f"{v:.3f}" for v in result.losses[-3:])
        print(
            f"node {args.node_id}: {result.stopped} after {result.epochs} epochs on {result.device}; "
            f"last losses {losses}; {len(result.checkpoints)} checkpoint(s); telemetry {node.sent} sent, "
            f"{node.failed} failed"
        )
        return 0 if result.stopped == "completed" else 1


def _make_node(args: argparse.Namespace, settings: Settings, url: str, measurement: str) -> TrainingNode:
    return make_node(
        settings,
        url,
        args.node_id,
        measurement,
        container=args.container,
        key=args.key,
        epochs=getattr(args, "epochs", 1),
        token_file=args.token_file,
        ingest_token_file=getattr(args, "ingest_token_file", None),
    )


def make_node(
    settings: Settings,
    url: str,
    node_id: str,
    measurement: str,
    *,
    container: str,
    key: str,
    epochs: int,
    token_file: str | None = None,
    ingest_token_file: str | None = None,
) -> TrainingNode:
    """A node on this machine's software TEE, launched with ``measurement`` (module docstring)."""
    from vigil.api.auth import local_token
    from vigil.platform.local.masterkey import MasterKey
    from vigil.training_node.evidence import LaunchConfig, SoftwareTee
    from vigil.training_node.node import TrainingNode

    p = settings.platform
    if p.master_passphrase:
        master = MasterKey.from_passphrase(p.master_passphrase, p.dir / "master.salt")
    else:
        master = MasterKey.from_file(p.master_key_file, create=False)
    tee = SoftwareTee.load_or_create(
        p.dir / "tee", LaunchConfig(bytes.fromhex(measurement)), key_bits=p.tee_key_bits, master=master
    )
    token = _read(token_file) if token_file else _read(node_token_path(settings, node_id))
    ingest = _read(ingest_token_file) if ingest_token_file else local_token(settings.data_dir)
    return TrainingNode(
        url,
        token,
        node_id,
        tee,
        container=container,
        key_name=key,
        epochs=epochs,
        ingest_url=url,
        ingest_token=ingest,
        measurement=measurement,
    )


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="ascii").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror}") from None
