"""The embedded runner behind ``vigil run``: one process, one asyncio loop, no external services.

It runs the drop-folder source, the detect stage (the store's event log through every rule, findings
into the store, exactly once; :mod:`vigil.streams.pipeline`) and the HTTP listener (health, readiness,
metrics, status, findings, rules); the decide → act stages join the same loop in later issues.
Why one loop: the sources, the pipeline and the API share state (counters, the store) without locks,
and a shutdown has one place to happen in.

Shutdown: the first SIGINT or SIGTERM stops taking new files, lets the watcher finish the file it is on
(its output is fsynced, its events published to the store and the file moved), lets the detect stage
process what is published and save a snapshot, then stops the HTTP listener, and :func:`serve` returns 0. A
second signal exits at once (status 128 + signal); the drop folder's journal rolls back the interrupted
file at the next start, so nothing is lost or doubled either way.

The listening socket is bound before the server starts (:mod:`vigil.api.listen`), so a busy port is a clear
error and exit status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading

import uvicorn

from vigil import logs
from vigil.api import create_app
from vigil.api.auth import TOKEN_FILE, local_token
from vigil.api.ingest import direct
from vigil.api.listen import Server, bind, guarded_protocol, url_of
from vigil.detectors import compiled
from vigil.detectors.engine import Detector
from vigil.errors import VigilError
from vigil.events.fields import NATIVE_IDS
from vigil.fsutil import DAEMON_URL_FILE, LockedError, ProcessLock, atomic_write
from vigil.logs import LogFormat
from vigil.rules.lint import with_warnings
from vigil.rules.loader import load_rules
from vigil.rules.schema_forms import parse_duration
from vigil.runtime import PURE_PYTHON, tune_allocator, tune_gc, tune_threads
from vigil.settings import Settings
from vigil.store.sqlite import Store, StoreError
from vigil.streams import RunState
from vigil.streams.alert_run import start_alerts
from vigil.streams.azure_run import start_azure
from vigil.streams.dropfolder import DropFolder, OutputError
from vigil.streams.pipeline import DetectStage
from vigil.streams.platform_run import PlatformRuntime, start_platform
from vigil.streams.reload import Reloader
from vigil.streams.response_run import ResponseRuntime, start_response
from vigil.streams.tail import FileTail
from vigil.streams.telemetry_check import TelemetryCheck
from vigil.training_node.fleet import NodeFleet

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def serve(settings: Settings, profile: str | None = None) -> int:
    """Run until SIGINT/SIGTERM; return the process exit status (0 after a clean shutdown). ``profile`` is
    the settings file named on the command line, handed to the training nodes the daemon starts.

    One daemon per store: the detect stage keeps the event log's end and its cursor in memory, and the
    sources would both take the same files, so a second daemon on the same store stops at once."""
    configure_logging(settings.log_level, settings.log_format)
    path = settings.store.path
    try:
        lock = ProcessLock(path.with_name(path.name + ".lock"))
    except LockedError as exc:
        log.error("another vigil daemon (pid %s) runs on the store %s; stop it first", exc.holder, path)
        return 1
    except OSError as exc:
        log.error("cannot lock the store %s: %s", path, exc)
        return 1
    try:
        return _run(settings, profile)
    finally:
        lock.release()


def _run(settings: Settings, profile: str | None) -> int:
    ruleset = load_rules([settings.detect.rules])
    if not ruleset.ok:
        for diag in ruleset.diagnostics:
            if diag.severity == "error":
                log.error("%s", diag.format())
        log.error(
            "the rule set %s has errors; not starting (check it with: vigil rules lint)",
            settings.detect.rules,
        )
        return 1
    ruleset = with_warnings(ruleset)
    try:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(
            settings.store.path,
            synchronous=settings.store.synchronous,
            incident_window_ms=int(parse_duration(settings.detect.incident_window).total_seconds() * 1000),
        )
    except (OSError, StoreError) as exc:
        log.error("cannot open the store: %s", exc)
        return 1
    detector = Detector(
        ruleset.rules,
        lateness=parse_duration(settings.detect.lateness),
        live=True,
        max_keys=settings.detect.max_keys,
    )
    stage = DetectStage(
        store,
        detector,
        snapshot_every=settings.detect.snapshot_interval,
        retention=settings.store.retention,
        incident_retention=settings.store.incident_retention,
    )
    wake = _Wake()
    watcher = DropFolder(settings, store=store, on_published=wake.set_threadsafe)
    try:  # fail fast on a folder that cannot be created or a journal that cannot be recovered
        watcher.prepare()
        resumed = stage.recover()
    except (OSError, OutputError, StoreError) as exc:
        log.error("cannot prepare the data folders: %s", exc)
        store.close()
        return 1
    log.info(
        "%d rules loaded (%s), detection resumes after event %d of the store %s",
        len(ruleset.rules),
        ruleset.hash[:12],
        resumed,
        settings.store.path,
    )
    try:
        sock = bind(settings.http.host, settings.http.port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.http.host, settings.http.port, exc.strerror or exc)
        return 1
    url_file = settings.data_dir / DAEMON_URL_FILE
    try:  # the CLI finds the daemon here, whatever port it got
        atomic_write(url_file, (url_of(sock) + "\n").encode("ascii"))
    except OSError as exc:
        log.warning("cannot write %s (vigil platform and vigil actions need --url): %s", url_file, exc)
    tune_gc()  # the compiled rule set and the restored state are frozen out of the collector's way
    tune_threads()
    tune_allocator()
    state = RunState(settings=settings, ingest=watcher.stats, store=store, ruleset=ruleset, detector=detector)
    state.detect = stage.stats
    state.wake = wake.set_threadsafe
    state.backlog = stage.backlog
    state.offer = stage.offer
    try:
        state.local_token = local_token(settings.data_dir)
    except OSError as exc:
        log.error("cannot create the local ingestion token in %s: %s", settings.data_dir, exc)
        store.close()
        return 1
    try:
        return asyncio.run(_main(state, watcher, stage, wake, sock, profile))
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            url_file.unlink()
        store.close()


class _Wake:
    """An asyncio.Event that the drop folder's worker thread can set (bound to the loop once it runs)."""

    def __init__(self) -> None:
        self.event: asyncio.Event | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def bind(self) -> asyncio.Event:
        self.loop = asyncio.get_running_loop()
        self.event = asyncio.Event()
        return self.event

    def set_threadsafe(self) -> None:
        if self.loop is not None and self.event is not None:
            self.loop.call_soon_threadsafe(self.event.set)


