"""``vigil demo attack NAME``: a tampered training node meets the platform, and Vigil answers.

What a newcomer sees after ``make run`` (two nodes training): the attacker controls node NAME's host and
its platform token, and boots a modified image there. The demo plays the attacker, then watches Vigil:

1. **attest** with the modified image: the software TEE signs a genuine report, but its launch measurement
   is not the approved one, so the attestation service refuses it and no token is issued;
2. **take the key anyway** with a forged MAA-shaped token that claims the approved measurement, signed by
   the attacker's own key: the key vault refuses the release (the token's signature is not the
   attestation service's);
3. **Vigil reacts** through the normal pipeline, nothing demo-specific: the refused attestation is an
   ``attestation`` event, ``att.unknown-measurement`` (stable, ``approval: auto``) fires and asks for
   ``quarantine_vm`` on the node, the response engine suspends its key release and storage access and
   marks it quarantined, and the alert goes to the configured sinks (the console sink writes
   ``{data_dir}/alerts.jsonl``). The genuine node NAME, if it is training, stops within seconds; the
   daemon does not restart it.

The demo prints each step and, within ``--wait`` seconds, the findings about the node, the action and the
node's state. Exit status 0 when both refusals happened and the node ended quarantined, 1 otherwise.
Undo it with ``vigil platform nodes release NAME`` (then restart the daemon to restart the node).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from typing import TYPE_CHECKING, Any

import httpx

from vigil.errors import ConfigError

if TYPE_CHECKING:
    from vigil.settings import Settings


def add_parsers(sub: Any) -> None:
    """Add ``vigil demo`` and its subcommands to the top-level subparsers."""
    p = sub.add_parser("demo", help="demonstrations against the running daemon's local platform")
    s = p.add_subparsers(dest="op", required=True)
    a = s.add_parser(
        "attack",
        help="boot a tampered image on a node: watch it refused its key and quarantined",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("name", metavar="NAME", help="the node to attack, e.g. node-2 (seeded: make run does it)")
    a.add_argument("--config", metavar="FILE", help="settings profile (default: config/local.yaml)")
    a.add_argument("--url", help="the daemon's base URL (default: the running daemon's)")
    a.add_argument("--wait", type=float, default=30.0, help="seconds to wait for Vigil's reaction (30)")


def run(args: argparse.Namespace) -> int:
    from vigil.platform.commands import default_url  # noqa: PLC0415
    from vigil.settings import load_settings  # noqa: PLC0415

    settings = load_settings(args.config)
    return asyncio.run(_attack(args, settings, args.url or default_url(settings)))


def tampered(measurement: str) -> str:
    """The approved measurement with its last byte changed: a modified image."""
    raw = bytearray.fromhex(measurement)
    raw[-1] ^= 0x5A
    return raw.hex()


async def _attack(args: argparse.Namespace, settings: Settings, url: str) -> int:
    from vigil.platform.errors import PlatformError  # noqa: PLC0415
    from vigil.platform.local.platform import read_operator_token  # noqa: PLC0415
    from vigil.training_node.commands import make_node, node_token_path  # noqa: PLC0415

    name, nodes = args.name, settings.nodes
    if not node_token_path(settings, name).exists():
        raise ConfigError(f"node {name!r} is not seeded here: start the daemon with nodes (make run)")
    approved = settings.platform.allowed_measurements[0].lower()
    bad = tampered(approved)
    began = time.time()
    _say(
        f"attacker: booting a modified image on {name} "
        f"(measurement ...{bad[-8:]}, approved ...{approved[-8:]})"
    )
    node = make_node(settings, url, name, bad, container=nodes.container, key=nodes.key, epochs=1)
    refused = 0
    async with node:
        try:
            await node.attest()
            _say("attestation: ACCEPTED (unexpected: is the modified measurement in the allow-list?)")
        except PlatformError as exc:
            refused += 1
            _say(f"attestation: refused ({exc})")
        try:
            await node.platform.keys.release(name, nodes.key, *_forged(settings, approved))
            _say("key release: GRANTED to a forged token (unexpected)")
        except PlatformError as exc:
            refused += 1
            _say(f"key release with a forged token: refused ({exc})")
    _say(f"waiting up to {args.wait:g} s for Vigil to react ...")
    state = await _watch(url, read_operator_token(settings.platform.dir), name, began, args.wait)
    return 0 if refused == 2 and state == "quarantined" else 1


def _forged(settings: Settings, measurement: str) -> tuple[str, bytes]:
    """A token in the attestation service's shape, claiming the approved image, signed by the attacker."""
    import jwt  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {
        "iss": settings.platform.attestation_issuer,
        "iat": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
        "x-ms-attestation-type": "sevsnpvm",
        "x-ms-sevsnpvm-is-debuggable": False,
        "x-ms-sevsnpvm-launchmeasurement": measurement,
    }
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return jwt.encode(claims, key, algorithm="RS256"), pem


async def _watch(url: str, operator: str, name: str, began: float, wait: float) -> str:
    """Poll the daemon until the node is quarantined or ``wait`` passes; print what Vigil did."""
    from vigil.platform.client import PlatformClient  # noqa: PLC0415
    from vigil.response.model import FINAL, ActionState  # noqa: PLC0415

    # an outcome to print: final, or waiting on a person
    settled = {s.value for s in FINAL} | {ActionState.PENDING_APPROVAL.value}

    deadline, state = time.monotonic() + wait, "unknown"
    auth = {"Authorization": f"Bearer {operator}"}  # (a platform token: the read API may want one)
    async with (
        PlatformClient(url, operator) as op,
        httpx.AsyncClient(base_url=url, trust_env=False, headers=auth) as http,
    ):
        while time.monotonic() < deadline:
            state = (await op.compute.get_node("vigil", name)).state.value
            if state == "quarantined":
                break
            await asyncio.sleep(0.5)
        since = int(began * 1000)
        found = (await http.get("/v1/findings", params={"since": since, "limit": 200})).json()
        for finding in found.get("findings", []):
            if name in json.dumps(finding):
                _say(f"finding: {finding.get('rule')}: {finding.get('title')} ({finding.get('severity')})")
        # The node shows quarantined as soon as the remediator's step ran; its action is still running
        # (verifying) for a moment: wait, within the same deadline, until it has an outcome to print.
        while True:
            listed = (await http.get("/v1/actions", params={"limit": 200})).json().get("actions", [])
            mine = [a for a in listed if a.get("target") == name and a.get("created", 0) >= began - 1]
            if time.monotonic() >= deadline or all(a.get("state") in settled for a in mine):
                break
            await asyncio.sleep(0.2)
        for action in mine:
            what = f"{action.get('remediation')} on {name} by {action.get('rule')}"
            _say(f"action: {what}: {action.get('state')}")
    _say(f"node {name}: {state}" + ("" if state == "quarantined" else f" after {wait:g} s"))
    if state == "quarantined":
        _say(f"undo: vigil platform nodes release {name} (then restart the daemon to restart the node)")
    return state


def _say(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", flush=True)
