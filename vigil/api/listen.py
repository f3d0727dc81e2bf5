"""The daemon's listening socket and HTTP server: bound by us rather than by uvicorn, so that a busy port is
a clear error and exit status 1 instead of uvicorn's ``sys.exit`` inside our loop, and so that the real port
is known and logged when ``http.port`` is 0.

:func:`guarded_protocol` adds the two connection limits uvicorn lacks (reliability E2). uvicorn closes an
idle keep-alive connection after a few seconds, but a connection that never completes a request head is
kept for ever: ten thousand idle sockets, or a slowloris trickling one header byte at a time, hold a file
descriptor each until the process can accept nothing. So a connection must complete each request head
within ``header_timeout`` seconds of waiting for it (from the connection, or from the first byte after a
response), and past ``max_connections`` open connections a new one is closed at once, before it costs
more than its accept. A request's body must then arrive whole within ``body_timeout`` seconds of its
head, however it trickles in (the size is bounded by ``http.max_body_bytes``): without it, a client sending
one byte a minute holds a connection, and a handler waiting on it, for as long as it likes. All three are
counted (``vigil_http_header_timeouts_total``, ``vigil_http_body_timeouts_total``,
``vigil_http_connections_refused_total``).

The request parser is httptools (llhttp, in C) when it is installed, as it is with Vigil's dependencies:
h11, uvicorn's pure-Python parser, cost about 9 % of the daemon's interpreter time at 20,000 events/s (a
500-event body arrives in ~12 chunks, each scanned in Python). h11 stays as the fallback; both get the
same guards (:data:`PARSERS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Generator
from typing import Final, Protocol, cast

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from vigil.streams import HttpIngestStats


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port`` (IPv4 or IPv6; port 0 picks a free one)."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        if os.name != "nt":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket, IPv6 hosts in brackets."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Server(uvicorn.Server):
    """uvicorn's server without its signal handling: :func:`vigil.streams.embedded.serve` owns the signals
    and the shutdown order.

    uvicorn would otherwise re-raise the captured signal after its shutdown, killing the process with
    SIGTERM's default action instead of letting the daemon return 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


#: uvicorn's HTTP protocols by parser name, the preferred first
PARSERS: Final[dict[str, type[asyncio.Protocol]]] = {}
try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # (httptools not installed: h11 only)
    pass
else:
    PARSERS["httptools"] = HttpToolsProtocol
PARSERS["h11"] = H11Protocol


class _Cycle(Protocol):
    more_body: bool
    response_complete: bool


def guarded_protocol(
    stats: HttpIngestStats,
    header_timeout: float,
    max_connections: int,
    body_timeout: float,
    parser: str | None = None,
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (``parser``: a name in :data:`PARSERS`, the first by default) with
    request-head and request-body deadlines and a connection cap (see module docstring)."""
    # (both protocols keep the attributes used below: connections, cycle, transport, loop)
    base = cast("type[H11Protocol]", PARSERS[parser or next(iter(PARSERS))])

    class Guarded(base):  # type: ignore[valid-type,misc]
        _head_timer: asyncio.TimerHandle | None = None
        _body_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                stats.connections_refused += 1
                transport.close()
                return
            self._await_head()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._in_request():
                self._stop_head_timer()
                if self._body_pending():
                    self._await_body()  # (started once per request: a trickle does not push it back)
                else:
                    self._stop_body_timer()
            else:
                self._stop_body_timer()
                self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            self._stop_body_timer()
            super().connection_lost(exc)

        def _body_pending(self) -> bool:
            cycle: _Cycle | None = self.cycle
            return cycle is not None and cycle.more_body and not cycle.response_complete

        def _await_body(self) -> None:
            if self._body_timer is None and not self.transport.is_closing():
                self._body_timer = self.loop.call_later(body_timeout, self._body_expired)

        def _stop_body_timer(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def _body_expired(self) -> None:
            self._body_timer = None
            if self._body_pending() and not self.transport.is_closing():
                stats.body_timeouts += 1
                self.transport.close()

        def _in_request(self) -> bool:
            cycle: _Cycle | None = self.cycle
            return cycle is not None and not cycle.response_complete

        def _await_head(self) -> None:
            if self._head_timer is None and not self.transport.is_closing():
                self._head_timer = self.loop.call_later(header_timeout, self._head_expired)

        def _stop_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_expired(self) -> None:
            self._head_timer = None
            if not self._in_request() and not self.transport.is_closing():
                stats.header_timeouts += 1
                self.transport.close()

    return Guarded
