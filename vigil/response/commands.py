"""``vigil actions list|show|approve|reject|rollback|kill-switch``: the approver's command line.

It talks to the running daemon (``/v1/actions``), because the engine that holds the actions, checks the
approver and writes the audit log runs there. Approving needs a principal of one's own: a platform API token
(``vigil platform principals add alice`` prints it) whose principal is listed in ``response.approvers`` and is
not the rule's author; pass it with ``--token-file``. Listing and showing need no token.

Exit status: 0 done, 1 refused or failed (the daemon's reason is printed), 2 usage or configuration.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vigil.errors import VigilError
from vigil.response.model import ActionState

EPILOG = """\
Examples:
  vigil actions list --state pending_approval
  vigil actions show 3f0c...                     # the plan and the timeline; a pending action's
                                                 # proposed plan and its plan_digest
  vigil actions approve 3f0c... --token-file ~/.vigil/alice.token --plan-digest 9a1b...
  vigil actions reject 3f0c... --reason "false positive" --token-file ~/.vigil/alice.token
  vigil actions rollback 3f0c... --token-file ~/.vigil/alice.token
  vigil actions kill-switch                      # is remediation stopped?
  vigil actions kill-switch on --reason "IR-142: runaway rule" --token-file ~/.vigil/alice.token
  vigil actions kill-switch off --token-file ~/.vigil/alice.token
"""

STATES = [state.value for state in ActionState]


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "actions",
        help="list, approve, reject and roll back remediation actions",
        description="The response engine's actions, from the running daemon.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="settings profile (default: config/local.yaml)")
    p.add_argument("--url", help="daemon base URL (default: from http.host and http.port)")
    p.add_argument("--json", action="store_true", help="print JSON")
    ops = p.add_subparsers(dest="op", metavar="OP", required=True)
    ls = ops.add_parser("list", help="actions, newest first")
    ls.add_argument("--state", choices=STATES)
    ls.add_argument("--rule")
    ls.add_argument("--incident")
    ls.add_argument("--limit", type=int, default=100)
    ops.add_parser("show", help="one action with its plan and timeline").add_argument("id")
    for name, text in (("approve", "approve (runs it)"), ("reject", "reject"), ("rollback", "roll back")):
        op = ops.add_parser(name, help=f"{text} an action")
        op.add_argument("id")
        op.add_argument("--token-file", required=True, metavar="FILE", help="your platform API token")
        if name == "reject":
            op.add_argument("--reason", default="", help="why (kept in the audit log)")
        if name == "approve":
            op.add_argument(
                "--plan-digest",
                metavar="DIGEST",
                help="approve only this plan (the proposed plan_digest that 'show' prints); refused if the "
                "target changed since",
            )
    kill = ops.add_parser(
        "kill-switch",
        help="show, or turn on/off, the run-time stop of every remediation",
        description="On: every action is planned, audited and alerted, and nothing is changed, as with "
        "response.dry_run, from now and across restarts; off: remediation resumes (unless response.dry_run "
        "is set in the configuration). Turning it needs an approver's token.",
    )
    kill.add_argument("state", nargs="?", choices=["on", "off"], help="omit to show the switch")
    kill.add_argument("--reason", default="", help="why (kept in the audit log)")
    kill.add_argument("--token-file", metavar="FILE", help="your platform API token (to turn it)")
    _options_anywhere(ops)


def _options_anywhere(ops: Any) -> None:
    """``--json``, ``--config`` and ``--url`` after the operation too (``vigil actions show ID --json``,
    ``vigil actions list --config config/azure.yaml``), not only before it, as the other commands take
    them."""
    for sub in ops.choices.values():
        sub.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
        sub.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help="settings profile")
        sub.add_argument("--url", default=argparse.SUPPRESS, help="daemon base URL")


def run(args: argparse.Namespace) -> int:
    import httpx

    from vigil.api.auth import TOKEN_FILE
    from vigil.platform.commands import default_url
    from vigil.settings import load_settings

    settings = load_settings(args.config)
    base = args.url or default_url(settings)
    try:  # reads carry the local token when this user can read it (the daemon may set http.read_auth)
        local = (settings.data_dir / TOKEN_FILE).read_text(encoding="ascii").strip()
    except OSError:
        local = ""
    headers = {"Authorization": f"Bearer {local}"} if local else {}
    try:
        with httpx.Client(base_url=base, timeout=30, trust_env=False, headers=headers) as client:
            return _call(args, client)
    except httpx.TransportError as exc:
        raise VigilError(f"cannot reach the daemon at {base} ({exc}); is it running (vigil run)?") from None


def _call(args: argparse.Namespace, client: Any) -> int:
    if args.op == "list":
        params = {
            k: v for k, v in (("state", args.state), ("rule", args.rule), ("incident", args.incident)) if v
        }
        r = client.get("/v1/actions", params={**params, "limit": args.limit})
        _check(r)
        actions = r.json()["actions"]
        if args.json:
            print(json.dumps(actions))
        else:
            for a in actions:
                print(f"{a['id'][:12]}  {a['state']:16s} {a['remediation']:14s} {a['target']}  ({a['rule']})")
        return 0
    if args.op == "show":
        r = client.get(f"/v1/actions/{args.id}")
        _check(r)
        print(json.dumps(r.json(), indent=None if args.json else 2, sort_keys=True))
        return 0
    if args.op == "kill-switch":
        return _kill_switch(args, client)
    token = Path(args.token_file).read_text(encoding="ascii").strip()
    body = {"reason": args.reason} if args.op == "reject" else {}
    if args.op == "approve" and args.plan_digest:
        body = {"plan_digest": args.plan_digest}
    r = client.post(
        f"/v1/actions/{args.id}/{args.op}", json=body, headers={"Authorization": f"Bearer {token}"}
    )
    _check(r)
    action = r.json()
    print(json.dumps(action, sort_keys=True) if args.json else f"{action['id']}: {action['state']}")
    return 0


def _kill_switch(args: argparse.Namespace, client: Any) -> int:
    if args.state is None:
        r = client.get("/v1/response/kill-switch")
    else:
        if not args.token_file:
            raise VigilError("turning the kill switch needs --token-file (an approver's platform API token)")
        token = Path(args.token_file).read_text(encoding="ascii").strip()
        body = {"on": args.state == "on", "reason": args.reason}
        r = client.post("/v1/response/kill-switch", json=body, headers={"Authorization": f"Bearer {token}"})
    _check(r)
    doc = r.json()
    if args.json:
        print(json.dumps(doc, sort_keys=True))
        return 0
    switched = doc["switched"]
    who = f" (turned {'on' if switched.get('on') else 'off'} by {switched['by']})" if "by" in switched else ""
    why = " by response.dry_run in the configuration" if doc["configured"] else ""
    print(f"remediation {'STOPPED' if doc['on'] else 'running'}{why}{who}")
    return 0


def _check(response: Any) -> None:
    if response.status_code >= 400:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        raise VigilError(f"{response.status_code}: {message}")
