"""Values and builders shared by the training-node and attestation-service tests.

The software AMD hierarchy uses RSA-2048 for ARK and ASK (AMD's is RSA-4096; the size is a parameter
precisely so tests stay fast). Measurements come from the shipped rule pack: GOOD is in
``lists.allowed_measurements``, UNKNOWN is not, so the rules react to these tests' events as they would
in production.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from vigil.training_node.evidence import LaunchConfig, SoftwareAmd, SoftwareTee
from vigil.training_node.snp import TcbVersion

T = TypeVar("T")

ISSUER = "https://attest.vigil.test"
TEST_ROOT_BITS = 2048
GOOD_MEASUREMENT = bytes.fromhex(
    "3c9e7a15f2d84b60a9c1e3f5b7d9021468ace0f2b4d6089a1c3e5f7b9d0f2a4c6e8a0c2e4f6b8d0a2c4e6f8a0b2c4d6e"
)
UNKNOWN_MEASUREMENT = bytes.fromhex(
    "0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a"
)
HOST_DATA = bytes.fromhex("5f1d8c3a9e7b2046d1c8f3a5b7e9021c4e6a8c0e2f4b6d8a0c2e4f6a8b0d2c4e")
TCB = TcbVersion(bootloader=4, tee=1, snp=22, microcode=213)
MIN_TCB = {"bootloader": 3, "tee": 1, "snp": 20, "microcode": 209}


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def make_amd(directory: Path, **options: Any) -> SoftwareAmd:
    return SoftwareAmd(directory, key_bits=TEST_ROOT_BITS, **options)


def make_tee(amd: SoftwareAmd, chip_id: bytes = b"\x5a" * 64, **config: Any) -> SoftwareTee:
    values: dict[str, Any] = {"measurement": GOOD_MEASUREMENT, "host_data": HOST_DATA, "tcb": TCB} | config
    return SoftwareTee(amd, chip_id, LaunchConfig(**values))


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
