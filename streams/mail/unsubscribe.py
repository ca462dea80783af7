"""One-click unsubscribe tokens (pure): what ``List-Unsubscribe`` points at (RFC 2369, RFC 8058),
``https://<public base>/u/<token>`` and ``mailto:u<token>@<bounce domain>``.

The token is the credential of an endpoint that takes no API key, so it is MAC-signed under the
``unsubscribe`` subkey of the server secret, and, like the VERP return path
(streams/mail/verp.py), it is a *reference* that carries no readable address:

- the message id, packed as the return path packs it (16 bytes for postwire's ids),
- a recipient tag: 6 bytes of an HMAC over (tenant, message id, recipient) under the
  ``unsubscribe-recipient`` subkey, which names one recipient of the message and binds it to its
  tenant (the tenant is found with it, in the ``messages`` table, never taken from the token),
- the ASM group id (a varint of id + 1; 0 means none: the unsubscribe is global),
- a MAC: 10 bytes of an HMAC over everything before it.

Lower-case base32 keeps one token good for both uses: URL-safe, and a mail local part that a
receiver may fold the case of; for postwire's ids ``u`` + token stays below the 64 octets of a
local part (RFC 5321). A longer one (a raw message id) still makes the https URI, not the mailto.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from streams.errors import ReturnPathError, UnsubscribeTokenError
from streams.mail.verp import (
    MAX_LOCAL_PART,
    Sealed,
    b32,
    pack_id,
    read_varint,
    unpack_id,
    unseal,
    varint,
)
from streams.secret import ServerSecret

__all__ = [
    "MAX_GROUP",
    "PREFIX",
    "Unsubscribe",
    "decode",
    "encode",
    "fits_local_part",
    "recipient_tag",
]

PREFIX: Final = "u"  # u...@<bounce domain>; return paths are b..., the feedback loop fbl
_VERSION: Final = 1
_TAG: Final = 6
_MAC: Final = 10
MAX_GROUP: Final = (1 << 21) - 2  # three varint bytes
_MAX_CHARS: Final = 120


@dataclass(frozen=True)
class Unsubscribe:
    """What a valid token names: the message, the tag of one recipient, the ASM group (or None)."""

    message_id: str
    tag: bytes
    group_id: int | None = None


def _framed(text: str) -> str:
    return f"{len(text)}:{text}"


def recipient_tag(secret: ServerSecret, tenant: str, message_id: str, recipient: str) -> bytes:
    """The tag that names ``recipient`` of ``message_id`` of ``tenant`` in a token."""
    mac = secret.mac(
        "unsubscribe-recipient", _framed(tenant), _framed(message_id), recipient.lower()
    )
    return mac[:_TAG]


def _mac(secret: ServerSecret, payload: bytes) -> bytes:
    return secret.mac("unsubscribe", payload)[:_MAC]


def encode(
    secret: ServerSecret,
    tenant: str,
    message_id: str,
    recipient: str,
    group_id: int | None = None,
) -> str | None:
    """The token for ``recipient`` of ``message_id`` (of ``tenant``), unsubscribing from
    ``group_id`` when given; None when the message id fits no token."""
    if group_id is not None and not 0 <= group_id <= MAX_GROUP:
        raise ValueError(f"an ASM group id is 0..{MAX_GROUP}, not {group_id}")
    packed = pack_id(message_id)
    if packed is None:
        return None
    tag = recipient_tag(secret, tenant, message_id, recipient)
    group = varint(0 if group_id is None else group_id + 1)
    payload = bytes([_VERSION]) + packed + tag + group
    return PREFIX + b32(payload + _mac(secret, payload))


def fits_local_part(token: str) -> bool:
    """Whether ``token`` can be the local part of the mailto address."""
    return len(token) < MAX_LOCAL_PART


def decode(secret: ServerSecret, token: str) -> Unsubscribe:
    """What ``token`` names; UnsubscribeTokenError saying why it is not one this install issued."""
    payload = unseal(
        token.strip().lower(),
        Sealed(
            PREFIX, _MAX_CHARS, 3 + _TAG, "an unsubscribe token", UnsubscribeTokenError, _VERSION
        ),
        lambda data: _mac(secret, data),
    )
    try:
        message_id, rest = unpack_id(payload[1:])
        if len(rest) < _TAG + 1:
            raise UnsubscribeTokenError("the unsubscribe token's recipient tag is cut off")
        tag, rest = rest[:_TAG], rest[_TAG:]
        group, used = read_varint(rest)
    except ReturnPathError as exc:
        raise UnsubscribeTokenError(f"the unsubscribe token is malformed: {exc}") from exc
    if used != len(rest):
        raise UnsubscribeTokenError("the unsubscribe token has trailing bytes")
    return Unsubscribe(message_id, tag, None if group == 0 else group - 1)
