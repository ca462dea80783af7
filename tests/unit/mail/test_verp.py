from __future__ import annotations

import base64
import uuid

import pytest

from streams.errors import ReturnPathError
from streams.mail.verp import (
    MAX_LOCAL_PART,
    Reference,
    decode,
    encode,
    recipient_tag,
    return_path,
)
from streams.secret import ServerSecret

SECRET = ServerSecret(bytes(range(32)))
OTHER = ServerSecret(bytes(range(1, 33)))
API_ID = "0123456789abcdef0123456789abcdef"

IDS = [
    API_ID,
    f"{API_ID}.0",
    f"{API_ID}.7",
    f"{API_ID}.999999",
    str(uuid.UUID(int=12345)),
    "r1",
    "x" * 19,
]


@pytest.mark.parametrize("message_id", IDS)
def test_round_trip_names_the_message_and_recipient(message_id: str) -> None:
    local = encode(SECRET, "acme", message_id, "Gina@Example.org")
    assert local is not None
    assert decode(SECRET, local) == Reference(
        message_id, recipient_tag(SECRET, "acme", message_id, "gina@example.org")
    )


@pytest.mark.parametrize("message_id", IDS)
def test_the_local_part_is_short_lower_case_and_url_safe(message_id: str) -> None:
    local = encode(SECRET, "a-tenant-with-a-long-name" * 4, message_id, "x" * 64 + "@" + "d" * 189)
    assert local is not None
    assert len(local.encode()) < MAX_LOCAL_PART
    assert local == local.lower()
    assert local.isalnum()


def test_no_readable_address_or_tenant_in_the_token() -> None:
    local = encode(SECRET, "acme", API_ID, "gina@example.org")
    assert local is not None
    for word in ("gina", "example", "acme"):
        assert word not in local
    raw = base64.b32decode(local[1:].upper() + "=" * (-len(local[1:]) % 8))
    assert b"gina" not in raw
    assert b"acme" not in raw


def test_a_case_folding_receiver_does_not_break_the_token() -> None:
    local = encode(SECRET, "acme", API_ID, "gina@example.org")
    assert local is not None
    assert decode(SECRET, local.upper()) == decode(SECRET, local)


def test_the_tag_differs_per_recipient_and_per_tenant() -> None:
    tag = recipient_tag(SECRET, "acme", API_ID, "a@example.org")
    assert tag != recipient_tag(SECRET, "acme", API_ID, "b@example.org")
    assert tag != recipient_tag(SECRET, "other", API_ID, "a@example.org")
    assert tag != recipient_tag(OTHER, "acme", API_ID, "a@example.org")


@pytest.mark.parametrize("message_id", IDS)
def test_every_changed_character_is_refused(message_id: str) -> None:
    local = encode(SECRET, "acme", message_id, "gina@example.org")
    assert local is not None
    for i in range(1, len(local)):
        for other in "abcdefghijklmnopqrstuvwxyz234567":
            if other == local[i]:
                continue
            with pytest.raises(ReturnPathError):
                decode(SECRET, local[:i] + other + local[i + 1 :])


def test_a_token_of_another_install_is_refused() -> None:
    local = encode(OTHER, "acme", API_ID, "gina@example.org")
    assert local is not None
    with pytest.raises(ReturnPathError, match="signature does not match"):
        decode(SECRET, local)


@pytest.mark.parametrize(
    ("local", "why"),
    [
        ("postmaster", "not a return path"),
        ("bounce-me", "not a return path"),
        ("baaaaaaaa", "too short"),
        ("b0189", "not base32"),
        ("b" + "a" * 70, "not a return path"),
    ],
)
def test_what_is_not_a_token_is_refused_with_a_reason(local: str, why: str) -> None:
    with pytest.raises(ReturnPathError, match=why):
        decode(SECRET, local)


def test_a_truncated_token_is_refused() -> None:
    local = encode(SECRET, "acme", API_ID, "gina@example.org")
    assert local is not None
    with pytest.raises(ReturnPathError):
        decode(SECRET, local[:-8])


def test_a_message_id_that_fits_no_form_gets_no_return_path() -> None:
    assert encode(SECRET, "acme", "y" * 20, "gina@example.org") is None
    assert return_path(SECRET, "bounces.example", "acme", "y" * 40, "g@e.org") is None
    path = return_path(SECRET, "bounces.example", "acme", API_ID, "g@e.org")
    assert path is not None
    assert path.endswith("@bounces.example")
