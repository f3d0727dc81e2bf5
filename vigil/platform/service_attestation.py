"""The attestation routes (``/platform/v1/attestation``): how a node proves what it is and gets a token.

A node asks for a single-use ``nonce``, binds it with its ephemeral public key into the report's
``report_data`` (:func:`vigil.training_node.evidence.bind_report_data`), and posts the evidence. The service
checks the chain to the pinned root, the signature, the binding, the policy and the allow-lists
(:class:`~vigil.platform.local.attestation.LocalAttestationService`); on success it returns an MAA-shaped
token that the key vault's ``release`` accepts, and marks a registered, pending node ``attested`` in the
compute registry. A refusal is :class:`~vigil.platform.errors.AttestationError` (403) with the failed check,
and an attestation event that Vigil's rules see.

Both calls are authenticated like every platform route: the node acts with its own principal token. The
service is created on first use: its software root of trust (ARK, ASK) is generated then, not at every
daemon start.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter

from vigil.platform.compute import Compute, NodeState
from vigil.platform.errors import ConflictError, InvalidError, NotFoundError
from vigil.platform.local.attestation import LocalAttestationService
from vigil.platform.service_base import Body, Principal
from vigil.training_node.evidence import EvidenceBundle

SERVICE = "vigil"


class NonceRequest(Body):
    node_id: str | None = None


class AttestRequest(Body):
    node_id: str
    nonce: str
    #: base64url of the node's ephemeral public key (PEM), the one bound in report_data
    public_key: str
    evidence: dict[str, Any]


def add_attestation_routes(
    router: APIRouter,
    service: Callable[[], LocalAttestationService],
    compute: Compute,
    jwks: dict[str, Any],
    on_attested: Callable[[str, bytes], None] | None = None,
) -> None:
    """Add the attestation routes to ``router`` (prefix ``/platform/v1``)."""

    @router.post("/attestation/nonce")
    async def nonce(body: NonceRequest, principal: Principal) -> dict[str, Any]:
        return {"nonce": service().new_nonce(body.node_id)}

    @router.post("/attestation/attest")
    async def attest(body: AttestRequest, principal: Principal) -> dict[str, Any]:
        try:
            bundle = EvidenceBundle.from_json(body.evidence)
            public_key = base64.urlsafe_b64decode(body.public_key + "=" * (-len(body.public_key) % 4))
        except (ValueError, TypeError) as exc:
            raise InvalidError(f"evidence: {exc}") from None
        token = await service().attest(bundle, body.nonce, public_key, node_id=body.node_id)
        if on_attested is not None:  # the key its telemetry must be signed with from now on
            on_attested(body.node_id, public_key)
        with contextlib.suppress(NotFoundError, ConflictError):  # unregistered, or busy: token only
            node = await compute.get_node(SERVICE, body.node_id)
            if node.state in (NodeState.PENDING, NodeState.STOPPED):  # stopped: its next run
                await compute.set_state(SERVICE, body.node_id, NodeState.ATTESTED)
        return {"token": token}

    @router.get("/attestation/certs")
    async def certs(principal: Principal) -> dict[str, Any]:
        """The JWKS of the token-signing key (what a relying party verifies tokens with)."""
        return jwks
