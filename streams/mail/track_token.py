"""Open and click tracking tokens (pure): the ``<token>`` of ``/t/o/<token>`` and ``/t/c/<token>``.

A token is the credential of an unauthenticated request, so it must be unforgeable, and it sits
in a URL a mail client, a proxy or a scanner may log, so it must not read as an address. It is
therefore *sealed*, not just signed: AES-256-GCM under the server secret's ``tracking`` subkey
(:meth:`ServerSecret.seal`), whose 16-byte tag is the MAC, with the token's kind (``o``/``c``)
as associated data so an open token never passes for a click one. Inside:

- the tenant and the message id the event belongs to,
- the recipient (an event names its recipient, and resolving a keyed tag would cost a database
  query per pixel fetch; sealed, the address is as unreadable as a tag would be),
- when it was issued (seconds): a click a second or two after sending is a link scanner's,
- for a click, the link's URL itself: the redirect goes only where the token says, so the
  endpoint is never an open redirect and the URL cannot be swapped (an index would need the
  message's links stored somewhere).

The text is URL-safe base64 without padding. Sealing takes a random nonce, so every rendering
of a message gets fresh tokens; each one opens to the same reference.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final, Literal

from streams.errors import SecretError, TrackingTokenError
from streams.secret import ServerSecret

__all__ = ["MAX_TOKEN_CHARS", "PURPOSE", "TrackKind", "TrackRef", "open_token", "seal_token"]

PURPOSE: Final = "tracking"
TrackKind = Literal["o", "c"]
_VERSION: Final = "1"
_SEP: Final = "\x1f"
# a URL of a few KB still fits every browser and proxy; longer ones stay untracked
MAX_TOKEN_CHARS: Final = 4000


@dataclass(frozen=True, slots=True)
class TrackRef:
    """What a valid token vouches for."""

    kind: TrackKind
    tenant: str
    message_id: str
    recipient: str
    issued_at: int  # UNIX seconds
    url: str | None = None


def seal_token(secret: ServerSecret, ref: TrackRef) -> str:
    """The URL-safe token of ``ref``; ValueError when a field holds the separator."""
    if (ref.kind == "c") != (ref.url is not None):
        raise ValueError("a click token carries its URL, an open token none")
    issued = str(ref.issued_at)
    fields = (_VERSION, ref.tenant, ref.message_id, ref.recipient, issued, ref.url or "")
    if any(_SEP in f for f in fields):
        raise ValueError("a tracking reference field holds a control character")
    sealed = secret.seal(PURPOSE, _SEP.join(fields).encode(), context=ref.kind)
    return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")


def open_token(secret: ServerSecret, kind: TrackKind, token: str) -> TrackRef:
    """The reference ``token`` vouches for; TrackingTokenError when it was not issued by this
    install for ``kind``, or was altered."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise TrackingTokenError("the tracking token is empty or too long")
    try:
        sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TrackingTokenError("the tracking token is not URL-safe base64") from exc
    try:
        plain = secret.open(PURPOSE, sealed, context=kind).decode()
    except (SecretError, UnicodeDecodeError) as exc:
        raise TrackingTokenError("the tracking token was not issued here or was altered") from exc
    fields = plain.split(_SEP)
    if len(fields) != 6 or fields[0] != _VERSION or not fields[4].isdigit():
        raise TrackingTokenError("the tracking token has an unknown layout")
    _, tenant, message_id, recipient, issued, url = fields
    if (kind == "c") != bool(url):
        raise TrackingTokenError("the tracking token does not fit its kind")
    return TrackRef(kind, tenant, message_id, recipient, int(issued), url or None)
