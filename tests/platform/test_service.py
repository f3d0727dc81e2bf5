"""The platform service over real HTTP: a uvicorn server on 127.0.0.1 (port 0) over the real local providers.

These tests speak raw HTTP (httpx) to pin the wire contract: authentication and the principal header, the
error envelope, 422 without echo, object streaming and the abort of a tampered download. The client's
view of the same server is in ``test_client.py``, which reuses :func:`served` from here.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import uvicorn

from vigil.api.listen import bind, url_of
from vigil.platform.client import PlatformClient
from vigil.platform.errors import (
    HTTP_STATUS,
    AlreadyExistsError,
    NotFoundError,
    PlatformError,
    ReleaseDeniedError,
)
from vigil.platform.local.compute import LocalCompute
from vigil.platform.local.envelope import BATCH_BYTES
from vigil.platform.local.keyvault import LocalKeyVault
from vigil.platform.local.masterkey import MasterKey
from vigil.platform.local.storage import LocalStorage
from vigil.platform.local.tokens import JwksTokenVerifier, TokenIssuer
from vigil.platform.principals import PrincipalTokens
from vigil.platform.service import create_platform_app
from vigil.platform.service_base import error_response

T = TypeVar("T")
ISSUER = "https://attestation.vigil.test"
CHUNK = 64 << 10
API = "/platform/v1"


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers (the test owns the process)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@contextlib.asynccontextmanager
async def serve(app: Any) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port in this event loop; yields its base URL."""
    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(
        app, log_config=None, lifespan="off", access_log=True, timeout_graceful_shutdown=2
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                pytest.fail("uvicorn exited before it started")
            await asyncio.sleep(0.01)
        yield url_of(sock)
    finally:
        server.should_exit = True
        await task
        sock.close()


@functools.cache
def _issuer() -> TokenIssuer:
    """One attestation issuer for the module: an RSA key generation per test would dominate its time."""
    return TokenIssuer.generate(ISSUER)


class Platform:
    """The real local providers on one folder, their tokens, and the app serving them."""

    def __init__(self, root: Path) -> None:
        self.issuer = _issuer()
        master = MasterKey.from_file(root / "master.key")
        verifier = JwksTokenVerifier({ISSUER: self.issuer.jwks()})
        self.vault = LocalKeyVault(root / "vault.db", master, verifier=verifier)
        self.storage = LocalStorage(root / "storage", self.vault, chunk_size=CHUNK)
        self.compute = LocalCompute(root / "compute.db", self.vault, self.storage)
        self.tokens = PrincipalTokens(root / "principals.json")
        self.admin_token = self.tokens.issue("vigil")
        self.node_token = self.tokens.issue("node-1")
        self.app = create_platform_app(self.vault, self.storage, self.compute, self.tokens)
        self.root = root

    def close(self) -> None:
        self.compute.close()
        self.storage.close()
        self.vault.close()


def served(root: Path, scenario: Callable[[Platform, str], Awaitable[T]]) -> T:
    """Run ``scenario(platform, base_url)`` against a fresh platform served over HTTP."""

    async def main() -> T:
        platform = Platform(root)
        try:
            async with serve(platform.app) as url:
                return await scenario(platform, url)
        finally:
            platform.close()

    return asyncio.run(main())


def bearer(token: str, principal: str | None = None) -> dict[str, str]:
    headers = {"Authorization": f"Bearer {token}"}
    if principal is not None:
        headers["X-Vigil-Principal"] = principal
    return headers


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


async def setup_container(http: httpx.AsyncClient, admin: dict[str, str], name: str = "data") -> None:
    r = await http.post(f"{API}/keys", json={"name": "k1"}, headers=admin)
    assert r.status_code == 201, r.text
    r = await http.post(f"{API}/storage/containers", json={"name": name, "key_name": "k1"}, headers=admin)
    assert r.status_code == 201, r.text


# -- authentication ----------------------------------------------------------------------------------------


def test_no_token_or_a_bad_token_is_401_before_the_body_is_looked_at(tmp_path: Path) -> None:
    async def scenario(p: Platform, url: str) -> None:
        async with httpx.AsyncClient(base_url=url) as http:
            for headers in ({}, bearer("not-a-token"), {"Authorization": f"Basic {p.admin_token}"}):
                r = await http.get(f"{API}/keys", headers=headers)
                assert r.status_code == 401, r.text
                assert r.headers["www-authenticate"].startswith("Bearer ")
                assert r.json()["error"]["code"] == "unauthenticated"
            # a malformed body from an unknown caller is still a 401, not a 422 describing the body
            r = await http.post(f"{API}/keys", content=b"{not json", headers=bearer("nope"))
            assert r.status_code == 401
            r = await http.put(f"{API}/storage/containers/data/objects/x", content=b"x" * 1000)
            assert r.status_code == 401

    served(tmp_path, scenario)


def test_the_principal_header_must_be_the_tokens_principal(tmp_path: Path) -> None:
    async def scenario(p: Platform, url: str) -> None:
        async with httpx.AsyncClient(base_url=url) as http:
            r = await http.get(f"{API}/keys", headers=bearer(p.node_token, "vigil"))
            assert r.status_code == 403
            assert r.json()["error"]["code"] == "forbidden"
            assert "node-1" in r.json()["error"]["message"]
            assert (await http.get(f"{API}/keys", headers=bearer(p.admin_token, "vigil"))).status_code == 200
            assert (await http.get(f"{API}/keys", headers=bearer(p.admin_token))).status_code == 200

    served(tmp_path, scenario)


def test_a_principal_without_grants_is_refused_by_the_provider(tmp_path: Path) -> None:
    async def scenario(p: Platform, url: str) -> None:
        async with httpx.AsyncClient(base_url=url) as http:
            admin, node = bearer(p.admin_token), bearer(p.node_token)
            await setup_container(http, admin)
            for method, path, body in (
                ("GET", f"{API}/keys/k1", None),
                ("POST", f"{API}/keys/k1/wrap", {"data_key": b64(os.urandom(32))}),
                ("POST", f"{API}/keys/k1/rotate", None),
                ("GET", f"{API}/storage/containers/data", None),
                ("PUT", f"{API}/storage/containers/data/lock", {"lock": "none"}),
            ):
                r = await http.request(method, path, json=body, headers=node)
                assert r.status_code == 403, (path, r.text)
                assert r.json()["error"]["code"] == "forbidden"
            r = await http.put(f"{API}/storage/containers/data/objects/a", content=b"x", headers=node)
            assert r.status_code == 403
            r = await http.post(
                f"{API}/key-grants",
                json={"grantee": "node-1", "key_name": "k1", "ops": ["wrap"]},
                headers=admin,
            )
            assert r.status_code == 204
            r = await http.post(f"{API}/keys/k1/wrap", json={"data_key": b64(os.urandom(32))}, headers=node)
            assert r.status_code == 200, r.text
            r = await http.delete(
                f"{API}/key-grants", params={"grantee": "node-1", "key_name": "k1"}, headers=admin
            )
            assert r.status_code == 204
            r = await http.post(f"{API}/keys/k1/wrap", json={"data_key": b64(os.urandom(32))}, headers=node)
            assert r.status_code == 403

    served(tmp_path, scenario)


# -- request validation and the error envelope -------------------------------------------------------------


def test_unknown_or_malformed_body_fields_are_422_and_the_input_is_not_echoed(tmp_path: Path) -> None:
    canary = os.urandom(32)

    async def scenario(p: Platform, url: str) -> None:
        async with httpx.AsyncClient(base_url=url) as http:
            admin = bearer(p.admin_token)
            await setup_container(http, admin)
            for path, body, where in (
                (f"{API}/keys/k1/wrap", {"data_key": b64(canary), "extra": b64(canary)}, ["body", "extra"]),
                (f"{API}/keys/k1/wrap", {"data_key": "not base64!" + b64(canary)}, ["body", "data_key"]),
                (f"{API}/keys", {"name": "k2", "kind": "rsa-" + b64(canary)}, ["body", "kind"]),
                (f"{API}/keys", {"name": "k2", "exportable": "yes", "typo": 1}, ["body", "typo"]),
                (f"{API}/storage/containers", {"name": "c2"}, ["body", "key_name"]),
            ):
                r = await http.post(path, json=body, headers=admin)
                assert r.status_code == 422, (body, r.text)
                error = r.json()["error"]
                assert error["code"] == "invalid_request"
                assert where in [d["loc"] for d in error["details"]], error
                assert b64(canary) not in r.text and canary.hex() not in r.text
            r = await http.delete(
                f"{API}/key-grants", params={"grantee": "x", "key_name": "k1", "ops": "fly"}, headers=admin
            )
            assert r.status_code == 422
            r = await http.put(
                f"{API}/storage/containers/data/objects/o",
                content=b"x",
                headers={**admin, "X-Vigil-Metadata": "[1, 2]"},
            )
            assert r.status_code == 422
            assert r.json()["error"]["details"][0]["loc"] == ["header", "x-vigil-metadata"]
            assert (await http.get(f"{API}/keys", headers=admin)).json()["keys"][0]["name"] == "k1"  # no k2

    served(tmp_path, scenario)


def test_provider_errors_keep_their_status_code_and_message(tmp_path: Path) -> None:
    async def scenario(p: Platform, url: str) -> None:
        async with httpx.AsyncClient(base_url=url) as http:
            admin = bearer(p.admin_token)
            r = await http.get(f"{API}/keys/missing", headers=admin)
            assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
            assert "missing" in r.json()["error"]["message"]
            await setup_container(http, admin)
            r = await http.post(f"{API}/keys", json={"name": "k1"}, headers=admin)
            assert (r.status_code, r.json()["error"]["code"]) == (409, "already_exists")
            r = await http.put(
                f"{API}/storage/containers/data/lock", json={"lock": "read_only"}, headers=admin
            )
            assert r.status_code == 200 and r.json()["lock"] == "read_only"
            r = await http.put(f"{API}/storage/containers/data/objects/o", content=b"blocked", headers=admin)
            assert (r.status_code, r.json()["error"]["code"]) == (423, "locked")

    served(tmp_path, scenario)


@pytest.mark.parametrize("cls", [cls for _, cls in sorted((c.code, c) for c in HTTP_STATUS)])
def test_every_error_class_maps_to_its_status_and_code(cls: type[PlatformError]) -> None:
    exc = ReleaseDeniedError("issuer not trusted") if cls is ReleaseDeniedError else cls("what went wrong")
    response = error_response(exc)
    assert response.status_code == HTTP_STATUS[cls]
    body = json.loads(bytes(response.body))
    assert body["error"]["code"] == cls.code
    assert body["error"]["message"] == str(exc)
    if cls is ReleaseDeniedError:
        assert body["error"]["reason"] == "issuer not trusted"


def test_a_subclass_of_a_mapped_error_gets_its_parents_status() -> None:
    class GoneError(NotFoundError):
        pass

    assert error_response(GoneError("x")).status_code == 404
    assert error_response(AlreadyExistsError("x")).status_code == 409


# -- objects -----------------------------------------------------------------------------------------------


def test_object_routes_speak_raw_bytes_with_metadata_head_and_info(tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK + 17)

    async def scenario(p: Platform, url: str) -> None:
        async with httpx.AsyncClient(base_url=url) as http:
            admin = bearer(p.admin_token)
            await setup_container(http, admin)
            obj = f"{API}/storage/containers/data/objects/runs/1/shard.bin"
            r = await http.put(
                obj, content=data, headers={**admin, "X-Vigil-Metadata": '{"run": "1", "n": "\\u00e9"}'}
            )
            assert r.status_code == 201, r.text
            info = r.json()
            assert (info["name"], info["size"], info["metadata"]) == (
                "runs/1/shard.bin",
                len(data),
                {"run": "1", "n": "é"},
            )
            r = await http.head(obj, headers=admin)
            assert r.status_code == 200 and r.content == b""
            assert int(r.headers["content-length"]) == len(data)
            assert r.headers["x-vigil-key-version"] == info["key_version"]
            r = await http.get(f"{API}/storage/containers/data/info/runs/1/shard.bin", headers=admin)
            assert r.json() == info
            r = await http.get(obj, headers=admin)
            assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
            assert r.content == data
            r = await http.get(
                f"{API}/storage/containers/data/objects", params={"prefix": "runs/"}, headers=admin
            )
            assert [o["name"] for o in r.json()["objects"]] == ["runs/1/shard.bin"]
            assert (await http.delete(obj, headers=admin)).status_code == 204
            r = await http.get(obj, headers=admin)
            assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")
            assert (await http.head(obj, headers=admin)).status_code == 404

    served(tmp_path, scenario)


def test_a_tampered_object_aborts_the_download_instead_of_ending_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vigil.platform.service")
    data = os.urandom(BATCH_BYTES + 4 * CHUNK)  # the storage opens 8 MiB per step: tamper with the second

    async def scenario(p: Platform, url: str) -> None:
        async with httpx.AsyncClient(base_url=url) as http:
            admin = bearer(p.admin_token)
            await setup_container(http, admin)
            obj = f"{API}/storage/containers/data/objects/o"
            assert (await http.put(obj, content=data, headers=admin)).status_code == 201
            sealed = max(
                (f for f in (p.root / "storage").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size
            )
            blob = bytearray(sealed.read_bytes())
            assert len(blob) > len(data)
            blob[-CHUNK // 2] ^= 1  # inside the last chunk: the first batch still opens, the answer starts
            sealed.write_bytes(bytes(blob))
            received = bytearray()
            with pytest.raises(httpx.HTTPError):
                async with http.stream("GET", obj, headers=admin) as r:
                    assert r.status_code == 200
                    async for block in r.aiter_bytes():
                        received += block
            assert bytes(received) == data[: len(received)] and len(received) < len(data)
        async with PlatformClient(url, p.admin_token) as client:  # never a clean, short end there either
            with pytest.raises(PlatformError, match="cut off before its end"):
                async for _ in client.storage.get("vigil", "data", "o"):
                    pass

    served(tmp_path, scenario)
    assert "download of data/o aborted: integrity" in caplog.text


def test_an_upload_refused_midway_still_gets_its_answer(tmp_path: Path) -> None:
    async def scenario(p: Platform, url: str) -> None:
        async with httpx.AsyncClient(base_url=url) as http:
            admin, node = bearer(p.admin_token), bearer(p.node_token)
            await setup_container(http, admin)

            async def body() -> AsyncIterator[bytes]:
                for _ in range(64):
                    yield os.urandom(CHUNK)

            # refused before the provider reads the body: the rest is drained, the 403 still arrives
            r = await http.put(f"{API}/storage/containers/data/objects/big", content=body(), headers=node)
            assert r.status_code == 403
            r = await http.get(f"{API}/storage/containers/data/objects", headers=admin)
            assert r.json()["objects"] == []

    served(tmp_path, scenario)
