"""The kill switch at run time: stop every remediation now, without a restart, and say who did it.

``response.dry_run`` in the configuration is the kill switch of a deployment: every action is planned,
audited and alerted, and nothing is changed. During an incident an operator needs the same thing *now*,
from a terminal, without editing a file and restarting the daemon (which would also drop the open windows
of the detectors). So an approver (a principal in ``response.approvers``, authenticated by a platform API
token) turns the switch on or off through ``POST /v1/response/kill-switch`` (``vigil actions kill-switch``):

* the change is audited first (``config_change``, the principal, the reason), and not made if it cannot be;
* it is kept in the store, so a restart does not quietly turn remediation back on;
* ``response.dry_run: true`` in the configuration cannot be switched off at run time: the switch can only
  add a stop, never remove one that the deployment's owner wrote down;
* what is running finishes its current step and then waits, exactly as with the configured dry run
  (:meth:`vigil.response.engine.ResponseEngine.tick`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

import orjson

from vigil.audit.record import Actor, AuditKind
from vigil.errors import VigilError
from vigil.response.recorder import AuditAppender
from vigil.response.store import ActionStore
from vigil.sections import ResponseSettings

#: where the switch is kept (the store's ``meta`` table)
KEY: Final = "response_kill_switch"
REASON_LIMIT: Final = 1000


class KillSwitchForbiddenError(VigilError):
    """The caller may not turn the kill switch (not an approver)."""


class KillSwitch:
    """The effective global dry run: the configured one, or the one an approver turned on."""

    def __init__(
        self,
        store: ActionStore,
        audit: AuditAppender,
        settings: ResponseSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.audit = audit
        self.configured = settings.dry_run
        self.approvers = frozenset(settings.approvers)
        self._clock = clock
        saved = store.setting(KEY)
        self.switched: dict[str, Any] = orjson.loads(saved) if saved else {"on": False}

    @property
    def on(self) -> bool:
        return self.configured or bool(self.switched.get("on"))

    def document(self) -> dict[str, Any]:
        """What ``GET /v1/response/kill-switch`` shows."""
        return {"on": self.on, "configured": self.configured, "switched": self.switched}

    async def set(self, on: bool, user: str, reason: str = "") -> dict[str, Any]:
        """Turn the run-time switch on or off as ``user`` (an approver), audited first; the new document."""
        if user not in self.approvers:
            raise KillSwitchForbiddenError(f"{user!r} is not in response.approvers")
        reason = reason[:REASON_LIMIT]
        details = {"setting": "response.kill_switch", "on": on, "was": self.on, "reason": reason}
        if self.configured and not on:
            details["note"] = "response.dry_run is set in the configuration: remediation stays stopped"
        await self.audit.append(Actor.user(user), AuditKind.CONFIG_CHANGE, "response.kill_switch", details)
        switched = {"on": on, "by": user, "at": self._clock(), "reason": reason}
        self.store.set_setting(KEY, orjson.dumps(switched).decode())
        self.switched = switched
        return self.document()
