"""Posts are signed as SendGrid signs them: its own helper accepts them."""

from __future__ import annotations

import base64

import pytest
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader

from streams.webhooks.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    EndpointKey,
    generate_key,
    verify,
)

PAYLOAD = b'[{"email":"ann@example.com","event":"processed","sg_event_id":"e1","timestamp":1}]'


@pytest.fixture(scope="module")
def key() -> EndpointKey:
    return EndpointKey(generate_key())


def test_the_header_names_are_sendgrids() -> None:
    assert SIGNATURE_HEADER == EventWebhookHeader.SIGNATURE
    assert TIMESTAMP_HEADER == EventWebhookHeader.TIMESTAMP


def test_sendgrids_helper_verifies_a_signed_post(key: EndpointKey) -> None:
    headers = key.headers(PAYLOAD, 1_765_000_000)
    helper = EventWebhook(key.public_key)
    assert helper.verify_signature(
        PAYLOAD.decode(), headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER]
    )
    assert headers[TIMESTAMP_HEADER] == "1765000000"


def test_a_changed_payload_or_timestamp_does_not_verify(key: EndpointKey) -> None:
    headers = key.headers(PAYLOAD, 1_765_000_000)
    helper = EventWebhook(key.public_key)
    tampered = PAYLOAD.replace(b"processed", b"delivered").decode()
    assert not helper.verify_signature(tampered, headers[SIGNATURE_HEADER], "1765000000")
    assert not helper.verify_signature(PAYLOAD.decode(), headers[SIGNATURE_HEADER], "1765000001")


def test_another_endpoints_key_does_not_verify(key: EndpointKey) -> None:
    other = EndpointKey(generate_key())
    headers = key.headers(PAYLOAD, 5)
    assert not EventWebhook(other.public_key).verify_signature(
        PAYLOAD.decode(), headers[SIGNATURE_HEADER], "5"
    )
    assert not verify(other.public_key, PAYLOAD, headers[SIGNATURE_HEADER], "5")
    assert verify(key.public_key, PAYLOAD, headers[SIGNATURE_HEADER], "5")


def test_the_public_key_is_base64_der_of_p256(key: EndpointKey) -> None:
    der = base64.b64decode(key.public_key)
    # SubjectPublicKeyInfo of an uncompressed P-256 point: 91 bytes
    assert len(der) == 91
    assert key.public_key not in repr(key)


def test_only_p256_keys_are_taken() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="P-256"):
        EndpointKey(p384)
