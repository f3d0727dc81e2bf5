"""A loopback fake of Azure Resource Manager that keeps state, for the real mgmt SDK clients.

It serves HTTPS on 127.0.0.1 with a random port and a throw-away CA (ARM clients refuse bearer tokens over
plain http; the clients get ``connection_verify=<ca.pem>``), and implements exactly the ARM operations the
compute, network and storage providers call, with the real JSON shapes:

* VMs (power state, tags, NICs, OS disk), ``$expand=instanceView`` and ``/instanceView``; ``deallocate``,
  ``powerOff`` and ``start`` are long-running: ``202`` with ``Azure-AsyncOperation`` and ``Location``, the
  VM in its transitional state (``deallocating``) for ``op_seconds``, or for as long as ``hold`` is set;
* NSGs (``networkInterfaces`` computed from the NICs that use them; delete refused while in use), NICs
  (PUT checks the NSG it names exists), disks, snapshots (PUT checks the source disk);
* storage accounts (PATCH merges properties, ``regenerateKey`` moves ``keyCreationTime``,
  ``revokeUserDelegationKeys``) and management locks at any scope; a ``ReadOnly`` lock makes every
  PUT/PATCH/POST/DELETE under its scope fail with ``409 ScopeLocked``, as on Azure.

Faults are injected per route with :meth:`FakeArm.fail`: a status (``429`` + ``Retry-After``, ``503`` ...)
answered instead of running the request, or — ``after_apply=True`` — after running it (the ambiguous
failure). Every request is kept in :attr:`FakeArm.ledger` (time, method, path, query, body, status).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import re
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from azure.core.credentials import AccessToken
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from vigil.platform.azure.arm import ArmConfig

SUB = "00000000-0000-4000-8000-000000000001"
LOCKS = "/providers/Microsoft.Authorization/locks"
Reply = tuple[int, dict[str, str], Any]


class StaticCredential:
    """An async token credential for tests (what azure-identity's credentials look like to a client)."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("fake-arm-token", int(time.time()) + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> StaticCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def make_tls(folder: Path) -> tuple[Path, ssl.SSLContext]:
    """A CA (``ca.pem``, for the clients) and a server context for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-arm test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    san = x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    )
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(san, critical=False).sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (folder / "server.key").write_bytes(pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")
    return folder / "ca.pem", context


@dataclass
class Call:
    time: float
    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int = 0


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    retry_after: str | None
    times: int
    after_apply: bool
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Operation:
    vm: str
    final_power: str
    started: float = field(default_factory=time.monotonic)
    status: str = "InProgress"


@dataclass
class FakeArm:
    """The state, the routes and the server. Use as a context manager (starts and stops the server)."""

    tls: ssl.SSLContext
    ledger: list[Call] = field(default_factory=list)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)
    power: dict[str, str] = field(default_factory=dict)
    keys: dict[str, dict[str, str]] = field(default_factory=dict)
    operations: dict[str, Operation] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    #: seconds a power operation takes; while ``hold`` is set, operations do not finish at all
    op_seconds: float = 0.05
    hold: bool = False

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- server --------------------------------------------------------------------------------------------

    def __enter__(self) -> FakeArm:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                auth = self.headers.get("Authorization", "")
                status, headers, body = fake.handle(self.command, self.path, raw, auth)
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = _serve  # noqa: N815 (http.server's names)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    # -- building state ------------------------------------------------------------------------------------

    def rid(self, group: str, provider: str, kind: str, name: str) -> str:
        return f"/subscriptions/{SUB}/resourceGroups/{group}/providers/{provider}/{kind}/{name}"

    def put(self, rid: str, body: dict[str, Any]) -> dict[str, Any]:
        name, kind = rid.rsplit("/", 1)[1], "/".join(rid.split("/")[6:8])
        res = {"id": rid, "name": name, "type": kind, **body}
        self.resources[rid.lower()] = res
        return res

    def add_nsg(self, group: str, name: str, location: str = "westeurope") -> str:
        rid = self.rid(group, "Microsoft.Network", "networkSecurityGroups", name)
        self.put(
            rid, {"location": location, "properties": {"securityRules": [], "provisioningState": "Succeeded"}}
        )
        return rid

    def add_vm(
        self, group: str, name: str, *, nics: dict[str, str | None], location: str = "westeurope",
        power: str = "running", tags: dict[str, str] | None = None,
    ) -> str:  # fmt: skip
        """A VM with its OS disk and NICs (``nic name -> NSG id or None``)."""
        disk = self.put(
            self.rid(group, "Microsoft.Compute", "disks", f"{name}-os"),
            {"location": location, "properties": {"diskSizeGB": 64, "provisioningState": "Succeeded"}},
        )
        refs = []
        for i, (nic, nsg) in enumerate(nics.items()):
            props: dict[str, Any] = {"provisioningState": "Succeeded", "ipConfigurations": []}
            if nsg:
                props["networkSecurityGroup"] = {"id": nsg}
            nic_id = self.put(self.rid(group, "Microsoft.Network", "networkInterfaces", nic),
                              {"location": location, "properties": props})["id"]  # fmt: skip
            refs.append({"id": nic_id, "properties": {"primary": i == 0}})
        rid = self.rid(group, "Microsoft.Compute", "virtualMachines", name)
        self.put(rid, {"location": location, "tags": dict(tags or {}), "properties": {
            "provisioningState": "Succeeded", "vmId": secrets.token_hex(8),
            "timeCreated": "2026-11-01T00:00:00Z",
            "storageProfile": {"osDisk": {"name": disk["name"], "osType": "Linux", "createOption": "FromImage",
                                          "managedDisk": {"id": disk["id"]}}},
            "networkProfile": {"networkInterfaces": refs}}})  # fmt: skip
        self.power[rid.lower()] = power
        return rid

    def add_account(self, group: str, name: str, **props: Any) -> str:
        rid = self.rid(group, "Microsoft.Storage", "storageAccounts", name)
        stamp = "2026-11-01T00:00:00.000000Z"
        properties = {
            "provisioningState": "Succeeded", "allowBlobPublicAccess": True, "allowSharedKeyAccess": True,
            "publicNetworkAccess": "Enabled", "keyCreationTime": {"key1": stamp, "key2": stamp},
            "networkAcls": {"defaultAction": "Allow", "bypass": "AzureServices", "ipRules": [],
                            "virtualNetworkRules": []},
            **props,
        }  # fmt: skip
        self.put(rid, {"location": "westeurope", "kind": "StorageV2", "sku": {"name": "Standard_LRS"},
                       "properties": properties})  # fmt: skip
        self.keys[rid.lower()] = {"key1": secrets.token_hex(16), "key2": secrets.token_hex(16)}
        return rid

    def release_hold(self) -> None:
        """Let held operations run from now (as if they had just been accepted)."""
        with self.lock:
            self.hold = False
            for op in self.operations.values():
                op.started = time.monotonic()

    def get(self, rid: str) -> dict[str, Any]:
        return self.resources[rid.lower()]

    def fail(
        self, method: str, pattern: str, status: int, *, retry_after: str | None = None, times: int = 1,
        after_apply: bool = False, headers: dict[str, str] | None = None,
    ) -> None:  # fmt: skip
        """Answer the next ``times`` requests ``method`` whose path matches ``pattern`` with ``status``
        (and ``headers``, such as ``retry-after-ms``)."""
        fault = Fault(
            method, re.compile(pattern, re.I), status, retry_after, times, after_apply, headers or {}
        )
        self.faults.append(fault)

    def calls(self, method: str | None = None, pattern: str = "") -> list[Call]:
        with self.lock:
            return [
                c
                for c in self.ledger
                if (method is None or c.method == method) and re.search(pattern, c.path, re.I)
            ]

    # -- dispatch ------------------------------------------------------------------------------------------

    def handle(self, method: str, target: str, raw: bytes, auth: str) -> Reply:
        parts = urlsplit(target)
        path, query = re.sub("/+", "/", unquote(parts.path)), dict(parse_qsl(parts.query))
        body = json.loads(raw) if raw else None
        with self.lock:
            self._tick()
            call = Call(time.monotonic(), method, path, query, body)
            self.ledger.append(call)
            if not auth.startswith("Bearer "):
                reply: Reply = _error(401, "AuthenticationFailed", "no bearer token")
            else:
                reply = self._faulted(method, path, query, body)
            call.status = reply[0]
            return reply

    def _faulted(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        for fault in self.faults:
            if fault.times > 0 and fault.method == method and fault.pattern.search(path):
                fault.times -= 1
                if fault.after_apply:
                    self._route(method, path, query, body)
                headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                headers |= fault.headers
                code = "TooManyRequests" if fault.status == 429 else "ServiceUnavailable"
                return fault.status, headers, {"error": {"code": code, "message": "injected by the fake"}}
        return self._route(method, path, query, body)

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        if re.search(r"/providers/Microsoft\.Compute/locations/[^/]+/operations/", path, re.I):
            return self._operation(path.rsplit("/", 1)[1], monitor=False)
        if re.search(r"/providers/Microsoft\.Compute/locations/[^/]+/operationResults/", path, re.I):
            return self._operation(path.rsplit("/", 1)[1], monitor=True)
        if LOCKS.lower() in path.lower():
            return self._locks(method, path, body)
        if method != "GET" and (locked := self._locked_by(path)):
            return _error(409, "ScopeLocked", f"the scope is locked by {locked}")
        m = re.match(r"^(?P<res>/subscriptions/[^/]+/resourceGroups/[^/]+/providers/[^/]+/[^/]+/[^/]+)"
                     r"(?:/(?P<action>[^/]+))?$", path, re.I)  # fmt: skip
        if m is None:
            lm = re.match(
                r"^/subscriptions/[^/]+/resourceGroups/([^/]+)/providers/([^/]+)/([^/]+)$", path, re.I
            )
            if lm and method == "GET":
                prefix = path.lower() + "/"
                found = [
                    r
                    for k, r in self.resources.items()
                    if k.startswith(prefix) and k.count("/") == prefix.count("/")
                ]
                return 200, {}, {"value": [self._view(r, expand=False) for r in found]}
            return _error(404, "NotFound", f"no route {method} {path}")
        res, action = m["res"], m["action"]
        kind = res.split("/")[7].lower()
        if action:
            return self._action(method, res, kind, action.lower(), body)
        return self._resource(method, res, kind, query, body)

    def _resource(self, method: str, rid: str, kind: str, query: dict[str, str], body: Any) -> Reply:
        found = self.resources.get(rid.lower())
        if method == "GET":
            if found is None:
                return _error(404, "ResourceNotFound", f"{rid} not found")
            return 200, {}, self._view(found, expand=query.get("$expand") == "instanceView")
        if method == "DELETE":
            if found is None:
                return 204, {}, None
            if kind == "networksecuritygroups" and self._users(rid):
                return _error(400, "InUseNetworkSecurityGroupCannotBeDeleted", "NSG in use")
            del self.resources[rid.lower()]
            return 200, {}, None
        if method == "PATCH":
            if found is None:
                return _error(404, "ResourceNotFound", f"{rid} not found")
            if "tags" in body:
                found["tags"] = dict(body["tags"])
            found["properties"].update(body.get("properties", {}))
            return 200, {}, self._view(found, expand=False)
        if method == "PUT":
            props = dict(body.get("properties", {}))
            ref = props.get("networkSecurityGroup", {}).get("id") if kind == "networkinterfaces" else None
            if ref and ref.lower() not in self.resources:
                return _error(400, "InvalidResourceReference", f"{ref} not found")
            source = props.get("creationData", {}).get("sourceResourceId") if kind == "snapshots" else None
            if kind == "snapshots" and (not source or source.lower() not in self.resources):
                return _error(400, "InvalidParameter", "the snapshot source disk does not exist")
            props["provisioningState"] = "Succeeded"
            rules = props.get("securityRules", [])
            for rule in rules:
                rule["id"] = f"{rid}/securityRules/{rule['name']}"
            made = self.put(rid, {**{k: v for k, v in body.items() if k not in ("id", "name", "type")},
                                  "properties": props})  # fmt: skip
            created = 201 if kind in ("networksecuritygroups", "networkinterfaces") else 200
            return (200 if found else created), {}, self._view(made, expand=False)
        return _error(405, "MethodNotAllowed", method)

    def _action(self, method: str, rid: str, kind: str, action: str, body: Any) -> Reply:
        found = self.resources.get(rid.lower())
        if found is None:
            return _error(404, "ResourceNotFound", f"{rid} not found")
        if kind == "virtualmachines" and action == "instanceview" and method == "GET":
            return 200, {}, self._instance_view(rid)
        if kind == "virtualmachines" and method == "POST" and action in ("deallocate", "poweroff", "start"):
            moving, final = {"deallocate": ("deallocating", "deallocated"), "poweroff": ("stopping", "stopped"),
                             "start": ("starting", "running")}[action]  # fmt: skip
            op = secrets.token_hex(6)
            self.operations[op] = Operation(rid.lower(), final)
            self.power[rid.lower()] = moving
            base = f"{self.url}/subscriptions/{SUB}/providers/Microsoft.Compute/locations/{found['location']}"
            return 202, {"Azure-AsyncOperation": f"{base}/operations/{op}?api-version=2026-04-01",
                         "Location": f"{base}/operationResults/{op}?api-version=2026-04-01"}, None  # fmt: skip
        if kind == "storageaccounts" and method == "POST" and action == "regeneratekey":
            name = body["keyName"]
            self.keys[rid.lower()][name] = secrets.token_hex(16)
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            found["properties"]["keyCreationTime"][name] = stamp
            keys = [
                {"keyName": k, "value": v, "permissions": "FULL"} for k, v in self.keys[rid.lower()].items()
            ]
            return 200, {}, {"keys": keys}
        if kind == "storageaccounts" and method == "POST" and action == "revokeuserdelegationkeys":
            return 200, {}, None
        return _error(404, "NotFound", f"no action {method} {action}")

    def _tick(self) -> None:
        """Finish the operations whose time has come (Azure finishes them whether anyone polls or not)."""
        for op in self.operations.values():
            if (
                op.status == "InProgress"
                and not self.hold
                and time.monotonic() - op.started >= self.op_seconds
            ):
                op.status = "Succeeded"
                self.power[op.vm] = op.final_power

    def _operation(self, op_id: str, *, monitor: bool) -> Reply:
        op = self.operations.get(op_id)
        if op is None:
            return _error(404, "OperationNotFound", op_id)
        if monitor:
            return (202, {}, None) if op.status == "InProgress" else (200, {}, None)
        return 200, {}, {"name": op_id, "status": op.status, "startTime": "2026-11-24T10:00:00Z"}

    def _locks(self, method: str, path: str, body: Any) -> Reply:
        scope, _, name = path.partition(LOCKS) if LOCKS in path else path.partition(LOCKS.lower())
        name = name.lstrip("/")
        if not name:
            return 200, {}, {"value": self.locks_on(scope)}
        rid = f"{scope}{LOCKS}/{name}"
        found = self.resources.get(rid.lower())
        if method == "GET":
            return (200, {}, found) if found else _error(404, "LockNotFound", name)
        if method == "DELETE":
            self.resources.pop(rid.lower(), None)
            return (200 if found else 204), {}, None
        props = body.get("properties", body)
        lock = {"id": rid, "name": name, "type": "Microsoft.Authorization/locks",
                "properties": {"level": props["level"], "notes": props.get("notes", ""), "owners": props.get("owners", [])}}  # fmt: skip
        self.resources[rid.lower()] = lock
        return (200 if found else 201), {}, lock

    # -- views ---------------------------------------------------------------------------------------------

    def locks_on(self, scope: str) -> list[dict[str, Any]]:
        prefix = scope.lower() + LOCKS.lower() + "/"
        return [r for k, r in self.resources.items() if k.startswith(prefix)]

    def _locked_by(self, path: str) -> str:
        low = path.lower()
        for key, res in self.resources.items():
            if LOCKS.lower() + "/" in key and res["properties"]["level"] == "ReadOnly":
                scope = key.split(LOCKS.lower())[0]
                if low == scope or low.startswith(scope + "/"):
                    return str(res["name"])
        return ""

    def _users(self, nsg_id: str) -> list[str]:
        return [r["id"] for k, r in self.resources.items() if "/networkinterfaces/" in k
                and (r["properties"].get("networkSecurityGroup") or {}).get("id", "").lower() == nsg_id.lower()]  # fmt: skip

    def _instance_view(self, rid: str) -> dict[str, Any]:
        power = self.power[rid.lower()]
        return {"statuses": [{"code": "ProvisioningState/succeeded", "level": "Info"},
                             {"code": f"PowerState/{power}", "level": "Info"}]}  # fmt: skip

    def _view(self, res: dict[str, Any], *, expand: bool) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(json.dumps(res))
        if res["type"].lower() == "microsoft.network/networksecuritygroups":
            out["properties"]["networkInterfaces"] = [{"id": i} for i in self._users(res["id"])]
        if expand and res["type"].lower() == "microsoft.compute/virtualmachines":
            out["properties"]["instanceView"] = self._instance_view(res["id"])
        return out


def _error(status: int, code: str, message: str) -> Reply:
    return status, {}, {"error": {"code": code, "message": message}}


@contextlib.contextmanager
def serving(folder: Path) -> Iterator[tuple[FakeArm, ArmConfig]]:
    """A started fake and an :class:`ArmConfig` pointing the real clients at it (fast polling, short waits)."""
    ca, context = make_tls(folder)
    with FakeArm(context) as fake:
        yield fake, ArmConfig(
            SUB, StaticCredential(), endpoint=fake.url, connection_verify=str(ca), polling_interval=0.01,
            retry_backoff_max=2.0, operation_timeout=20.0,
        )  # fmt: skip


def mutations(fake: FakeArm, since: int = 0) -> list[tuple[str, str]]:
    """``(method, last two path segments)`` of every non-GET request after ledger index ``since``."""
    return [(c.method, "/".join(c.path.split("/")[-2:])) for c in fake.ledger[since:] if c.method != "GET"]
