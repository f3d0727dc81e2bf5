"""The local training nodes the daemon starts beside itself (``nodes.local``; ``make run`` starts two).

Why child processes and not tasks in the daemon's loop: a node is a separate principal with its own
token, its own ephemeral key and its own view of the platform, and it trains with torch, which would
stall the daemon's event loop. Each node is ``vigil node run`` in its own process, exactly what an
operator would start by hand, talking to the daemon over its HTTP API.

Once the API serves, :class:`NodeFleet` seeds every node as the operator (``vigil node seed``: data key
with a release policy for the node image's measurement, the encrypted data set, a token per node,
registration and grants; repeating it is harmless), then keeps each node running: a run attests, gets
the data key released, trains ``nodes.epochs`` epochs and exits; the next run starts after
``nodes.restart_after``, so telemetry keeps flowing and a silent node means something. A run that ends
in failure (exit status 1: refused, quarantined) is not restarted: the node's state in the platform says
why (``vigil platform nodes list``), and ``vigil platform nodes release`` followed by a daemon restart
brings it back. The nodes' output goes to the daemon's log, each line prefixed with the node id.

Stopping: the daemon stops the fleet first (SIGTERM to each child, then SIGKILL after five seconds), while
the API still answers, so a node's last telemetry is not lost to a closed socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

from vigil.platform.errors import PlatformError
from vigil.rules.schema_forms import parse_duration

if TYPE_CHECKING:
    from vigil.settings import Settings

log = logging.getLogger(__name__)

#: seconds a node gets to stop after SIGTERM before it is killed
STOP_GRACE = 5.0


class NodeFleet:
    """``nodes.local`` training nodes as child processes of the daemon (module docstring)."""

    def __init__(self, settings: Settings, url: str, profile: str | None) -> None:
        self.settings, self.url, self.profile = settings, url, profile
        self.ids = [f"node-{i}" for i in range(1, settings.nodes.local + 1)]
        self.runs: dict[str, int] = dict.fromkeys(self.ids, 0)
        self._procs: dict[str, asyncio.subprocess.Process] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Seed the nodes, then keep them running until ``stop`` is set; never raises."""
        if not self.ids:
            return
        try:
            measurement = self.settings.platform.allowed_measurements[0].lower()
        except IndexError:
            log.error("nodes.local is %d but platform.allowed_measurements is empty", len(self.ids))
            return
        if not await self._seed(measurement):
            return
        keepers = [asyncio.create_task(self._keep(n, stop), name=f"vigil.node.{n}") for n in self.ids]
        await asyncio.gather(*keepers, return_exceptions=True)

    async def _seed(self, measurement: str) -> bool:
        from vigil.platform.local.platform import read_operator_token  # noqa: PLC0415  (torch-free)
        from vigil.training_node.commands import seed_node  # noqa: PLC0415

        nodes = self.settings.nodes
        try:
            operator = read_operator_token(self.settings.platform.dir)
            for node_id in self.ids:
                await seed_node(
                    self.settings,
                    self.url,
                    operator,
                    node_id,
                    measurement,
                    container=nodes.container,
                    key=nodes.key,
                )
        except (PlatformError, OSError) as exc:
            log.error("cannot seed the local training nodes: %s", exc)
            return False
        log.info(
            "seeded %d training node(s): %s (vigil platform nodes list)", len(self.ids), ", ".join(self.ids)
        )
        return True

    def command(self, node_id: str) -> list[str]:
        nodes = self.settings.nodes
        argv = [sys.executable, "-m", "vigil.cli", "node", "run", "--node-id", node_id, "--url", self.url]
        argv += ["--epochs", str(nodes.epochs), "--container", nodes.container, "--key", nodes.key]
        return argv + (["--config", self.profile] if self.profile else [])

    async def _keep(self, node_id: str, stop: asyncio.Event) -> None:
        pause = parse_duration(self.settings.nodes.restart_after).total_seconds()
        while not stop.is_set():
            self.runs[node_id] += 1
            status = await self._once(node_id, stop)
            if stop.is_set():
                return
            if status != 0:
                log.warning(
                    "node %s: run %d ended with status %d; not restarting it (vigil platform nodes list)",
                    node_id,
                    self.runs[node_id],
                    status,
                )
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause)

    async def _once(self, node_id: str, stop: asyncio.Event) -> int:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command(node_id),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                env=env,
            )
        except OSError as exc:
            log.error("node %s: cannot start: %s", node_id, exc)
            return 1
        self._procs[node_id] = proc
        assert proc.stdout is not None
        forward = asyncio.create_task(self._forward(node_id, proc.stdout))
        stopped = asyncio.create_task(stop.wait())
        exited = asyncio.create_task(proc.wait())
        await asyncio.wait({stopped, exited}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not exited.done():
            await _terminate(proc)
        status = await exited
        await forward
        self._procs.pop(node_id, None)
        return status

    @staticmethod
    async def _forward(node_id: str, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                log.info("[%s] %s", node_id, text)


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(proc.wait(), STOP_GRACE)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
