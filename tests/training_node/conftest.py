"""One software AMD hierarchy per session (RSA keys are the slow part); TEEs over it are cheap."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from vigil.training_node.evidence import SoftwareAmd, SoftwareTee

from .support import make_amd, make_tee


@pytest.fixture(scope="session")
def amd(tmp_path_factory: pytest.TempPathFactory) -> SoftwareAmd:
    return make_amd(tmp_path_factory.mktemp("software-amd"))


@pytest.fixture
def tee(amd: SoftwareAmd) -> SoftwareTee:
    return make_tee(amd)


@pytest.fixture(scope="session")
def node_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)
