"""The drop-folder source: files put in a folder become events, each exactly once, even across crashes.

Contract for writers (also in config/README.md): put ``*.json``, ``*.jsonl`` or ``*.ndjson`` files directly
in ``ingest.drop_dir``. Write under a dot-name or a ``.tmp`` suffix and rename when complete; both are
ignored until then. A file is taken only when its size and mtime are unchanged across two scans, which
also covers writers that cannot rename, as long as they never pause longer than ``poll_interval``.
Symbolic links are ignored, so nobody can make Vigil copy a file it may read into its dead letters.

For each file, in the order they arrived: normalise it (in a worker thread, so the event loop and the HTTP
listener stay responsive), append its events to ``output.events_file`` and its dead letters to
``output.dead_letter_file``, fsync both, then move it to ``processed/``. A file that cannot be read goes to
``failed/`` with a ``.error`` note beside it, and any output it produced is rolled back.

Exactly once: before a file is touched, a journal (``.vigil-inflight.json`` in the drop folder) records the
sizes of both output files and where the input will be moved. A crash leaves the journal behind; at the
next start, if the input is still in the folder the outputs are truncated back and the file is processed
again, and if it already reached ``processed/`` its output is complete. Only one watcher may own a folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from vigil.events.batch import BatchNormalizer
from vigil.events.deadletter import DeadLetterWriter
from vigil.events.model import encode_events
from vigil.fsutil import atomic_write, fsync_dir, size_of
from vigil.settings import Settings
from vigil.store.sqlite import Store, StoreError
from vigil.streams import IngestStats
from vigil.streams.crash import crash_point

log = logging.getLogger(__name__)

SUFFIXES: Final = (".json", ".jsonl", ".ndjson")
PROCESSED: Final = "processed"
FAILED: Final = "failed"
JOURNAL: Final = ".vigil-inflight.json"
#: longest wait before a file whose move or output keeps failing is tried again
MAX_RETRY_SECONDS: Final = 60.0


class OutputError(Exception):
    """Vigil's own side failed (output file, journal, move); the input is fine and will be retried."""


