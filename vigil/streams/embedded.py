"""The embedded runner behind ``vigil run``: one process, one asyncio loop, no external services.

Today it runs the drop-folder source and the HTTP listener (health, readiness, metrics, status); the
detect → decide → act stages join the same loop in later issues. Why one loop: the sources, the pipeline
and the API share state (counters, later the store) without locks, and a shutdown has one place to
happen in.

Shutdown: the first SIGINT or SIGTERM stops taking new files, lets the watcher finish the file it is on
(its output is fsynced and the file moved), then stops the HTTP listener, and :func:`serve` returns 0. A
second signal exits at once (status 128 + signal); the drop folder's journal rolls back the interrupted
file at the next start, so nothing is lost or doubled either way.

The listening socket is bound here rather than by uvicorn, so that a busy port is a clear error and exit
status 1 instead of uvicorn's ``sys.exit`` inside our loop, and so that the real port is known and logged
when ``http.port`` is 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Generator

import uvicorn

from vigil.api import create_app
from vigil.settings import Settings
from vigil.streams import RunState
from vigil.streams.dropfolder import DropFolder, OutputError

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def serve(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM; return the process exit status (0 after a clean shutdown)."""
    configure_logging(settings.log_level)
    watcher = DropFolder(settings)
    try:  # fail fast on a folder that cannot be created or a journal that cannot be recovered
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        watcher.prepare()
    except (OSError, OutputError) as exc:
        log.error("cannot prepare the data folders: %s", exc)
        return 1
    try:
        sock = bind(settings.http.host, settings.http.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.http.host, settings.http.port, exc.strerror or exc)
        return 1
    try:
        return asyncio.run(_main(settings, watcher, sock))
    finally:
        sock.close()


def configure_logging(level: str) -> None:
    """Log to stderr at ``level`` unless the embedding program has configured logging already."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(format=LOG_FORMAT, level=logging.WARNING)
    logging.getLogger("vigil").setLevel(level)


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


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handling: :func:`_main` owns the signals and the shutdown order.

    uvicorn would otherwise re-raise the captured signal after its shutdown, killing the process with
    SIGTERM's default action instead of letting :func:`serve` return 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def _main(settings: Settings, watcher: DropFolder, sock: socket.socket) -> int:
    loop = asyncio.get_running_loop()
    state = RunState(settings=settings, ingest=watcher.stats)
    config = uvicorn.Config(
        create_app(state),
        host=settings.http.host,
        port=sock.getsockname()[1],
        log_level=settings.log_level.lower(),
        access_log=settings.log_level == "DEBUG",  # probes every few seconds would drown the log
        timeout_graceful_shutdown=5,
        log_config=None,  # uvicorn logs through ours, in the same format
    )
    server = _Server(config)
    stopping = asyncio.Event()
    signals = _install_signal_handlers(loop, stopping)
    watcher_task = asyncio.create_task(watcher.run(), name="vigil.dropfolder")
    server_task = asyncio.create_task(server.serve(sockets=[sock]), name="vigil.http")
    status = 0
    try:
        while not server.started and not server_task.done():
            await asyncio.sleep(0.02)
        if server.started:
            log.info("serving on %s (/healthz /readyz /metrics /v1/status)", url_of(sock))
            log.info(
                "watching drop folder %s (events -> %s)",
                settings.ingest.drop_dir,
                settings.output.events_file,
            )
        stop_wait = asyncio.create_task(stopping.wait())
        done, _ = await asyncio.wait(
            {stop_wait, watcher_task, server_task}, return_when=asyncio.FIRST_COMPLETED
        )
        stop_wait.cancel()
        if stop_wait not in done:
            status = 1
            log.error(
                "%s stopped unexpectedly; shutting down",
                "HTTP listener" if server_task in done else "watcher",
            )
        watcher.stop()
        try:
            await watcher_task
        except Exception:
            status = 1
            log.exception("drop-folder watcher failed")
        server.should_exit = True
        try:
            await server_task
        except Exception:
            status = 1
            log.exception("HTTP listener failed")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    log.info("stopped (files processed: %d)", state.ingest.files_processed)
    return status


def _install_signal_handlers(loop: asyncio.AbstractEventLoop, stopping: asyncio.Event) -> list[int]:
    """SIGINT/SIGTERM: first one asks for a clean stop, second one exits at once (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return []

    def on_signal(sig: signal.Signals) -> None:
        if stopping.is_set():
            log.warning("%s again: exiting now; the interrupted file is redone at next start", sig.name)
            os._exit(128 + sig.value)
        log.info("%s: finishing the current file, then stopping", sig.name)
        stopping.set()

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: no add_signal_handler
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig.value)
    return installed
