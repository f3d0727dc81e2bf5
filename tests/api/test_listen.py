"""The HTTP server's connection limits (reliability E2) over real TCP: uvicorn with Vigil's guarded protocol
on a loopback port, raw sockets as the slow and idle clients."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import uvicorn

from vigil.api.listen import PARSERS, Server, bind, guarded_protocol, url_of
from vigil.streams import HttpIngestStats


async def _ok(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> None:
    """A minimal ASGI app: reads the whole body, then 200 "ok" (or "ok N" for a body of N bytes)."""
    if scope["type"] != "http":
        return
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": f"ok {size}".encode() if size else b"ok"})


@contextlib.asynccontextmanager
async def _serving(
    stats: HttpIngestStats,
    header_timeout: float,
    max_connections: int,
    body_timeout: float = 60.0,
    parser: str | None = None,
) -> AsyncIterator[str]:
    """uvicorn with the guarded protocol on a loopback port, for the block (its URL)."""
    sock = bind("127.0.0.1", 0)
    protocol = guarded_protocol(stats, header_timeout, max_connections, body_timeout, parser)
    config = uvicorn.Config(_ok, log_config=None, http=protocol, lifespan="off")
    server = Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield url_of(sock)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 5)


@pytest.fixture(params=list(PARSERS))
def parser(request: pytest.FixtureRequest) -> str:
    """Each HTTP parser the daemon can run on (httptools by default, h11 as the fallback) gets the guards."""
    name: str = request.param
    return name


def test_httptools_is_the_default_parser() -> None:
    assert next(iter(PARSERS)) == "httptools"


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)))
    s.settimeout(5)
    return s


async def _closed_by_server(s: socket.socket) -> bool:
    """Whether the server closed ``s`` (a read gives EOF)."""
    try:
        return await asyncio.to_thread(s.recv, 1) == b""
    except (ConnectionResetError, TimeoutError):
        return False


def test_idle_and_slow_request_heads_are_closed_at_the_deadline_and_requests_go_on(parser: str) -> None:
    async def main() -> None:
        stats = HttpIngestStats()
        async with _serving(stats, header_timeout=0.3, max_connections=100, parser=parser) as url:
            idle = [_connect(url) for _ in range(20)]  # never send a byte
            slow = _connect(url)
            slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
            started = time.monotonic()
            assert all(await asyncio.gather(*(_closed_by_server(s) for s in [*idle, slow])))
            assert time.monotonic() - started < 3
            assert stats.header_timeouts == 21
            async with httpx.AsyncClient(base_url=url) as client:  # keep-alive: two requests, one socket
                assert (await client.get("/")).text == "ok"
                await asyncio.sleep(0.5)  # idle between requests: uvicorn's keep-alive, not the head deadline
                assert (await client.get("/")).text == "ok"
            assert stats.header_timeouts == 21
            for s in [*idle, slow]:
                s.close()

    asyncio.run(main())


def test_connections_past_the_cap_are_closed_at_once(parser: str) -> None:
    async def main() -> None:
        stats = HttpIngestStats()
        async with _serving(stats, header_timeout=5.0, max_connections=5, parser=parser) as url:
            held = [_connect(url) for _ in range(5)]
            await asyncio.sleep(0.1)
            extra = _connect(url)
            assert await _closed_by_server(extra)
            assert stats.connections_refused == 1
            held.pop().close()  # one slot frees up: a request gets through again
            await asyncio.sleep(0.1)
            async with httpx.AsyncClient(base_url=url) as client:
                assert (await client.get("/")).status_code == 200
            for s in [*held, extra]:
                s.close()

    asyncio.run(main())


def test_a_body_trickling_in_is_cut_off_at_the_deadline_and_whole_bodies_go_on(parser: str) -> None:
    """The body deadline runs from the head, once per request: a client sending a byte every 0.1 s (the
    head deadline would never see it) is closed after ``body_timeout``; a body that arrives in time, and
    the next request on the same keep-alive connection, are not."""

    async def main() -> None:
        stats = HttpIngestStats()
        async with _serving(
            stats, header_timeout=0.3, max_connections=100, body_timeout=0.6, parser=parser
        ) as url:
            slow = _connect(url)
            slow.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            started = time.monotonic()

            def trickle() -> float:
                try:
                    for _ in range(100):
                        slow.sendall(b"x")
                        time.sleep(0.1)
                except OSError:  # the server closed it
                    return time.monotonic() - started
                return -1.0

            cut_after = await asyncio.to_thread(trickle)
            assert 0.5 < cut_after < 3, cut_after
            assert stats.body_timeouts == 1 and stats.header_timeouts == 0
            async with httpx.AsyncClient(base_url=url) as client:  # keep-alive: two requests, one socket
                assert (await client.post("/", content=b"y" * 100_000)).text == "ok 100000"
                await asyncio.sleep(0.8)  # longer than the body deadline, between requests: no effect
                assert (await client.post("/", content=b"z" * 10)).text == "ok 10"
            assert stats.body_timeouts == 1
            slow.close()

    asyncio.run(main())
