"""A loopback fake of Azure Key Vault (data plane) and of the ARM vault resource, over real TLS.

The real SDK clients talk to it: ``KeyClient`` insists on https and runs the Key Vault challenge protocol
(``../shared/reference/azure.md`` §5.6), so the server speaks TLS on 127.0.0.1 with a certificate from a
throw-away CA (:attr:`FakeKeyVault.ca_path` goes to ``connection_verify``), and answers every data-plane
request without a bearer token with ``401`` + ``WWW-Authenticate: Bearer authorization=…, resource=…``.
ARM paths (``/subscriptions/…``) just require a bearer token, as ARM does; the same server answers them
through :class:`~tests.platform.azure.fake_keyvault_arm.FakeVaults`.

It keeps state (keys with versions, enabled flags, timestamps, exportable flags, release and rotation
policies; vault documents with network ACLs, public network access and access policies), answers with the
service's JSON shapes (``kid`` URLs with versions, ``attributes`` with unix timestamps, ``{"error": {code,
message}}``), refuses a GET, wrap or release of a disabled version with 403 like Key Vault, and can inject
faults per operation (:meth:`FakeKeyVault.inject`): an error *before* applying (429 + Retry-After, 503) or
*after* applying (the change is made, the answer is 503: the case a blind retry turns into two rotations).
Every request lands in :attr:`FakeKeyVault.ledger`.

Release checks only the token's presence and shape and that its issuer is an authority of the version's
policy (the real policy evaluation is Azure's), then wraps the version's material to the token's runtime
encryption key with ``RSA_AES_KEY_WRAP_256`` and returns a JWS whose payload carries it in ``key_hsm``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from tests.platform.azure.fake_keyvault_arm import (
    TENANT,
    FakeVaults,
    ServiceError,
    StaticCredential,
    fail,
    make_server_certificate,
)
from vigil.platform.local.release import token_encryption_key, wrap_for_recipient

__all__ = ["TENANT", "FakeKeyVault", "StaticCredential", "make_server_certificate", "policy_wire"]

CHALLENGE = (
    f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", resource="https://vault.azure.net"'
)


@dataclass
class FakeVersion:
    id: str
    material: bytes
    enabled: bool
    created: int
    updated: int
    exportable: bool
    release_policy: dict[str, Any] | None  # wire form: contentType, data (base64url), immutable


@dataclass
class FakeKey:
    name: str
    kty: str
    versions: list[FakeVersion] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    rotation_policy: dict[str, Any] | None = None

    @property
    def latest(self) -> FakeVersion:
        return self.versions[-1]


@dataclass
class Fault:
    op: str
    status: int
    after: bool
    retry_after: str | None
    times: int
    code: str
    message: str


@dataclass(frozen=True)
class LedgerEntry:
    method: str
    path: str
    op: str
    status: int
    authorized: bool
    time: float


def policy_wire(policy: dict[str, Any], immutable: bool = False) -> dict[str, Any]:
    data = base64.urlsafe_b64encode(json.dumps(policy).encode()).decode().rstrip("=")
    return {"contentType": "application/json; charset=utf-8", "data": data, "immutable": immutable}


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64u(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FakeKeyVault:
    """The fake service (module docstring). Use as a context manager; state is plain attributes."""

    def __init__(self, tmp: Path) -> None:
        self.ca_path, cert, key = make_server_certificate(tmp)
        self.keys: dict[str, FakeKey] = {}
        self.arm = FakeVaults()
        self.faults: list[Fault] = []
        self.ledger: list[LedgerEntry] = []
        self.lock = threading.Lock()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-keyvault", daemon=True
        )

    def __enter__(self) -> FakeKeyVault:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # --- seeding and inspection ------------------------------------------------------------------------

    def add_key(
        self, name: str, *, versions: int = 1, exportable: bool = False, policy: dict[str, Any] | None = None
    ) -> FakeKey:
        key = FakeKey(name, "oct-HSM")
        for _ in range(versions):
            key.versions.append(self._new_version(key, exportable, policy and policy_wire(policy)))
        self.keys[name] = key
        return key

    def add_vault(self, subscription: str, group: str, name: str, **properties: Any) -> str:
        return self.arm.add_vault(subscription, group, name, **properties)

    def vault(self, vault_id: str) -> dict[str, Any]:
        return self.arm.vault(vault_id)

    def inject(
        self,
        op: str,
        status: int,
        *,
        after: bool = False,
        retry_after: str | None = None,
        times: int = 1,
        code: str = "",
        message: str = "",
    ) -> None:
        """Answer the next ``times`` authorized ``op`` requests with ``status`` (applied first if ``after``)."""
        with self.lock:
            default = {429: "Throttled", 403: "Forbidden", 409: "Conflict"}.get(status, "ServiceUnavailable")
            self.faults.append(Fault(op, status, after, retry_after, times, code or default, message))

    def requests(self, op: str | None = None, *, authorized: bool = True) -> list[LedgerEntry]:
        with self.lock:
            return [e for e in self.ledger if (op is None or e.op == op) and e.authorized == authorized]

    # --- request handling (called on server threads, under the lock) -------------------------------------

    def handle(self, method: str, path: str, raw: bytes, authorized: bool) -> tuple[int, Any, dict[str, str]]:
        """Route, apply faults, run; record the request in the ledger. Called under the lock."""
        body = json.loads(raw) if raw else None
        arm = path.startswith("/subscriptions/")
        op, run = self.arm.route(method, path, body) if arm else self._route_keys(method, path, body)
        try:
            status, payload, headers = self._answer(op, run, arm, authorized)
        except ServiceError as exc:
            status, headers = exc.status, exc.headers
            payload = {"error": {"code": exc.code, "message": exc.message}}
        self.ledger.append(LedgerEntry(method, path, op, status, authorized, time.monotonic()))
        return status, payload, headers

    def _answer(self, op: str, run: Any, arm: bool, authorized: bool) -> tuple[int, Any, dict[str, str]]:
        if not authorized:
            if arm:
                return 401, {"error": {"code": "AuthenticationFailed", "message": "no bearer token"}}, {}
            return (
                401,
                {"error": {"code": "Unauthorized", "message": "AKV10000"}},
                {"WWW-Authenticate": CHALLENGE},
            )
        fault = next((f for f in self.faults if f.op == op and f.times > 0), None)
        if fault is None:
            return 200, run(), {}
        fault.times -= 1
        if fault.after:
            run()
        headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
        message = fault.message or f"injected {fault.status}"
        return fault.status, {"error": {"code": fault.code, "message": message}}, headers

    def _route_keys(self, method: str, path: str, body: Any) -> tuple[str, Any]:
        parts = path.strip("/").split("/") if path.strip("/") else []
        if path.endswith("/") and len(parts) == 2:
            parts.append("")  # PATCH /keys/{name}/ : the latest version
        if parts[:1] != ["keys"]:
            return "unknown", lambda: fail(404, "NotFound", f"no route {path}")
        if len(parts) == 1 and method == "GET":
            return "list_keys", self._list_keys
        name = parts[1] if len(parts) > 1 else ""
        rest = parts[2:]
        routes: dict[tuple[str, str], tuple[str, Any]] = {
            ("GET", ""): ("get_key", lambda: self._get(name, "")),
            ("GET", "versions"): ("list_versions", lambda: self._versions(name)),
            ("POST", "create"): ("create", lambda: self._create(name, body)),
            ("POST", "rotate"): ("rotate", lambda: self._rotate(name)),
            ("GET", "rotationpolicy"): ("get_rotation_policy", lambda: self._rotation_policy(name, None)),
            ("PUT", "rotationpolicy"): ("set_rotation_policy", lambda: self._rotation_policy(name, body)),
        }
        sub = rest[0] if rest else ""
        if (method, sub) in routes and len(rest) <= 1:
            return routes[(method, sub)]
        if len(rest) == 1 and method == "GET":
            return "get_key", lambda: self._get(name, sub)
        if len(rest) == 1 and method == "PATCH":
            return "update", lambda: self._update(name, sub, body)
        if len(rest) == 2 and method == "POST" and rest[1] in ("release", "wrapkey", "unwrapkey"):
            op = {"release": "release", "wrapkey": "wrap", "unwrapkey": "unwrap"}[rest[1]]
            return op, lambda: getattr(self, f"_{op}")(name, sub, body)
        return "unknown", lambda: fail(404, "NotFound", f"no route {method} {path}")

    # --- keys --------------------------------------------------------------------------------------------

    def _key(self, name: str) -> FakeKey:
        key = self.keys.get(name)
        if key is None:
            raise ServiceError(
                404, "KeyNotFound", f"A key with (name/id) {name} was not found in this key vault."
            )
        return key

    def _version(self, name: str, version: str) -> FakeVersion:
        key = self._key(name)
        if not version:
            return key.latest
        for v in key.versions:
            if v.id == version:
                return v
        raise ServiceError(404, "KeyNotFound", f"A key with (name/id) {name}/{version} was not found.")

    def _usable(self, name: str, version: str, what: str) -> FakeVersion:
        v = self._version(name, version)
        if not v.enabled:
            raise ServiceError(403, "Forbidden", f"Operation {what} is not allowed on a disabled key.")
        return v

    def _new_version(self, key: FakeKey, exportable: bool, policy: dict[str, Any] | None) -> FakeVersion:
        now = int(time.time())
        return FakeVersion(secrets.token_hex(16), os.urandom(32), True, now, now, exportable, policy)

    def _kid(self, name: str, version: str) -> str:
        return f"{self.url}/keys/{name}/{version}"

    def _attributes(self, v: FakeVersion) -> dict[str, Any]:
        return {
            "enabled": v.enabled,
            "created": v.created,
            "updated": v.updated,
            "recoveryLevel": "Recoverable+Purgeable",
            "recoverableDays": 90,
            "exportable": v.exportable,
        }

    def _bundle(self, key: FakeKey, v: FakeVersion) -> dict[str, Any]:
        ops = ["wrapKey", "unwrapKey", "encrypt", "decrypt"]
        out = {
            "key": {"kid": self._kid(key.name, v.id), "kty": key.kty, "key_ops": ops},
            "attributes": self._attributes(v),
            "tags": dict(key.tags),
        }
        return out | ({"release_policy": v.release_policy} if v.release_policy else {})

    def _item(self, key: FakeKey, v: FakeVersion) -> dict[str, Any]:
        return {"kid": self._kid(key.name, v.id), "attributes": self._attributes(v), "tags": dict(key.tags)}

    def _list_keys(self) -> dict[str, Any]:
        return {"value": [self._item(k, k.latest) for k in self.keys.values()], "nextLink": None}

    def _get(self, name: str, version: str) -> dict[str, Any]:
        return self._bundle(self._key(name), self._usable(name, version, "get"))

    def _versions(self, name: str) -> dict[str, Any]:
        key = self._key(name)
        return {"value": [self._item(key, v) for v in key.versions], "nextLink": None}

    def _create(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        if body.get("kty") not in ("oct-HSM", "oct"):
            raise ServiceError(400, "BadParameter", "this fake creates oct-HSM keys only")
        attributes = body.get("attributes") or {}
        key = self.keys.setdefault(name, FakeKey(name, body["kty"], tags=dict(body.get("tags") or {})))
        version = self._new_version(key, bool(attributes.get("exportable")), body.get("release_policy"))
        key.versions.append(version)
        return self._bundle(key, version)

    def _rotate(self, name: str) -> dict[str, Any]:
        key = self._key(name)
        version = self._new_version(key, key.latest.exportable, key.latest.release_policy)
        key.versions.append(version)
        return self._bundle(key, version)

    def _update(self, name: str, version: str, body: dict[str, Any]) -> dict[str, Any]:
        key, v = self._key(name), self._version(name, version)
        attributes = body.get("attributes") or {}
        if "enabled" in attributes:
            v.enabled = bool(attributes["enabled"])
        if body.get("release_policy") is not None:
            if v.release_policy and v.release_policy.get("immutable"):
                raise ServiceError(409, "Conflict", "The release policy is immutable.")
            v.release_policy = body["release_policy"]
        if body.get("tags") is not None:
            key.tags = dict(body["tags"])
        v.updated = int(time.time())
        return self._bundle(key, v)

    def _rotation_policy(self, name: str, body: dict[str, Any] | None) -> dict[str, Any]:
        key = self._key(name)
        now = int(time.time())
        if body is not None:
            attributes = dict(body.get("attributes") or {})
            created = (key.rotation_policy or {}).get("attributes", {}).get("created", now)
            attributes |= {"created": created, "updated": now}
            key.rotation_policy = {
                "lifetimeActions": body.get("lifetimeActions") or [],
                "attributes": attributes,
            }
        policy = key.rotation_policy or {
            "lifetimeActions": [{"trigger": {"timeBeforeExpiry": "P30D"}, "action": {"type": "Notify"}}],
            "attributes": {},
        }
        return {"id": f"{self.url}/keys/{name}/rotationpolicy"} | policy

    def _wrap(self, name: str, version: str, body: dict[str, Any]) -> dict[str, Any]:
        v = self._usable(name, version, "wrapKey")
        if body.get("alg") != "A256KW":
            raise ServiceError(400, "BadParameter", "alg must be A256KW")
        return {
            "kid": self._kid(name, v.id),
            "value": _b64u(aes_key_wrap(v.material, _unb64u(body["value"]))),
        }

    def _unwrap(self, name: str, version: str, body: dict[str, Any]) -> dict[str, Any]:
        v = self._usable(name, version, "unwrapKey")
        try:
            clear = aes_key_unwrap(v.material, _unb64u(body["value"]))
        except InvalidUnwrap:
            raise ServiceError(400, "BadParameter", "unwrap failed") from None
        return {"kid": self._kid(name, v.id), "value": _b64u(clear)}

    def _release(self, name: str, version: str, body: dict[str, Any]) -> dict[str, Any]:
        v = self._usable(name, version, "release")
        if not v.exportable or v.release_policy is None:
            raise ServiceError(400, "BadParameter", "The key is not exportable or has no release policy.")
        claims = _token_claims(body.get("target"))
        policy = json.loads(_unb64u(v.release_policy["data"]))
        authorities = {a.get("authority", "").rstrip("/") for a in policy.get("anyOf", [])}
        if str(claims.get("iss", "")).rstrip("/") not in authorities:
            raise ServiceError(
                403, "AccessDenied", "Target environment attestation statement cannot be verified."
            )
        recipient = token_encryption_key(claims)
        if recipient is None:
            raise ServiceError(400, "BadParameter", "The attestation token carries no encryption key.")
        pem = recipient.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        key_hsm = {
            "schema_version": "1.0",
            "header": {
                "alg": "dir",
                "enc": body.get("enc") or "CKM_RSA_AES_KEY_WRAP",
                "kid": "TpmEphemeralEncryptionKey",
            },
            "ciphertext": _b64u(wrap_for_recipient(v.material, pem)),
            "generator": "fake-keyvault",
        }
        key = self._key(name)
        released = self._bundle(key, v)
        released["key"]["key_hsm"] = _b64u(json.dumps(key_hsm).encode())
        payload = {
            "request": {"kid": self._kid(name, v.id), "enc": body.get("enc")},
            "response": {"key": released},
        }
        header = {"alg": "RS256", "typ": "JWT"}
        jws = ".".join(_b64u(json.dumps(p).encode()) for p in (header, payload)) + "." + _b64u(os.urandom(64))
        return {"value": jws}


def _token_claims(token: object) -> dict[str, Any]:
    """The payload of a JWT-shaped token; a 400 for anything else (the fake checks shape, not signature)."""
    parts = token.split(".") if isinstance(token, str) else []
    try:
        header, claims = json.loads(_unb64u(parts[0])), json.loads(_unb64u(parts[1]))
    except (IndexError, ValueError):
        raise ServiceError(400, "BadParameter", "The target attestation token is malformed.") from None
    if len(parts) != 3 or header.get("alg") != "RS256" or not isinstance(claims, dict) or "exp" not in claims:
        raise ServiceError(400, "BadParameter", "The target attestation token is malformed.")
    return claims


def _handler(fake: FakeKeyVault) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            authorized = (self.headers.get("Authorization") or "").startswith("Bearer ")
            with fake.lock:
                status, payload, headers = fake.handle(
                    self.command, urlsplit(self.path).path, raw, authorized
                )
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815

    return Handler
