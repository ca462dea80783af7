"""Unsubscribe tokens: round trip, tampering, another server's key, no readable address."""

from __future__ import annotations

import base64
import uuid

import pytest

from streams.errors import UnsubscribeTokenError
from streams.mail.unsubscribe import (
    PREFIX,
    Unsubscribe,
    decode,
    encode,
    fits_local_part,
    recipient_tag,
)
from streams.mail.verp import encode as verp_encode
from streams.secret import ServerSecret

SECRET = ServerSecret(bytes(range(32)))
OTHER = ServerSecret(bytes(range(1, 33)))
API_ID = "0123456789abcdef0123456789abcdef"
IDS = [API_ID, f"{API_ID}.7", str(uuid.UUID(int=12345)), "r1", "x" * 19]


@pytest.mark.parametrize("message_id", IDS)
@pytest.mark.parametrize("group", [None, 0, 1, 42, (1 << 21) - 2])
def test_round_trip_names_message_recipient_and_group(message_id: str, group: int | None) -> None:
    token = encode(SECRET, "acme", message_id, "Gina@Example.org", group)
    assert token is not None
    assert token.startswith(PREFIX)
    tag = recipient_tag(SECRET, "acme", message_id, "gina@example.org")
    assert decode(SECRET, token) == Unsubscribe(message_id, tag, group)
    assert decode(SECRET, token.upper()) == decode(SECRET, token)  # a folded local part


def test_token_is_url_safe_and_holds_no_address() -> None:
    token = encode(SECRET, "acme", API_ID, "gina.longname@example.org")
    assert token is not None
    assert token.isalnum()
    assert token == token.lower()
    for part in ("gina", "longname", "example", "acme"):
        assert part not in token
    assert fits_local_part(token)


def test_the_tag_binds_the_tenant_and_the_recipient() -> None:
    tag = recipient_tag(SECRET, "acme", API_ID, "gina@example.org")
    assert tag != recipient_tag(SECRET, "other", API_ID, "gina@example.org")
    assert tag != recipient_tag(SECRET, "acme", API_ID, "gino@example.org")
    assert tag == recipient_tag(SECRET, "acme", API_ID, "GINA@example.org")


def test_every_altered_character_is_refused() -> None:
    token = encode(SECRET, "acme", API_ID, "gina@example.org", 3)
    assert token is not None
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    for i in range(1, len(token)):
        swapped = alphabet[(alphabet.index(token[i]) + 1) % 32]
        with pytest.raises(UnsubscribeTokenError):
            decode(SECRET, token[:i] + swapped + token[i + 1 :])


def test_another_servers_key_is_refused() -> None:
    token = encode(SECRET, "acme", API_ID, "gina@example.org")
    assert token is not None
    with pytest.raises(UnsubscribeTokenError, match="signature"):
        decode(OTHER, token)


def test_a_return_path_is_not_an_unsubscribe_token() -> None:
    local = verp_encode(SECRET, "acme", API_ID, "gina@example.org")
    assert local is not None
    with pytest.raises(UnsubscribeTokenError):
        decode(SECRET, local)
    with pytest.raises(UnsubscribeTokenError):
        decode(SECRET, PREFIX + local[1:])  # same bytes, other purpose: the MAC differs


@pytest.mark.parametrize(
    "bad",
    ["", "u", "uuuu", "u!!!", "x" + "a" * 40, "u" + "a" * 200, "u0189", "u" + "a" * 7 + "b"],
)
def test_garbage_is_refused(bad: str) -> None:
    with pytest.raises(UnsubscribeTokenError):
        decode(SECRET, bad)


def test_a_forged_token_with_a_valid_mac_but_trailing_bytes_is_refused() -> None:
    # what a server with the key but a bug could write: refused all the same
    from streams.mail import unsubscribe as module

    token = encode(SECRET, "acme", API_ID, "gina@example.org")
    assert token is not None
    data = base64.b32decode(token[1:].upper() + "=" * (-len(token[1:]) % 8))
    payload = data[:-10] + b"\x00"
    forged = PREFIX + module.b32(payload + module._mac(SECRET, payload))
    with pytest.raises(UnsubscribeTokenError, match="trailing"):
        decode(SECRET, forged)


def test_a_group_out_of_range_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="ASM group id"):
        encode(SECRET, "acme", API_ID, "gina@example.org", 1 << 21)
