"""Group commit: writes that queue while another write holds the store share the next transaction.

Why: every write of the store is one transaction under one lock, and with ``synchronous=FULL`` each commit
waits for the disk (2-3 ms for an ingestion request's 750 KB here). Worse, a thread that holds the lock
must win the GIL back after each SQLite call (the driver lets it go around every step), and with the event
loop detecting and other requests normalising, each of those waits can take a switch interval or more. In
the ingestion benchmark the request threads spent most of their time queued on that lock while the event
loop sat idle a third of the time. So the thread that gets the lock runs every write queued by then, in
order, in one transaction: one disk sync and one set of GIL round trips for all of them.

A write's effects and result are exactly those of running it alone (each sees the ones before it in the
same transaction, as it would have seen them committed). If the shared transaction fails, each write of the
group is run again in a transaction of its own, so one write's failure is only its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class _Job:
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False


class GroupCommit:
    """Runs writes through ``transaction`` (which runs a function in one transaction and returns its
    result), grouping those that wait for ``lock`` meanwhile."""

    def __init__(self, lock: threading.RLock, transaction: Callable[[Callable[[], Any]], Any]) -> None:
        self._lock = lock
        self._transaction = transaction
        self._queue: list[_Job] = []
        self._queue_lock = threading.Lock()
        #: transactions run (a failed group's retries included), and writes submitted
        self.transactions = 0
        self.writes = 0

    def submit(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` in a transaction, perhaps shared with writes queued at the same time; its result (or
        its exception)."""
        job = _Job(fn)
        with self._queue_lock:
            self._queue.append(job)
        with self._lock:
            if not job.done:  # (else a thread that had the lock ran it: its result is in)
                with self._queue_lock:
                    jobs, self._queue = self._queue, []
                self._run(jobs)
        if job.error is not None:
            raise job.error
        return job.result

    def _run(self, jobs: list[_Job]) -> None:
        try:
            self.transactions += 1
            self.writes += len(jobs)
            if len(jobs) == 1:
                jobs[0].result = self._transaction(jobs[0].fn)
                return
            results = self._transaction(lambda: [job.fn() for job in jobs])
            for job, result in zip(jobs, results, strict=True):
                job.result = result
        except Exception as exc:
            if len(jobs) == 1:
                jobs[0].error = exc
                return
            for job in jobs:  # the group's transaction rolled back: each on its own, so a failure is its own
                self.transactions += 1
                try:
                    job.result = self._transaction(job.fn)
                except Exception as alone:
                    job.error = alone
        finally:
            for job in jobs:
                job.done = True
