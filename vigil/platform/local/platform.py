"""Open the whole local platform from the settings: master key, key vault, storage, compute, tokens.

One place decides where each piece lives under ``platform.dir`` and in which order they open, so the daemon,
the CLI and the tests build the same platform::

    {platform.dir}/master.key              32 random bytes, 0600 (or a passphrase: salt in master.salt)
    {platform.dir}/vault.db                key vault (material sealed under the master key)
    {platform.dir}/attestation-signing.key the local attestation service's RS256 key, sealed
    {platform.dir}/storage/                storage metadata (storage.db) and encrypted objects
    {platform.dir}/compute.db              the node registry
    {platform.dir}/principals.json         SHA-256 of each principal's API token
    {platform.dir}/operator.token          the token of principal "vigil", for the CLI on this machine (0600)
    {platform.dir}/tee/                    the software TEE's root of trust (ARK, ASK, VCEKs), sealed
    {platform.dir}/node-keys.json          each node's attested public key (its telemetry is checked with it)

The principal ``vigil`` is the platform's own: the storage wraps data keys and the compute registry
suspends nodes as ``vigil``, so it is always an admin, whatever ``platform.admins`` adds. The key vault
trusts attestation tokens from the local attestation service only (``platform.attestation_issuer``); the
Azure profile will trust MAA issuers instead.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Final

from vigil.fsutil import atomic_write
from vigil.platform.events import PlatformObserver
from vigil.platform.local.attestation import LocalAttestationService
from vigil.platform.local.compute import LocalCompute
from vigil.platform.local.keyvault import LocalKeyVault
from vigil.platform.local.masterkey import MasterKey
from vigil.platform.local.node_keys import NodeKeys
from vigil.platform.local.storage import LocalStorage
from vigil.platform.local.tokens import JwksTokenVerifier, TokenIssuer
from vigil.platform.principals import PrincipalTokens
from vigil.sections import PlatformSettings
from vigil.training_node.evidence import SoftwareAmd

log = logging.getLogger(__name__)

SERVICE: Final = "vigil"
#: the TCB components a minimum may name (the ones not named have minimum 0)
TCB_PARTS: Final = ("bootloader", "tee", "snp", "microcode")
OPERATOR_TOKEN: Final = "operator.token"


class LocalPlatform:
    """The opened local platform; :meth:`close` closes every database."""

    def __init__(self, settings: PlatformSettings, observer: PlatformObserver | None = None) -> None:
        root = settings.dir
        root.mkdir(parents=True, exist_ok=True)
        if settings.master_passphrase:
            master = MasterKey.from_passphrase(settings.master_passphrase, root / "master.salt")
        else:
            master = MasterKey.from_file(settings.master_key_file)
        from vigil.rules.schema_forms import parse_duration  # noqa: PLC0415 (imports the rule language)

        admins = [SERVICE, *(a for a in settings.admins if a != SERVICE)]
        self.issuer = TokenIssuer.load_or_create(
            root / "attestation-signing.key", master, settings.attestation_issuer
        )
        self.verifier = JwksTokenVerifier({self.issuer.issuer: self.issuer.jwks()})
        self.vault = LocalKeyVault(
            root / "vault.db",
            master,
            verifier=self.verifier,
            observer=observer,
            admins=admins,
            soft_delete_days=parse_duration(settings.soft_delete_retention).total_seconds() / 86400,
            purge_protection=settings.purge_protection,
        )
        try:
            self.storage = LocalStorage(
                root / "storage",
                self.vault,
                observer=observer,
                admins=admins,
                chunk_size=int(settings.chunk_size),
                service_principal=SERVICE,
            )
            self.compute = LocalCompute(
                root / "compute.db",
                self.vault,
                self.storage,
                observer=observer,
                admins=admins,
                service_principal=SERVICE,
            )
        except BaseException:
            self.vault.close()
            raise
        self.tokens = PrincipalTokens(root / "principals.json")
        self.node_keys = NodeKeys(root / "node-keys.json")
        self.root = root
        self._settings = settings
        self._master = master
        self._observer = observer
        self._attestation: LocalAttestationService | None = None

    def attestation(self) -> LocalAttestationService:
        """The attestation service, made on first use: its software root of trust (the ARK and ASK in
        ``{platform.dir}/tee``, RSA keys that take seconds to make) is created then, not at every start."""
        if self._attestation is None:
            settings = self._settings
            amd = SoftwareAmd(self.root / "tee", key_bits=settings.tee_key_bits, master=self._master)
            self._attestation = LocalAttestationService(
                self.issuer,
                root_pem=amd.ark_pem,
                allowed_measurements=settings.allowed_measurements,
                min_tcb={part: settings.min_tcb.get(part, 0) for part in TCB_PARTS},
                allow_debug=settings.allow_debug,
                min_guest_svn=settings.min_guest_svn,
                allow_smt=settings.allow_smt,
                observer=self._observer,
            )
        return self._attestation

    def operator_token(self) -> str:
        """The token of principal ``vigil`` in ``operator.token``; a new one if missing or stale."""
        path = self.root / OPERATOR_TOKEN
        try:
            token = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            token = ""
        if token and self.tokens.lookup(token) == SERVICE:
            return token
        token = self.tokens.issue(SERVICE)
        atomic_write(path, (token + "\n").encode("ascii"))  # mkstemp creates the file 0600
        return token

    def close(self) -> None:
        self.compute.close()
        self.storage.close()
        self.vault.close()


def read_operator_token(root: Path) -> str:
    """The CLI's side of :meth:`LocalPlatform.operator_token`: the token file, or a clear error."""
    path = root / OPERATOR_TOKEN
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path} does not exist: start the daemon once (vigil run) to create the platform"
        ) from None