def configure_logging(level: str, fmt: LogFormat = "text") -> None:
    """Log to stderr at ``level`` in ``fmt`` (text or JSON lines); see :mod:`vigil.logs`."""
    logs.configure(level, fmt)


async def _main(
    state: RunState,
    watcher: DropFolder,
    stage: DetectStage,
    wake: _Wake,
    sock: socket.socket,
    profile: str | None,
) -> int:
    settings = state.settings
    assert state.store is not None and state.ruleset is not None
    try:
        runtime = await start_platform(settings, state.store, state.ruleset, wake.set_threadsafe)
    except (VigilError, OSError) as exc:
        log.error("cannot open the local platform or the audit log: %s", exc)
        return 1
    state.platform = runtime
    state.telemetry_check = TelemetryCheck(runtime.platform.node_keys)
    try:
        alerting = start_alerts(state, url_of(sock))
    except (VigilError, OSError, ValueError) as exc:
        log.error("cannot start alerting (check the alerts settings): %s", exc)
        await runtime.close()
        return 1
    state.alerting = alerting
    try:
        azure = await start_azure(settings, state, wake.set_threadsafe)
    except Exception as exc:  # the SDKs raise their own types for bad settings
        log.error("cannot start the Azure providers and sources (check the azure settings): %s", exc)
        await alerting.close()
        await runtime.close()
        return 1
    state.azure = azure
    try:
        response = start_response(state, runtime, notice=alerting.stage.notice, azure=azure)
    except (VigilError, OSError) as exc:
        log.error("cannot open the response engine: %s", exc)
        if azure is not None:
            await azure.close()
        await alerting.close()
        await runtime.close()
        return 1
    state.response = response.engine
    state.response_alerts = response.alerts
    try:
        fleet = NodeFleet(settings, url_of(sock), profile) if runtime.serve else None
        return await _serve(state, watcher, stage, wake, sock, runtime, response, fleet)
    finally:
        response.close()
        if azure is not None:
            await azure.close()
        await alerting.close()
        await runtime.close()


