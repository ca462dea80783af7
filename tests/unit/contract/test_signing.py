"""Signed requests: what the signature binds, and how malformed headers are refused."""

from __future__ import annotations

import pytest

from streams.contract.signing import (
    KEY_ID,
    SIGNATURE,
    SIGNER,
    carried,
    ingress_headers,
    read_signed,
    sign,
)
from streams.errors import AuthError

VALUE = b"\xc3\x01 an encoded request"
KEY = "pw_" + "k" * 43


def test_a_direct_producers_signature_verifies_with_its_key_only() -> None:
    headers = sign(VALUE, tenant="acme", key_id="k_1", api_key=KEY)
    assert dict(headers)[KEY_ID] == b"k_1"
    assert dict(headers)[SIGNER] == b"key"
    assert KEY.encode() not in b"".join(v for _, v in headers)  # the key never travels
    found = read_signed(headers)
    assert found.valid(KEY.encode(), b"acme", VALUE)
    assert not found.valid(b"pw_another", b"acme", VALUE)


@pytest.mark.parametrize(
    ("record_key", "value"),
    [
        (b"other", VALUE),  # moved to another tenant's key
        (b"acme", VALUE + b"x"),  # altered value
        (b"acme", VALUE[:-1]),
        (None, VALUE),
    ],
)
def test_the_signature_binds_the_record_key_and_every_byte(
    record_key: bytes | None, value: bytes
) -> None:
    found = read_signed(sign(VALUE, tenant="acme", key_id="k_1", api_key=KEY))
    assert not found.valid(KEY.encode(), record_key, value)


def test_the_key_id_and_signer_are_bound_too() -> None:
    headers = dict(sign(VALUE, tenant="acme", key_id="k_1", api_key=KEY))
    relabelled = [(KEY_ID, b"k_2"), (SIGNER, b"key"), (SIGNATURE, headers[SIGNATURE])]
    assert not read_signed(relabelled).valid(KEY.encode(), b"acme", VALUE)
    as_ingress = [(KEY_ID, b"k_1"), (SIGNER, b"ingress"), (SIGNATURE, headers[SIGNATURE])]
    assert not read_signed(as_ingress).valid(KEY.encode(), b"acme", VALUE)


def test_the_ingress_signs_with_its_own_key() -> None:
    ingress = b"i" * 32
    found = read_signed(ingress_headers(VALUE, tenant="acme", key_id="k_1", ingress_key=ingress))
    assert found.signer == "ingress"
    assert found.key_id == "k_1"
    assert found.valid(ingress, b"acme", VALUE)
    assert not found.valid(KEY.encode(), b"acme", VALUE)


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ([], "no postwire-key-id, postwire-signer, postwire-signature header"),
        ([(KEY_ID, b"k_1"), (SIGNER, b"key")], "no postwire-signature header"),
        ([(KEY_ID, b"k_1"), (SIGNER, b"root"), (SIGNATURE, b"0" * 64)], "not key or ingress"),
        ([(KEY_ID, b"k_1"), (SIGNER, b"key"), (SIGNATURE, b"00")], "not 64 hex digits"),
    ],
)
def test_missing_or_malformed_headers_are_unsigned(
    headers: list[tuple[str, bytes]], says: str
) -> None:
    with pytest.raises(AuthError) as caught:
        read_signed(headers)
    assert caught.value.code == "auth.unsigned"
    assert says in str(caught.value)


def test_only_the_signing_headers_are_carried_along() -> None:
    headers = [*sign(VALUE, tenant="acme", key_id="k_1", api_key=KEY), ("postwire-deferrals", b"2")]
    assert [name for name, _ in carried(headers)] == [KEY_ID, SIGNER, SIGNATURE]
