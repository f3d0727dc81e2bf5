"""The software TEE: a persisted ARK → ASK → VCEK hierarchy shaped like AMD's, and reports it signs."""

from __future__ import annotations

import hashlib
import pickle
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from vigil.errors import ConfigError
from vigil.platform.errors import IntegrityError
from vigil.platform.local.masterkey import MasterKey
from vigil.training_node.evidence import (
    DEFAULT_ROOT_BITS,
    EvidenceBundle,
    LaunchConfig,
    SoftwareTee,
    bind_report_data,
)
from vigil.training_node.snp import (
    AttestationReport,
    TcbVersion,
    read_vcek_extensions,
    report_signature_valid,
)

from .support import GOOD_MEASUREMENT, HOST_DATA, TCB, make_amd, make_tee, public_pem, run


def chain_of(bundle: EvidenceBundle) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(bundle.cert_chain_pem)


def test_the_chain_is_shaped_like_amds(tee: SoftwareTee) -> None:
    bundle = run(tee.report(bytes(64)))
    vcek, ask, ark = chain_of(bundle)
    assert DEFAULT_ROOT_BITS == 4096  # AMD's size by default; the tests use 2048 for speed
    for child, parent in ((ark, ark), (ask, ark), (vcek, ask)):
        child.verify_directly_issued_by(parent)
        assert child.signature_algorithm_oid == x509.oid.SignatureAlgorithmOID.RSASSA_PSS
        params = child.signature_algorithm_parameters
        assert isinstance(params, padding.PSS) and isinstance(child.signature_hash_algorithm, hashes.SHA384)
    assert isinstance(ark.public_key(), rsa.RSAPublicKey) and isinstance(ask.public_key(), rsa.RSAPublicKey)
    key = vcek.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP384R1)
    assert read_vcek_extensions(vcek) == (TCB, tee.chip_id)
    assert ark.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ark.public_bytes(serialization.Encoding.PEM) == tee.amd.ark_pem


def test_reports_carry_the_configured_launch_values_and_verify(tee: SoftwareTee) -> None:
    data = bytes(range(64))
    bundle = run(tee.report(data))
    report = AttestationReport.parse(bundle.report)
    assert (report.report_data, report.measurement, report.host_data) == (data, GOOD_MEASUREMENT, HOST_DATA)
    assert (report.vmpl, report.guest_svn, report.debug, report.signing_key) == (0, 1, False, 0)
    assert report.chip_id == tee.chip_id and report.tcb() == TCB == report.tcb("current")
    assert report.tcb("committed") == TCB == report.tcb("launch")
    assert (report.version, report.cpuid_fam_id, report.cpuid_mod_id) == (3, 0x19, 0x01)
    vcek_key = chain_of(bundle)[0].public_key()
    assert isinstance(vcek_key, ec.EllipticCurvePublicKey)
    assert report_signature_valid(bundle.report, vcek_key)
    debug = tee.with_config(policy=LaunchConfig.debuggable(GOOD_MEASUREMENT).policy)
    assert AttestationReport.parse(run(debug.report(data)).report).debug
    with pytest.raises(ValueError, match="64 bytes"):
        run(tee.report(bytes(32)))


def test_each_tcb_gets_its_own_vcek_and_the_hierarchy_persists(tmp_path: Path) -> None:
    amd = make_amd(tmp_path)
    low = TcbVersion(bootloader=1, snp=1, microcode=1)
    a, b = make_tee(amd), make_tee(amd, tcb=low)
    vcek_a, vcek_b = chain_of(run(a.report(bytes(64))))[0], chain_of(run(b.report(bytes(64))))[0]
    assert vcek_a.public_key() != vcek_b.public_key() and read_vcek_extensions(vcek_b)[0] == low
    again = make_amd(tmp_path)
    assert again.ark_pem == amd.ark_pem and again.ask_pem == amd.ask_pem
    vcek_again = chain_of(run(make_tee(again).report(bytes(64))))[0]
    assert vcek_again.public_key() == vcek_a.public_key()
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    keys = sorted(p.name for p in tmp_path.glob("*.key"))
    assert keys[:2] == ["ark.key", "ask.key"] and len(keys) == 4
    tee = SoftwareTee.load_or_create(tmp_path, LaunchConfig(GOOD_MEASUREMENT), key_bits=2048)
    assert tee.chip_id == SoftwareTee.load_or_create(tmp_path, LaunchConfig(GOOD_MEASUREMENT)).chip_id
    assert len(tee.chip_id) == 64


def test_keys_are_sealed_under_a_master_key_when_one_is_given(tmp_path: Path) -> None:
    master = MasterKey.generate()
    amd = make_amd(tmp_path, master=master)
    run(make_tee(amd).report(bytes(64)))
    sealed = sorted(p.name for p in tmp_path.glob("*.key.sealed"))
    assert sealed[:2] == ["ark.key.sealed", "ask.key.sealed"] and not list(tmp_path.glob("*.key"))
    for path in tmp_path.glob("*.key.sealed"):
        assert b"\x30\x82" not in path.read_bytes()[:16]  # not a DER PKCS#8 in clear
    assert make_amd(tmp_path, master=master).ark_pem == amd.ark_pem
    with pytest.raises(IntegrityError):
        make_amd(tmp_path, master=MasterKey.generate())
    with pytest.raises(ConfigError, match="sealed keys but no master key"):
        make_amd(tmp_path)
    plain = tmp_path / "plain"
    make_amd(plain)
    with pytest.raises(ConfigError, match="unsealed keys but a master key"):
        make_amd(plain, master=master)


def test_a_key_file_open_to_others_is_refused(tmp_path: Path) -> None:
    make_amd(tmp_path)
    (tmp_path / "ark.key").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        make_amd(tmp_path)


def test_binding_is_sha512_of_nonce_and_key_der(node_key: rsa.RSAPrivateKey) -> None:
    der = node_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = hashlib.sha512(b"n-1" + der).digest()
    assert bind_report_data("n-1", public_pem(node_key)) == expected and len(expected) == 64
    assert bind_report_data("n-2", public_pem(node_key)) != expected


def test_bundles_travel_as_json(tee: SoftwareTee) -> None:
    bundle = run(tee.report(bytes(64)))
    assert EvidenceBundle.from_json(bundle.to_json()) == bundle
    with_runtime = EvidenceBundle(b"r", b"c", runtime_data=b'{"a":1}', provider="azure-cvm")
    assert EvidenceBundle.from_json(with_runtime.to_json()) == with_runtime
    for broken in ({}, {"report": 5, "chain": ""}, {"report": "!!", "chain": "x"}):
        with pytest.raises(ValueError, match="malformed evidence bundle"):
            EvidenceBundle.from_json(broken)


def test_key_holders_hide_their_keys(tee: SoftwareTee) -> None:
    for holder in (tee, tee.amd):
        assert "PRIVATE" not in repr(holder) and "BEGIN" not in repr(holder)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(tee.amd)
    with pytest.raises(ValueError, match="64 bytes"):
        SoftwareTee(tee.amd, bytes(8), tee.config)
    with pytest.raises(ValueError, match="no FMC"):
        SoftwareTee(tee.amd, bytes(64), LaunchConfig(GOOD_MEASUREMENT, tcb=TcbVersion(fmc=1)))