async def _serve(
    state: RunState,
    watcher: DropFolder,
    stage: DetectStage,
    wake: _Wake,
    sock: socket.socket,
    runtime: PlatformRuntime,
    response: ResponseRuntime,
    fleet: NodeFleet | None,
) -> int:
    loop = asyncio.get_running_loop()
    settings = state.settings
    config = uvicorn.Config(
        direct(create_app(state), state),  # (ingestion skips FastAPI's layers: vigil/api/ingest.py)
        host=settings.http.host,
        port=sock.getsockname()[1],
        log_level=settings.log_level.lower(),
        access_log=settings.log_level == "DEBUG",  # probes every few seconds would drown the log
        timeout_graceful_shutdown=5,
        log_config=None,  # uvicorn logs through ours, in the same format
        http=guarded_protocol(
            state.http_ingest,
            settings.http.header_timeout,
            settings.http.max_connections,
            settings.http.body_timeout,
        ),
    )
    server = Server(config)
    stopping = asyncio.Event()
    signals = _install_signal_handlers(loop, stopping)
    watcher_task = asyncio.create_task(watcher.run(), name="vigil.dropfolder")
    tail = FileTail(settings, state.store) if settings.ingest.tail_files and state.store is not None else None
    tail_task = asyncio.create_task(tail.run(wake.set_threadsafe), name="vigil.tail") if tail else None
    stage_stop = asyncio.Event()
    stage_task = asyncio.create_task(stage.run(wake.bind(), stage_stop), name="vigil.detect")
    reloader = Reloader(state, stage)
    reloader.on_load = lambda ruleset: runtime.rules_loaded(ruleset, reason="reload")
    state.reloader = reloader
    checkpoint_task = asyncio.create_task(runtime.run_checkpoints(stage_stop), name="vigil.audit")
    response_task = asyncio.create_task(response.run(stage_stop), name="vigil.response")
    assert state.alerting is not None
    alert_task = asyncio.create_task(state.alerting.run(stage_stop), name="vigil.alerts")
    reload_task = asyncio.create_task(reloader.watch(stage_stop), name="vigil.rules-reload")
    azure = state.azure
    azure_task = asyncio.create_task(azure.run_sources(stage_stop), name="vigil.azure") if azure else None
    server_task = asyncio.create_task(server.serve(sockets=[sock]), name="vigil.http")
    status = 0
    try:
        while not server.started and not server_task.done():
            await asyncio.sleep(0.02)
        if server.started:
            log.info(
                "serving on %s (/healthz /readyz /metrics /v1/status /v1/findings /v1/rules)", url_of(sock)
            )
            native = (("threshold windows", compiled.NATIVE), ("event ids", NATIVE_IDS))
            slow = [name for name, on in native if not on]
            if slow:
                log.warning(
                    "%s run in pure Python (%s): slower than the compiled modules",
                    " and ".join(slow),
                    "VIGIL_PURE_PYTHON is set" if PURE_PYTHON else "a C module was not built",
                )
            log.info(
                'send events: curl -H "Authorization: Bearer $(cat %s)" --data-binary @FILE %s/v1/events',
                settings.data_dir / TOKEN_FILE,
                url_of(sock),
            )
            if runtime.serve:
                log.info(
                    "local platform at %s/platform/v1 (operator token in %s; vigil platform --help)",
                    url_of(sock),
                    runtime.platform.root / "operator.token",
                )
            log.info(
                "watching drop folder %s (events -> %s)",
                settings.ingest.drop_dir,
                settings.output.events_file,
            )
        fleet_stop = asyncio.Event()  # the nodes stop first, while the API still takes their telemetry
        fleet_task = asyncio.create_task(fleet.run(fleet_stop), name="vigil.nodes") if fleet else None
        stop_wait = asyncio.create_task(stopping.wait())
        done, _ = await asyncio.wait(
            {stop_wait, watcher_task, server_task, stage_task}, return_when=asyncio.FIRST_COMPLETED
        )
        stop_wait.cancel()
        if stop_wait not in done:
            status = 1
            names = [n for t, n in ((server_task, "HTTP listener"), (watcher_task, "watcher")) if t in done]
            names += ["detect stage"] if stage_task in done else []
            log.error("%s stopped unexpectedly; shutting down", ", ".join(names))
        fleet_stop.set()
        if fleet_task is not None:
            await fleet_task
        watcher.stop()
        try:
            await watcher_task
        except Exception:
            status = 1
            log.exception("drop-folder watcher failed")
        if tail is not None and tail_task is not None:
            tail.stop()
            try:
                await tail_task
            except Exception:
                status = 1
                log.exception("file tail failed")
        stage_stop.set()  # after the watcher: the last file's events are processed, then a snapshot
        try:
            if azure_task is not None:
                await azure_task
            await reload_task
            await checkpoint_task
            await response_task
            await alert_task
            await stage_task
        except Exception:
            status = 1
            log.exception("detect stage failed")
        server.should_exit = True
        try:
            await server_task
        except Exception:
            status = 1
            log.exception("HTTP listener failed")
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    detect = stage.stats
    log.info(
        "stopped (files processed: %d, events detected: %d, findings stored: %d)",
        state.ingest.files_processed,
        detect.events,
        detect.new_findings,
    )
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
