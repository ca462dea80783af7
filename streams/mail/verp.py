"""VERP return paths (pure): the envelope sender ``<token>@<bounce domain>`` a message is sent
with, so a bounce or a complaint that comes back long after the 250 says which message and which
recipient it is about.

The token is a *reference*, not an encryption of the recipient. RFC 5321 caps a local part at
64 octets, and receivers may fold its case, so the token is lower-case base32: at most 38 bytes
of payload. An address alone may be 254 octets, so no cipher of it fits; instead the token holds

- the message id (16 bytes for postwire's 32-hex ids and for UUIDs, with a personalization
  suffix ``.n`` as a varint; up to 19 bytes as they are otherwise),
- a recipient tag: 6 bytes of an HMAC over (tenant, message id, recipient) under the
  ``return-path-recipient`` subkey, which names one recipient among the message's without
  revealing it, and binds it to its tenant,
- a MAC: 10 bytes of an HMAC over everything before it under the ``return-path`` subkey, so a
  token nobody issued is refused at RCPT without a lookup.

Whoever receives the bounce resolves the reference: of the message's recipients (the ``messages``
table), the one whose tag matches, with its tenant. Nothing in the token reads as an address.
A message id that fits none of the forms (over 19 bytes, not hex, not a UUID) gets no token:
``encode`` returns None and the message keeps its From as MAIL FROM.
"""

from __future__ import annotations

import base64
import hmac
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from streams.errors import ReturnPathError
from streams.secret import ServerSecret

__all__ = [
    "MAX_LOCAL_PART",
    "PREFIX",
    "Reference",
    "b32",
    "decode",
    "encode",
    "pack_id",
    "read_varint",
    "recipient_tag",
    "return_path",
    "unpack_id",
    "varint",
]

MAX_LOCAL_PART: Final = 64  # octets (RFC 5321 4.5.3.1.1); tokens stay below it
PREFIX: Final = "b"  # return paths are b...; other local parts of the domain stay free
_VERSION: Final = 1
_TAG: Final = 6
_MAC: Final = 10
_RAW_MAX: Final = 19
# the id forms: the API's 32 hex digits (with a personalization suffix), a UUID, raw bytes
_HEX, _HEX_N, _UUID, _RAW = 0, 1, 2, 3
_HEX_ID = re.compile(r"([0-9a-f]{32})(?:\.(0|[1-9][0-9]{0,5}))?")
_BASE32 = re.compile(r"[a-z2-7]+")


@dataclass(frozen=True)
class Reference:
    """What a valid token names: the message, and the tag of one of its recipients."""

    message_id: str
    tag: bytes


def _framed(text: str) -> str:
    return f"{len(text)}:{text}"


def recipient_tag(secret: ServerSecret, tenant: str, message_id: str, recipient: str) -> bytes:
    """The tag that names ``recipient`` of ``message_id`` of ``tenant`` in a token."""
    mac = secret.mac(
        "return-path-recipient", _framed(tenant), _framed(message_id), recipient.lower()
    )
    return mac[:_TAG]


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def read_varint(data: bytes) -> tuple[int, int]:
    """(value, bytes used); ReturnPathError when it runs off the end or is over long."""
    value = 0
    for i, byte in enumerate(data[:3]):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, i + 1
    raise ReturnPathError("the token's personalization number is cut off")


def pack_id(message_id: str) -> bytes | None:
    match = _HEX_ID.fullmatch(message_id)
    if match is not None:
        body = bytes.fromhex(match.group(1))
        suffix = match.group(2)
        if suffix is None:
            return bytes([_HEX]) + body
        return bytes([_HEX_N]) + body + varint(int(suffix))
    try:
        parsed = uuid.UUID(message_id)
    except ValueError:
        parsed = None
    if parsed is not None and str(parsed) == message_id:
        return bytes([_UUID]) + parsed.bytes
    raw = message_id.encode()
    if len(raw) <= _RAW_MAX:
        return bytes([_RAW, len(raw)]) + raw
    return None


