"""A loopback fake of the Log Analytics query API (``POST /v1/workspaces/{id}/query``) over HTTPS.

The real ``azure.monitor.query.aio.LogsQueryClient`` talks to it, pointed there with ``endpoint=`` and made
to trust its self-signed certificate with ``connection_verify=<ca file>`` (the bearer-token policy refuses
plain http, reference/azure.md §5.6; TLS is the honest way around it). The certificate is made with
``cryptography`` for ``127.0.0.1`` and lives for the test only.

The server keeps per-table rows, each with its ingestion time, and answers the poller's query form
(``<Table> | where ingestion_time() >[=] datetime(...) | extend _Ingested = ingestion_time() | top N by
_Ingested asc``) with the service's response shape: ``{"tables": [{"name": "PrimaryResult", "columns":
[{"name", "type"}], "rows": [[...]]}]}``. ``partial_next`` makes the next answer a partial result: a 200 with
only some of the rows plus an ``error`` object, as the service sends it. Requests without a bearer token
get 401. Every request body is kept in :attr:`FakeLogAnalytics.requests`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from azure.core.credentials import AccessToken
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_QUERY = re.compile(
    r"^(?P<table>\w+)\n\| where ingestion_time\(\) (?P<op>>=?) datetime\((?P<start>[^)]+)\)\n"
    r"\| extend _Ingested = ingestion_time\(\)\n\| top (?P<n>\d+) by _Ingested asc$"
)
PARTIAL_ERROR = {
    "code": "PartialError",
    "message": "There were some errors when processing your query.",
    "details": [
        {
            "code": "EngineError",
            "message": "Query result set has exceeded the internal record count limit",
            "innererror": {"code": "-2133196797"},
        }
    ],
}


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, as PEM files in ``folder``: (cert, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "vigil test log analytics")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "la-cert.pem", folder / "la-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class StaticCredential:
    """An async token credential that hands out a fixed token (what the client's policy needs)."""

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("test-token", int(dt.datetime.now(dt.UTC).timestamp()) + 3600)

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> StaticCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


def _kql_type(name: str, value: Any) -> str:
    if name == "TimeGenerated" or name.endswith("Time"):
        return "datetime"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "long"
    if isinstance(value, float):
        return "real"
    return "string"


def _parse(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class FakeLogAnalytics:
    """The server's state: rows per table (each ``(ingested, row)``), a request ledger, failure switches."""

    workspace: str
    rows: dict[str, list[tuple[dt.datetime, dict[str, Any]]]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    #: answer the next N queries with a partial result holding only the first half of the rows
    partial_next: int = 0
    url: str = ""

    def add(self, table: str, ingested: dt.datetime, row: dict[str, Any]) -> None:
        self.rows.setdefault(table, []).append((ingested, row))

    async def handle(self, request: web.Request) -> web.Response:
        if request.match_info["workspace"] != self.workspace:
            return web.json_response(
                {"error": {"code": "PathNotFoundError", "message": "no such workspace"}}, status=404
            )
        if request.headers.get("Authorization") != "Bearer test-token":
            return web.json_response(
                {"error": {"code": "AuthorizationRequiredError", "message": "no token"}}, status=401
            )
        body = await request.json()
        self.requests.append(body)
        match = _QUERY.match(body["query"])
        if match is None:
            return web.json_response(
                {"error": {"code": "BadArgumentError", "message": "unknown query"}}, status=400
            )
        start, inclusive = _parse(match["start"]), match["op"] == ">="
        picked = sorted(
            (r for r in self.rows.get(match["table"], []) if r[0] > start or (inclusive and r[0] == start)),
            key=lambda r: r[0],
        )[: int(match["n"])]
        columns = {name: _kql_type(name, value) for _, row in picked for name, value in row.items()}
        names = list(columns)
        table = {
            "name": "PrimaryResult",
            "columns": [{"name": n, "type": columns[n]} for n in names]
            + [{"name": "_Ingested", "type": "datetime"}],
            "rows": [
                [row.get(n) for n in names] + [ingested.isoformat().replace("+00:00", "Z")]
                for ingested, row in picked
            ],
        }
        answer: dict[str, Any] = {"tables": [table]}
        if self.partial_next > 0:
            self.partial_next -= 1
            table["rows"] = table["rows"][: len(table["rows"]) // 2]
            answer["error"] = PARTIAL_ERROR
        return web.json_response(answer)


async def serve(fake: FakeLogAnalytics, cert: Path, key: Path) -> web.AppRunner:
    """Serve ``fake`` on https://127.0.0.1:<random port>; sets ``fake.url``. Stop with ``runner.cleanup()``."""
    app = web.Application()
    app.router.add_post("/v1/workspaces/{workspace}/query", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    server = site._server  # the bound socket's real port
    assert isinstance(server, asyncio.base_events.Server)
    port = server.sockets[0].getsockname()[1]
    fake.url = f"https://127.0.0.1:{port}"
    return runner
