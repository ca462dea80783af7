"""The embedded broker's TLS material: a server certificate that a client checking the CA and
the host name accepts for the loopback names, and nobody else's CA does."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.verification import (
    DNSName,
    IPAddress,
    PolicyBuilder,
    Store,
    VerificationError,
)

from streams.stack.tls import issue_server_cert, make_ca, write_broker_tls


def _verify(ca: x509.Certificate, leaf: x509.Certificate, name: x509.verification.Subject) -> None:
    verifier = PolicyBuilder().store(Store([ca])).build_server_verifier(name)
    verifier.verify(leaf, [])


def test_the_server_certificate_verifies_for_loopback_names_only() -> None:
    ca = make_ca()
    server = issue_server_cert(ca)
    _verify(ca.cert, server.cert, IPAddress(ipaddress.ip_address("127.0.0.1")))
    _verify(ca.cert, server.cert, DNSName("localhost"))
    with pytest.raises(VerificationError):
        _verify(ca.cert, server.cert, DNSName("kafka.example"))
    with pytest.raises(VerificationError):
        _verify(make_ca().cert, server.cert, DNSName("localhost"))  # another CA


def test_broker_files_are_made_once_with_a_private_keystore(tmp_path: Path) -> None:
    files = write_broker_tls(tmp_path / "tls", ["kafka.internal"])
    assert stat.S_IMODE(files.keystore.stat().st_mode) == 0o600
    pem = files.keystore.read_bytes()
    # Kafka's PEM keystore: an unencrypted PKCS#8 key, then the chain (server, CA)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    serialization.load_pem_private_key(pem, password=None)
    chain = x509.load_pem_x509_certificates(pem)
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    assert [c.subject for c in chain] == [chain[0].subject, ca.subject]
    _verify(ca, chain[0], DNSName("kafka.internal"))
    _verify(ca, chain[0], IPAddress(ipaddress.ip_address("127.0.0.1")))
    # a second call keeps the CA clients already trust
    before = files.ca.read_bytes()
    assert write_broker_tls(tmp_path / "tls") == files
    assert files.ca.read_bytes() == before
