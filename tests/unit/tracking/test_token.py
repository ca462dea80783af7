"""Tracking tokens: round trip, tamper, kind binding, nothing readable."""

from __future__ import annotations

import base64

import pytest

from streams.errors import TrackingTokenError
from streams.mail.track_token import TrackRef, open_token, seal_token
from streams.secret import ServerSecret

SECRET = ServerSecret(bytes(range(32)))
OTHER = ServerSecret(bytes(range(1, 33)))
OPEN = TrackRef(
    "o", "tenant-a", "0123456789abcdef0123456789abcdef.1", "Ann@Example.com", 1_700_000_000
)
CLICK = TrackRef(
    "c", "tenant-a", "m1", "ann@example.com", 1_700_000_000, "https://shop.example/p?id=7&x=y"
)


@pytest.mark.parametrize("ref", [OPEN, CLICK])
def test_round_trip(ref: TrackRef) -> None:
    token = seal_token(SECRET, ref)
    assert open_token(SECRET, ref.kind, token) == ref


def test_url_safe_and_no_readable_address() -> None:
    token = seal_token(SECRET, CLICK)
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for secret_text in (b"ann", b"example", b"shop", b"tenant-a"):
        assert secret_text not in raw.lower()


def test_fresh_token_each_time() -> None:
    assert seal_token(SECRET, OPEN) != seal_token(SECRET, OPEN)


def test_every_flipped_byte_is_refused() -> None:
    token = seal_token(SECRET, CLICK)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    for i in range(len(raw)):
        changed = bytearray(raw)
        changed[i] ^= 0x01
        forged = base64.urlsafe_b64encode(bytes(changed)).rstrip(b"=").decode()
        with pytest.raises(TrackingTokenError):
            open_token(SECRET, "c", forged)


def test_other_secret_other_kind_and_garbage_refused() -> None:
    token = seal_token(SECRET, CLICK)
    with pytest.raises(TrackingTokenError):
        open_token(OTHER, "c", token)
    with pytest.raises(TrackingTokenError):
        open_token(SECRET, "o", token)  # a click token is no pixel
    for bad in ("", "!!!", "a" * 5000, token[:-4]):
        with pytest.raises(TrackingTokenError):
            open_token(SECRET, "c", bad)


def test_kind_must_match_url() -> None:
    with pytest.raises(ValueError, match="click token"):
        seal_token(SECRET, TrackRef("o", "t", "m", "r", 1, "https://x.example/"))
    with pytest.raises(ValueError, match="control character"):
        seal_token(SECRET, TrackRef("o", "t\x1f", "m", "r", 1))
