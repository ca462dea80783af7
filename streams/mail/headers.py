"""What the header fields and texts of a mail may hold: one set of rules for every door.

The ingress turns a broken rule into a 400, the gate into a dead letter, rendering into a
``failed`` event; DKIM signs by the same lists. Each check raises the typed
:class:`~streams.errors.RenderError` its problem has, naming the field.

- **Reserved headers** are written by the pipeline from their own fields (From, To, Subject,
  Date, Message-ID, ...), belong to the MIME structure (``Content-*``, MIME-Version), or are added
  on the way by relays and verifiers (Received, Return-Path, DKIM-Signature,
  Authentication-Results, ARC-*): a custom header never sets one. ``List-Unsubscribe`` and
  ``List-Unsubscribe-Post`` are not reserved: the sender states them (RFC 2369, RFC 8058, and
  SendGrid passes them through), and DKIM signs them.
- **One-line texts** (header values, the subject, display names, filenames, categories) hold no
  CR or LF (header injection) and no other control character but TAB (C0, DEL, C1): a client
  never means them, and mail readers disagree on what they show. Non-ASCII text is fine: it is
  written as RFC 2047 encoded words.
- **Bodies** may use LF line ends (they are written with CRLF on the wire, as every MTA does), but
  a CR outside a CRLF pair and NUL are refused: receivers disagree on what they mean, which is what
  SMTP smuggling needs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from streams.errors import (
    BareLineEndingError,
    ControlCharacterError,
    HeaderInjectionError,
    InvalidContentError,
)

__all__ = [
    "DISPOSITIONS",
    "MAX_HEADER_NAME",
    "ONE_CLICK",
    "RESERVED_HEADERS",
    "RESERVED_PREFIXES",
    "SIGNED_HEADERS",
    "check_body",
    "check_custom_headers",
    "check_header_name",
    "check_line",
    "is_mime_type",
    "is_reserved",
]

RESERVED_HEADERS: Final = frozenset(
    {
        "from", "sender", "to", "cc", "bcc", "reply-to", "subject", "date", "message-id",
        "mime-version", "return-path", "received", "dkim-signature", "domainkey-signature",
        "authentication-results", "x-sg-id", "x-sg-eid",
    }
)  # fmt: skip
RESERVED_PREFIXES: Final = ("content-", "x-postwire-", "arc-", "resent-")

# What DKIM signs, each listed once more than the message holds it (RFC 6376 section 8.15), so
# that a copy added anywhere on the way (a second From above ours, a List-Unsubscribe-Post that
# was not there) breaks the signature. All but the unsubscribe pair are reserved above: only the
# pipeline writes them.
SIGNED_HEADERS: Final = (
    "from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id", "mime-version",
    "content-type", "content-transfer-encoding", "list-unsubscribe", "list-unsubscribe-post",
)  # fmt: skip

# RFC 8058 section 3.1: the only value List-Unsubscribe-Post may have
ONE_CLICK: Final = "List-Unsubscribe=One-Click"
DISPOSITIONS: Final = ("attachment", "inline")
MAX_HEADER_NAME: Final = 76  # a name and its colon on one 78-character line
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 ftext: printable ASCII but the colon
_MIME_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+")
# C0 but TAB, DEL and C1; CR and LF are looked for first, as injection
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def is_reserved(name: str) -> bool:
    lower = name.lower()
    return lower in RESERVED_HEADERS or lower.startswith(RESERVED_PREFIXES)


def is_mime_type(value: str) -> bool:
    """``type/subtype`` of RFC 2045 tokens (an attachment's Content-Type)."""
    return _MIME_TYPE.fullmatch(value) is not None


def check_line(field: str, value: str, when: str = "in the request") -> None:
    """A header value or one-line text: no CR/LF, no control character but TAB."""
    if "\r" in value or "\n" in value:
        raise HeaderInjectionError(field, f"CR or LF in a header value {when}")
    found = _CONTROL.search(value)
    if found is not None:
        raise ControlCharacterError(
            field, f"control character U+{ord(found.group()):04X} in a header value {when}"
        )


def check_body(field: str, value: str, when: str = "in the request") -> None:
    """A text or HTML body: LF and CRLF line ends are fine, a bare CR or a NUL is not."""
    if value.count("\r") != value.count("\r\n"):
        raise BareLineEndingError(field, f"CR outside a CRLF pair {when}")
    if "\x00" in value:
        raise ControlCharacterError(field, f"NUL character {when}")


def check_header_name(field: str, name: str) -> None:
    """A custom header's name: an RFC 5322 field name that is not reserved."""
    if "\r" in name or "\n" in name:
        raise HeaderInjectionError(field, "CR or LF in the header name")
    if not _HEADER_NAME.fullmatch(name) or len(name) > MAX_HEADER_NAME:
        raise InvalidContentError(
            field, f"not a header name (printable ASCII but ':', at most {MAX_HEADER_NAME})"
        )
    if is_reserved(name):
        raise InvalidContentError(field, f"the {name} header is reserved")


def check_custom_headers(headers: Mapping[str, str], field: str) -> None:
    """Every custom header of a request: names, values, no name twice (in any case), and the
    RFC 8058 one-click pair. ``field`` is where the headers sit (``content.headers``)."""
    seen: dict[str, str] = {}
    for name, value in headers.items():
        at = f"{field}.{name}"
        check_header_name(at, name)
        check_line(at, value)
        lower = name.lower()
        if lower in seen:
            raise InvalidContentError(at, f"the {seen[lower]} header is given twice")
        seen[lower] = name
    post = seen.get("list-unsubscribe-post")
    if post is None:
        return
    at = f"{field}.{post}"
    if headers[post].strip() != ONE_CLICK:
        raise InvalidContentError(at, f"List-Unsubscribe-Post must be {ONE_CLICK!r} (RFC 8058)")
    target = seen.get("list-unsubscribe")
    if target is None or "<https://" not in headers[target].lower():
        raise InvalidContentError(
            at, "List-Unsubscribe-Post needs a List-Unsubscribe header with an https URI"
        )