def unpack_id(data: bytes) -> tuple[str, bytes]:
    """(message id, the bytes after it)."""
    kind, rest = data[0], data[1:]
    if kind in (_HEX, _HEX_N, _UUID):
        if len(rest) < 16:
            raise ReturnPathError("the token's message id is cut off")
        body, rest = rest[:16], rest[16:]
        if kind == _UUID:
            return str(uuid.UUID(bytes=body)), rest
        if kind == _HEX:
            return body.hex(), rest
        n, used = read_varint(rest)
        return f"{body.hex()}.{n}", rest[used:]
    if kind == _RAW and rest:
        size, rest = rest[0], rest[1:]
        if size > _RAW_MAX or len(rest) < size:
            raise ReturnPathError("the token's message id is cut off")
        try:
            return rest[:size].decode(), rest[size:]
        except UnicodeDecodeError as exc:
            raise ReturnPathError("the token's message id is not text") from exc
    raise ReturnPathError(f"the token's message id has an unknown form ({kind})")


def b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _mac(secret: ServerSecret, payload: bytes) -> bytes:
    return secret.mac("return-path", payload)[:_MAC]


def encode(secret: ServerSecret, tenant: str, message_id: str, recipient: str) -> str | None:
    """The local part naming ``recipient`` of ``message_id`` (of ``tenant``), or None when the
    message id fits no token."""
    packed = pack_id(message_id)
    if packed is None:
        return None
    payload = bytes([_VERSION]) + packed + recipient_tag(secret, tenant, message_id, recipient)
    return PREFIX + b32(payload + _mac(secret, payload))


def return_path(
    secret: ServerSecret, domain: str, tenant: str, message_id: str, recipient: str
) -> str | None:
    """``<token>@<domain>``, or None when the message id fits no token."""
    local = encode(secret, tenant, message_id, recipient)
    return None if local is None else f"{local}@{domain}"


@dataclass(frozen=True)
class Sealed:
    """The frame of a base32 token: ``prefix`` + base32(version byte + payload + MAC); what a
    return path and an unsubscribe token share. ``least`` counts the version and the payload
    (not the MAC); ``what`` names the token in errors (``a return path``), raised as ``error``."""

    prefix: str
    longest: int
    least: int
    what: str
    error: type[Exception]
    version: int = _VERSION


def unseal(text: str, frame: Sealed, mac: Callable[[bytes], bytes]) -> bytes:
    """The version byte and payload of ``text`` (lower case) once its MAC checks, or
    ``frame.error`` saying why it is not such a token (another prefix, not base32, not its one
    spelling, cut off, a MAC that does not match, an unknown version)."""
    noun = frame.what.split(" ", 1)[1]
    fail = frame.error
    if not text.startswith(frame.prefix) or len(text) > frame.longest:
        raise fail(f"not {frame.what} of this server")
    body = text[len(frame.prefix) :]
    if _BASE32.fullmatch(body) is None:
        raise fail(f"not {frame.what} of this server (not base32)")
    try:
        data = base64.b32decode(body.upper() + "=" * (-len(body) % 8))
    except ValueError as exc:
        raise fail(f"not {frame.what} of this server (bad base32)") from exc
    if b32(data) != body:
        # the last character's unused bits set: one token must have one spelling only
        raise fail(f"not {frame.what} of this server (not canonical base32)")
    if len(data) < frame.least + _MAC:
        raise fail(f"the {noun} is too short to be a token")
    payload, tag = data[:-_MAC], data[-_MAC:]
    if not hmac.compare_digest(mac(payload), tag):
        raise fail(f"the {noun}'s signature does not match (forged or altered)")
    if payload[0] != frame.version:
        raise fail(f"the {noun} has an unknown version ({payload[0]})")
    return payload


def decode(secret: ServerSecret, local_part: str) -> Reference:
    """The reference a local part carries; ReturnPathError saying why it is not a token this
    install issued (another prefix, not base32, cut off, a MAC that does not match)."""
    payload = unseal(
        local_part.lower(),
        Sealed(PREFIX, MAX_LOCAL_PART - 1, 2 + _TAG, "a return path", ReturnPathError),
        lambda data: _mac(secret, data),
    )
    message_id, rest = unpack_id(payload[1:])
    if len(rest) != _TAG:
        raise ReturnPathError("the return path's recipient tag is malformed")
    return Reference(message_id, rest)
