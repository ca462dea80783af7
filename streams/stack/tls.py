"""Throwaway TLS material for the embedded broker's secured listener: a CA of its own and a
server certificate it signs for the loopback names (``127.0.0.1``, ``localhost``), as PEM files
Kafka reads directly (``ssl.keystore.type=PEM``), so no keytool and no JKS are involved.

Clients trust the CA file (``POSTWIRE_KAFKA_SSL_CAFILE``); the private keys never leave the
directory they are written to (mode 0600). EC P-256 keys: made in microseconds, and every TLS
stack Kafka clients use speaks them."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from streams.secret import write_private

__all__ = [
    "CertifiedKey",
    "TlsFiles",
    "issue_server_cert",
    "make_ca",
    "write_broker_tls",
]

VALIDITY = timedelta(days=825)  # the longest lifetime browsers and most TLS stacks accept
LOOPBACK = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class CertifiedKey:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def key_pem(self) -> bytes:
        # PKCS#8: the only unencrypted key form Kafka's PEM keystore loads
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


@dataclass(frozen=True)
class TlsFiles:
    """Where the broker's TLS material is: the CA clients trust, and the server's keystore
    (its private key, then its certificate and the CA's, in one PEM file)."""

    ca: Path
    keystore: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(common_name: str = "postwire embedded Kafka CA") -> CertifiedKey:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertifiedKey(key, cert)


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def issue_server_cert(ca: CertifiedKey, hosts: Sequence[str] = LOOPBACK) -> CertifiedKey:
    """A server certificate for ``hosts`` (IP addresses or names), signed by ``ca``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    names = list(dict.fromkeys(hosts))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([_alt_name(h) for h in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        # the broker also dials its own listener (inter-broker): both ends of TLS use this cert
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
        .sign(ca.key, hashes.SHA256())
    )
    return CertifiedKey(key, cert)


def write_broker_tls(directory: Path, hosts: Sequence[str] = LOOPBACK) -> TlsFiles:
    """The CA and the server keystore under ``directory``, made on the first call and reused
    after it (clients keep trusting the same CA across restarts)."""
    files = TlsFiles(directory / "ca.pem", directory / "server.keystore.pem")
    if files.ca.is_file() and files.keystore.is_file():
        return files
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca()
    server = issue_server_cert(ca, [*hosts, *LOOPBACK])
    # the keystore first: a CA file without its keystore is made again on the next call
    write_private(files.keystore, server.key_pem() + server.cert_pem() + ca.cert_pem())
    files.ca.write_bytes(ca.cert_pem())
    return files