class _InputError(Exception):
    """The input file could not be read."""


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one input file."""

    name: str
    status: Literal["processed", "failed", "vanished"]
    dest: Path | None = None
    events: int = 0
    dead_letters: int = 0
    control_records: int = 0
    error: str | None = None


class DropFolder:
    """Watches one folder; :meth:`run` is the asyncio task, the other methods are its blocking steps."""

    def __init__(
        self,
        settings: Settings,
        stats: IngestStats | None = None,
        *,
        store: Store | None = None,
        on_published: Callable[[], None] | None = None,
    ) -> None:
        self.stats = stats if stats is not None else IngestStats()
        #: with a store, each file's events and dead letters are staged there while it is read and
        #: published in one transaction when it is complete (then ``on_published`` is called, from the
        #: worker thread)
        self.store = store
        self.on_published = on_published
        self.drop_dir = settings.ingest.drop_dir
        self.processed_dir = self.drop_dir / PROCESSED
        self.failed_dir = self.drop_dir / FAILED
        self.journal = self.drop_dir / JOURNAL
        self.events_file = settings.output.events_file
        self.dead_letter_file = settings.output.dead_letter_file
        self.poll_interval = settings.ingest.poll_interval
        self._format = settings.ingest.format
        self._caps = (int(settings.ingest.max_record_bytes), int(settings.ingest.max_document_bytes))
        self._seen: dict[str, tuple[int, int]] = {}
        self._retry: dict[str, tuple[float, float]] = {}  # name -> (not before, current delay)
        self._stop = asyncio.Event()

    # -- the task -----------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask :meth:`run` to return after the file it is on (call from the event loop thread)."""
        self._stop.set()

    async def run(self) -> None:
        """Scan every ``poll_interval`` until :meth:`stop`; never raises for I/O problems, only logs them."""
        stats = self.stats
        stats.running = True
        try:
            while not self._stop.is_set():
                try:
                    await asyncio.to_thread(self.prepare)
                    for path in await asyncio.to_thread(self.scan):
                        if self._stop.is_set():
                            break
                        stats.current_file = path.name
                        self._record(path.name, await self._process_with_retry(path))
                    stats.last_scan_ok, stats.last_error = True, None
                except (OSError, OutputError) as exc:
                    # Logged when it changes, not every poll: a full disk would otherwise flood the log.
                    level = logging.DEBUG if str(exc) == stats.last_error else logging.ERROR
                    log.log(level, "drop folder %s: %s", self.drop_dir, exc)
                    stats.last_scan_ok, stats.last_error = False, str(exc)
                finally:
                    stats.current_file = None
                    stats.scans += 1
                    stats.last_scan_at = time.time()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=self.poll_interval)
        finally:
            stats.running = False

    async def _process_with_retry(self, path: Path) -> FileOutcome | None:
        try:
            outcome = await asyncio.to_thread(self.process, path)
        except OutputError:
            _, delay = self._retry.get(path.name, (0.0, self.poll_interval))
            self._retry[path.name] = (time.monotonic() + delay, min(delay * 2, MAX_RETRY_SECONDS))
            raise
        self._retry.pop(path.name, None)
        return outcome

    def _record(self, name: str, outcome: FileOutcome | None) -> None:
        stats = self.stats
        stats.pending_files = max(0, stats.pending_files - 1)
        if outcome is None or outcome.status == "vanished":
            return
        if outcome.status == "failed":
            stats.files_failed += 1
            log.error("%s: cannot be read, moved to %s: %s", name, outcome.dest, outcome.error)
            return
        stats.files_processed += 1
        stats.events += outcome.events
        stats.dead_letters += outcome.dead_letters
        stats.control_records += outcome.control_records
        extra = f", {outcome.control_records} control records" if outcome.control_records else ""
        log.log(
            logging.WARNING if outcome.dead_letters else logging.INFO,
            "%s: %d events, %d dead-lettered%s",
            name,
            outcome.events,
            outcome.dead_letters,
            extra,
        )

    # -- blocking steps (worker thread) -------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the folders and finish whatever a previous run left in the journal."""
        for folder in (self.drop_dir, self.processed_dir, self.failed_dir):
            folder.mkdir(parents=True, exist_ok=True)
        for out in (self.events_file, self.dead_letter_file):
            out.parent.mkdir(parents=True, exist_ok=True)
        self.recover()

    def scan(self) -> list[Path]:
        """List the folder; return the files that were already there, unchanged, at the previous scan."""
        current: dict[str, tuple[int, int]] = {}
        ready: list[tuple[int, str]] = []
        now = time.monotonic()
        with os.scandir(self.drop_dir) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") or not name.lower().endswith(SUFFIXES):
                    continue
                try:
                    if not entry.is_file(follow_symlinks=False):
                        continue
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                current[name] = (st.st_size, st.st_mtime_ns)
                if self._seen.get(name) == current[name] and self._retry.get(name, (0.0, 0.0))[0] <= now:
                    ready.append((st.st_mtime_ns, name))
        self._seen = current
        self._retry = {n: r for n, r in self._retry.items() if n in current}
        self.stats.pending_files = len(current)
        return [self.drop_dir / name for _, name in sorted(ready)]

    def process(self, path: Path) -> FileOutcome | None:
        """Normalise one file, make its output durable, move it; see the module docstring for the order."""
        self.recover()
        dest = _free_name(self.processed_dir, path.name)
        offsets = {"events": size_of(self.events_file), "dead": size_of(self.dead_letter_file)}
        token = f"{dest.name}:{uuid.uuid4().hex}"
        self._write_journal({"file": path.name, "dest": str(dest), "token": token, **offsets})
        try:
            outcome = self._normalise(path, dest, token)
        except _InputError as exc:
            self._rollback(offsets, token)
            failed = _free_name(self.failed_dir, path.name)
            try:
                os.replace(path, failed)
                failed.with_name(failed.name + ".error").write_text(f"{exc}\n", encoding="utf-8")
                fsync_dir(self.drop_dir)
                fsync_dir(self.failed_dir)
            except OSError as move_exc:
                raise OutputError(f"{path.name}: cannot move to {FAILED}/: {move_exc}") from move_exc
            self._clear_journal()
            return FileOutcome(path.name, "failed", dest=failed, error=str(exc))
        except (OSError, StoreError) as exc:
            self._rollback(offsets, token)
            self._clear_journal()
            raise OutputError(f"{path.name}: cannot write output: {exc}") from exc
        if outcome.status == "vanished":
            self._rollback(offsets, token)
            self._clear_journal()
            return outcome
        # The commit point: the file's events become visible to the detector all at once. Before it a
        # crash redoes the file; after it the restart only finishes the move (see recover()).
        try:
            crash_point("dropfolder.before_publish")
            if self.store is not None:
                self.store.publish(token, f"file:{dest.name}")
            crash_point("dropfolder.after_publish")
        except StoreError as exc:
            self._rollback(offsets, token)
            self._clear_journal()
            raise OutputError(f"{path.name}: cannot publish to the store: {exc}") from exc
        self._finish(path, dest, token)
        if self.on_published is not None:
            self.on_published()
        return outcome

    def _finish(self, path: Path, dest: Path, token: str) -> None:
        """Move a published file to ``processed/`` and clear the journal."""
        try:
            os.replace(path, dest)
            fsync_dir(self.drop_dir)
            fsync_dir(self.processed_dir)
        except OSError as exc:
            raise OutputError(
                f"{path.name}: cannot move to {PROCESSED}/ (its events are published): {exc}"
            ) from exc
        crash_point("dropfolder.after_move")
        self._clear_journal()
        if self.store is not None:
            with contextlib.suppress(StoreError):
                self.store.forget_published(token)

    def _normalise(self, path: Path, dest: Path, token: str) -> FileOutcome:
        normalizer = BatchNormalizer(
            self._format, max_record_bytes=self._caps[0], max_document_bytes=self._caps[1]
        )
        events = controls = 0
        try:
            fh = path.open("rb", buffering=1 << 20)
        except FileNotFoundError:  # taken away between the scan and now: not ours to judge
            return FileOutcome(path.name, "vanished")
        except OSError as exc:
            raise _InputError(f"cannot open: {exc}") from exc
        with fh, self.events_file.open("ab") as ev_out, self.dead_letter_file.open("ab") as dl_out:
            dead = DeadLetterWriter(dl_out)
            batches = normalizer.stream(fh, str(dest))  # dead letters name the file where it will live
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except OSError as exc:
                    raise _InputError(f"cannot read: {exc}") from exc
                except Exception as exc:
                    raise _internal(path, exc) from exc
                try:
                    data = encode_events(batch.events)
                except Exception as exc:
                    raise _internal(path, exc) from exc
                ev_out.write(data)  # an OSError here is ours (disk, permissions), not the input's
                dead.write(batch.dead)
                if self.store is not None:
                    self.store.stage(token, batch.events, batch.dead)
                events += len(batch.events)
                controls += len(batch.controls)
            for out in (ev_out, dl_out):
                out.flush()
                os.fsync(out.fileno())
        for parent in {self.events_file.parent, self.dead_letter_file.parent}:
            fsync_dir(parent)
        return FileOutcome(path.name, "processed", dest, events, dead.count, controls)

    # -- the journal --------------------------------------------------------------------------------------

    def recover(self) -> None:
        """Finish the file a previous run was on when it stopped, if any (idempotent)."""
        try:
            entry = json.loads(self.journal.read_text(encoding="utf-8"))
            name, dest = entry["file"], Path(entry["dest"])
            offsets = {"events": int(entry["events"]), "dead": int(entry["dead"])}
            token = str(entry.get("token", ""))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise OutputError(f"unreadable journal {self.journal}: {exc}; inspect and delete it") from exc
        try:
            published = self.store is not None and bool(token) and self.store.published(token)
        except StoreError as exc:
            raise OutputError(f"cannot read the store to recover {name}: {exc}") from exc
        if dest.exists():
            log.info("%s: the previous run completed it; its output is kept", name)
        elif (self.drop_dir / name).exists():
            if published:
                log.info("%s: the previous run published it; finishing the move", name)
                self._finish(self.drop_dir / name, dest, token)
                return
            self._rollback(offsets, token)
            log.warning("%s: the previous run stopped inside it; its partial output was removed", name)
        else:
            if not published:
                self._rollback_store(token)
            log.warning("%s: gone since the previous run stopped inside it; its output is kept", name)
        self._clear_journal()

    def _write_journal(self, entry: dict[str, object]) -> None:
        try:
            atomic_write(self.journal, json.dumps(entry).encode())
        except OSError as exc:
            raise OutputError(f"cannot write journal {self.journal}: {exc}") from exc

    def _clear_journal(self) -> None:
        try:
            self.journal.unlink(missing_ok=True)
            fsync_dir(self.drop_dir)
        except OSError as exc:
            raise OutputError(f"cannot remove journal {self.journal}: {exc}") from exc

    def _rollback_store(self, token: str) -> None:
        if self.store is not None and token:
            try:
                self.store.discard(token)
            except StoreError as exc:
                raise OutputError(f"cannot discard staged events: {exc}") from exc

    def _rollback(self, offsets: dict[str, int], token: str = "") -> None:
        """Cut both outputs back to their sizes before the file, and forget what it staged in the store;
        the journal stays if this fails."""
        self._rollback_store(token)
        for out, size in ((self.events_file, offsets["events"]), (self.dead_letter_file, offsets["dead"])):
            try:
                if size_of(out) > size:
                    os.truncate(out, size)
            except OSError as exc:
                raise OutputError(f"cannot roll back {out} to {size} bytes: {exc}") from exc


def _internal(path: Path, exc: Exception) -> _InputError:
    """A bug met on this input: fail the file rather than let it crash every restart (a poison pill)."""
    log.error("%s: unexpected error while normalising", path.name, exc_info=exc)
    return _InputError(f"internal error: {type(exc).__name__}: {exc}")


def _free_name(folder: Path, name: str) -> Path:
    """``folder/name``, or ``folder/stem.N.suffix`` when a file of that name was processed before."""
    candidate = folder / name
    stem, dot, suffix = name.rpartition(".")
    n = 0
    while candidate.exists():
        n += 1
        candidate = folder / f"{stem}.{n}{dot}{suffix}"
    return candidate
