"""The daemon's listening socket and HTTP server: bound by us rather than by uvicorn, so that a busy port is
a clear error and exit status 1 instead of uvicorn's ``sys.exit`` inside our loop, and so that the real port
is known and logged when ``http.port`` is 0."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Generator

import uvicorn


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
