"""Telemetry signatures: what a node signs is what a verifier with the attested key accepts, and only that."""

from __future__ import annotations

import math

from cryptography.hazmat.primitives.asymmetric import rsa

from vigil.training_node.telemetry import finite, sign, verify

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RECORD = {
    "schema": "vigil.telemetry/1",
    "type": "train.step",
    "node_id": "n1",
    "seq": 7,
    "metrics": {"loss": 0.5},
}


def test_a_signed_record_verifies_with_the_signing_key_only() -> None:
    signed = sign(dict(RECORD), KEY)
    assert verify(signed, KEY.public_key())
    assert not verify(signed, OTHER.public_key())


def test_a_changed_unsigned_or_garbled_record_does_not_verify() -> None:
    signed = sign(dict(RECORD), KEY)
    assert not verify(signed | {"seq": 8}, KEY.public_key())
    assert not verify(dict(RECORD), KEY.public_key())
    assert not verify(signed | {"sig": "not base64!"}, KEY.public_key())
    assert not verify(signed | {"sig": ""}, KEY.public_key())


def test_key_order_does_not_matter_and_non_finite_metrics_become_null() -> None:
    signed = sign(dict(RECORD), KEY)
    reordered = dict(reversed(list(signed.items())))
    assert verify(reordered, KEY.public_key())
    assert finite(math.nan) is None and finite(math.inf) is None and finite(1.5) == 1.5
