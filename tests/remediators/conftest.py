"""The real local platform (vault, storage, compute) in ``tmp_path`` for the remediators' tests.

Remediators are exercised against the same providers the daemon runs, through the platform interfaces, as
the ``vigil`` principal; a :class:`CollectingObserver` counts the platform's change events, which is how
the tests prove that a re-run step, a no-op plan or a refused target changed nothing. The vault trusts one
RS256 token issuer (an RSA-2048 key made once per session) so that release decisions can be tested for
real.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from vigil.platform.events import CollectingObserver
from vigil.platform.local.compute import LocalCompute
from vigil.platform.local.keyvault import LocalKeyVault
from vigil.platform.local.masterkey import MasterKey
from vigil.platform.local.release import encryption_jwk
from vigil.platform.local.storage import LocalStorage
from vigil.platform.local.tokens import JwksTokenVerifier, TokenIssuer
from vigil.remediators.base import Context, Plan, Protected, Remediator

T = TypeVar("T")
ADMIN = "vigil"
ISSUER = "https://attest.vigil.test"
M1 = "3c9e7a15f2d84b60a9c1e3f5b7d9021468ace0f2b4d6089a1c3e5f7b9d0f2a4c6e8a0c2e4f6b8d0a2c4e6f8a0b2c4d6e"
M2 = "7a" * 48


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


@pytest.fixture(scope="session")
def issuer_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="session")
def node_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Env:
    """The three local providers on one folder, and the context a remediator acts through."""

    def __init__(self, root: Path, issuer_key: rsa.RSAPrivateKey) -> None:
        self.observer = CollectingObserver()
        self.issuer = TokenIssuer(issuer_key, ISSUER)
        verifier = JwksTokenVerifier({ISSUER: self.issuer.jwks()})
        master = MasterKey.from_file(root / "master.key")
        self.vault = LocalKeyVault(root / "vault.db", master, verifier=verifier, observer=self.observer)
        self.storage = LocalStorage(root / "storage", self.vault, observer=self.observer, chunk_size=1 << 16)
        self.compute = LocalCompute(root / "compute.db", self.vault, self.storage, observer=self.observer)
        self.ctx = Context(self.vault, self.storage, self.compute, ADMIN)

    def protecting(self, **names: frozenset[str]) -> Context:
        """The context with ``keys``/``containers``/``nodes`` protected (Vigil's own resources)."""
        return Context(self.vault, self.storage, self.compute, ADMIN, Protected(**names))

    def changes(self) -> int:
        """How many change events the platform has recorded (denials included)."""
        return len(self.observer.events)

    def token(self, node_key: rsa.RSAPrivateKey, measurement: str, **claims: Any) -> str:
        """An attestation token for a SEV-SNP node of ``measurement`` that carries ``node_key``."""
        body: dict[str, Any] = {
            "x-ms-attestation-type": "sevsnpvm",
            "x-ms-sevsnpvm-is-debuggable": False,
            "x-ms-sevsnpvm-launchmeasurement": measurement,
            "x-ms-runtime": {"keys": [encryption_jwk(node_key.public_key())]},
        }
        return self.issuer.issue(body | claims, ttl=600)

    def close(self) -> None:
        self.compute.close()
        self.storage.close()
        self.vault.close()


@pytest.fixture
def env(tmp_path: Path, issuer_key: rsa.RSAPrivateKey) -> Iterator[Env]:
    e = Env(tmp_path, issuer_key)
    yield e
    e.close()


def pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def plan_for(remediator: Remediator, ctx: Context, target: str, **params: Any) -> Plan:
    """``check`` then ``plan``, as the core does; the plan goes through its JSON form, as when stored."""
    p = remediator.params(params)
    state = await remediator.check(ctx, target, p)
    return Plan.from_json(remediator.plan(target, p, state).to_json())


async def apply_twice(remediator: Remediator, env: Env, plan: Plan) -> list[dict[str, Any]]:
    """Apply every step, then apply it again (a crash before the progress was saved) and require that the
    second run changed nothing on the platform and says so."""
    results = []
    for index in range(len(plan.steps)):
        results.append(await remediator.apply_step(env.ctx, plan, index))
        before = env.changes()
        again = await remediator.apply_step(env.ctx, plan, index)
        assert env.changes() == before, f"re-running step {plan.steps[index].name} changed the platform"
        assert again.get("changed") is False
    return results
