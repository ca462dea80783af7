"""Signing a webhook post as SendGrid signs its Event Webhook (pure).

Each endpoint has its own ECDSA P-256 key. A post carries the epoch-second timestamp in
``X-Twilio-Email-Event-Webhook-Timestamp`` and, in ``X-Twilio-Email-Event-Webhook-Signature``,
the base64 DER signature over SHA-256 of ``timestamp + body``; the receiver checks it with the
public key it was shown (base64 DER SubjectPublicKeyInfo, as SendGrid shows it). Retries sign
again with their own timestamp, so a receiver's freshness check holds for them too."""

from __future__ import annotations

import base64

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "EndpointKey",
    "generate_key",
    "public_key_text",
    "verify",
]

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"


def generate_key() -> bytes:
    """A new P-256 private key as PKCS#8 PEM (to be sealed before it is stored)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_text(public: ec.EllipticCurvePublicKey) -> str:
    """The public key as SendGrid shows it: base64 of the DER SubjectPublicKeyInfo."""
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


class EndpointKey:
    """An endpoint's opened private key (parsed once; never printed)."""

    __slots__ = ("_key", "public_key")

    def __init__(self, pem: bytes) -> None:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            raise ValueError("a webhook signing key must be an ECDSA P-256 key")
        self._key = key
        self.public_key = public_key_text(key.public_key())

    def __repr__(self) -> str:
        return f"EndpointKey(public_key={self.public_key[:16]}...)"

    def headers(self, payload: bytes, timestamp: int) -> dict[str, str]:
        """The two signature headers of a post of ``payload`` made at ``timestamp``."""
        stamp = str(timestamp)
        signature = self._key.sign(stamp.encode() + payload, ec.ECDSA(hashes.SHA256()))
        return {
            SIGNATURE_HEADER: base64.b64encode(signature).decode(),
            TIMESTAMP_HEADER: stamp,
        }


def verify(public_key: str, payload: bytes, signature: str, timestamp: str) -> bool:
    """The receiver's check (what SendGrid's helper does), for the CLI's test and the tests."""
    der = base64.b64decode(public_key)
    key = serialization.load_der_public_key(der)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False
    try:
        key.verify(
            base64.b64decode(signature), timestamp.encode() + payload, ec.ECDSA(hashes.SHA256())
        )
    except (InvalidSignature, ValueError):
        return False
    return True
