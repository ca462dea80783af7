"""RFC 5322 / MIME wire formatting for :mod:`streams.deliver.mime` (pure).

Writes the exact bytes ``email.policy.SMTP`` with ``cte_type="7bit"`` would: header lines (folded
at 78, RFC 2047 encoded words for non-ASCII), text parts with the transfer encoding
``set_content`` would choose (a body's line ends, LF or CRLF, become CRLF), multipart bodies and
their boundaries, and attachment parts. The checks a header value or body must pass before it is
written are :mod:`streams.mail.headers`'. Templates and the assembly of a message live in
:mod:`streams.deliver.mime`.
"""

from __future__ import annotations

import re
import secrets
from base64 import b64encode
from binascii import b2a_base64
from collections.abc import Mapping, Sequence
from email.errors import MessageError
from email.headerregistry import Address, BaseHeader
from email.message import MIMEPart
from email.policy import SMTP
from email.quoprimime import body_encode
from functools import lru_cache
from typing import Any, Final

from streams.errors import InvalidContentError
from streams.mail.headers import DISPOSITIONS, check_line, is_mime_type

__all__ = [
    "MIME_VERSION",
    "POLICY",
    "address_line",
    "attachment_part",
    "is_inline",
    "message_id_line",
    "multipart",
    "new_boundary",
    "recipient_line",
    "text_part",
    "unstructured_line",
]

# 7bit, not SMTP's default 8bit: a relay that meets a peer without 8BITMIME re-encodes 8bit
# bodies, which breaks the DKIM body hash (RFC 6376 section 5.3).
POLICY: Final = SMTP.clone(cte_type="7bit")
MIME_VERSION: Final = b"MIME-Version: 1.0\r\n"

_MAX_LINE: Final = 78
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_PHRASE = re.compile(rf"{_ATOM}(?: {_ATOM})*")
_ADDR_SPEC = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})*")
_MESSAGE_ID = re.compile(r"<[!-;=?A-~]+@[!-;=?A-~]+>")
_KIND_HEADERS = {"to": "To", "cc": "Cc", "bcc": "To"}


# Header lines are formatted by hand where that is provably what the stdlib folder would write
# (or, for non-ASCII text, an equivalent RFC 2047 encoding): its parser costs 200-500 us a header.
def _plain(value: str) -> bool:
    return value.isascii() and value.isprintable() and "=?" not in value and value == value.strip()


def _encoded_words(value: str, indent: int) -> str:
    """``value`` as RFC 2047 "B" words of at most 75 characters, one per line after the first."""
    data = value.encode()
    limit = max(6, min(45, (_MAX_LINE - indent - 12) // 4 * 3))
    words = []
    start = 0
    while start < len(data):
        end = min(start + limit, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # never split a UTF-8 sequence
            end -= 1
        words.append(f"=?utf-8?b?{b64encode(data[start:end]).decode('ascii')}?=")
        start, limit = end, 45
    return "\r\n ".join(words)


@lru_cache(maxsize=4096)
def _folded(name: str, value: str) -> bytes:
    header: BaseHeader = POLICY.header_factory(name, value)
    return header.fold(policy=POLICY).encode("ascii")


@lru_cache(maxsize=4096)
def _folded_address(name: str, field: str, display: str, addr_spec: str) -> bytes:
    try:
        header: BaseHeader = POLICY.header_factory(name, Address(display, addr_spec=addr_spec))
    except (ValueError, IndexError, MessageError) as exc:
        raise InvalidContentError(f"{field}.email", f"not a usable address: {exc}") from exc
    return header.fold(policy=POLICY).encode("ascii")


def unstructured_line(name: str, value: str) -> bytes:
    if _plain(value) and len(name) + 2 + len(value) <= _MAX_LINE:
        return f"{name}: {value}\r\n".encode("ascii")
    # The stdlib would decode a literal "=?...?=" in the value; encoding all of it keeps it.
    if (not value.isascii() or "=?" in value) and value.isprintable() and value == value.strip():
        return f"{name}: {_encoded_words(value, len(name) + 2)}\r\n".encode("ascii")
    return _folded(name, value)


def address_line(name: str, field: str, mailbox: Mapping[str, Any]) -> tuple[bytes, str]:
    """The header line for an Address/Recipient record, and its ASCII (IDNA) domain."""
    email = mailbox.get("email") or ""
    display = mailbox.get("name") or ""
    check_line(f"{field}.email", email)
    check_line(f"{field}.name", display)
    local, _, domain = email.rpartition("@")
    if not local or not domain:
        raise InvalidContentError(f"{field}.email", f"{email!r} is not an address")
    if not local.isascii():
        raise InvalidContentError(f"{field}.email", "a non-ASCII local part needs SMTPUTF8")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidContentError(f"{field}.email", f"domain is not IDNA: {exc}") from exc
    addr_spec = f"{local}@{domain}"
    line = None
    if _ADDR_SPEC.fullmatch(addr_spec):
        if not display:
            line = f"{name}: {addr_spec}"
        elif _plain(display):
            phrase = display
            if not _PHRASE.fullmatch(display):
                phrase = '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'
            line = f"{name}: {phrase} <{addr_spec}>"
        elif display.isprintable() and display == display.strip():
            words = _encoded_words(display, len(name) + 2)
            # rfind is -1 when the words fit on the first line, which then starts with the name
            last = len(words) - words.rfind("\n") - 1 + (0 if "\n" in words else len(name) + 2)
            fold = "\r\n " if last + len(addr_spec) + 3 > _MAX_LINE else " "
            line = f"{name}: {words}{fold}<{addr_spec}>"
    if line is None or (len(line) > _MAX_LINE and "\n" not in line):
        return _folded_address(name, field, display, addr_spec), domain.lower()
    return f"{line}\r\n".encode("ascii"), domain.lower()


def recipient_line(recipient: Mapping[str, Any]) -> bytes:
    kind = recipient.get("kind") or "to"
    header = _KIND_HEADERS.get(kind)
    if header is None:
        raise InvalidContentError("recipient.kind", f"{kind!r} is not to, cc or bcc")
    line, _domain = address_line(header, "recipient", recipient)
    # A bcc copy must not show its own address; the envelope still carries it.
    return b"To: undisclosed-recipients:;\r\n" if kind == "bcc" else line


def text_part(text: str, subtype: str) -> bytes:
    """A text/* part, with the transfer encoding ``set_content`` would choose (7bit, QP, base64)."""
    lines = text.encode().splitlines()
    head = f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: '
    if text.isascii() and max(map(len, lines), default=0) <= _MAX_LINE:
        return f"{head}7bit\r\n\r\n".encode("ascii") + b"\r\n".join(lines) + b"\r\n"
    sniff = b"\r\n".join(lines[:10]) + b"\r\n"
    if len(body_encode(sniff.decode("latin-1"), _MAX_LINE)) > len(b2a_base64(sniff)):
        data = b"\r\n".join(lines) + b"\r\n"
        chunks = (b2a_base64(data[i : i + 57])[:-1] for i in range(0, len(data), 57))
        return f"{head}base64\r\n\r\n".encode("ascii") + b"\r\n".join(chunks) + b"\r\n"
    encoded = body_encode(b"\n".join(lines).decode("latin-1") + "\n", _MAX_LINE)
    return f"{head}quoted-printable\r\n\r\n{encoded.replace(chr(10), chr(13) + chr(10))}".encode()


def new_boundary(children: Sequence[bytes]) -> bytes:
    # "=_" never occurs in quoted-printable or base64 output; a 7bit text part is checked.
    boundary = f"=_{secrets.token_hex(16)}".encode("ascii")
    while any(boundary in child for child in children):
        boundary = f"=_{secrets.token_hex(16)}".encode("ascii")
    return boundary


def multipart(subtype: str, children: Sequence[bytes], boundary: bytes | None = None) -> bytes:
    boundary = boundary or new_boundary(children)
    head = f"Content-Type: multipart/{subtype};\r\n boundary=".encode("ascii")
    delimiter = b"--" + boundary + b"\r\n"
    parts = b"".join(delimiter + child + b"\r\n" for child in children)
    return head + b'"' + boundary + b'"\r\n\r\n' + parts + b"--" + boundary + b"--\r\n"


def message_id_line(value: str, domain: str) -> bytes:
    check_line("message_id", value, "in the task")
    if not value.startswith("<"):
        value = f"<{value}>" if "@" in value else f"<{value}@{domain}>"
    if not _MESSAGE_ID.fullmatch(value):
        raise InvalidContentError("message_id", f"{value!r} is not a msg-id (RFC 5322)")
    # A msg-id has no folding whitespace, so the stdlib would write it on one line just the same.
    return f"Message-ID: {value}\r\n".encode("ascii")


def attachment_part(index: int, attachment: Mapping[str, Any]) -> MIMEPart:
    field = f"content.attachments[{index}]"
    for key in ("filename", "content_type", "disposition", "content_id"):
        if (value := attachment.get(key)) is not None:
            check_line(f"{field}.{key}", value)
    content_type = attachment.get("content_type") or "application/octet-stream"
    if not is_mime_type(content_type):
        raise InvalidContentError(f"{field}.content_type", "not a type/subtype pair")
    disposition = attachment.get("disposition") or "attachment"
    if disposition not in DISPOSITIONS:
        raise InvalidContentError(f"{field}.disposition", "must be attachment or inline")
    cid = attachment.get("content_id")
    if cid is not None and not cid.startswith("<"):
        cid = f"<{cid}>"
    maintype, _, subtype = content_type.partition("/")
    part = MIMEPart(policy=POLICY)
    try:
        part.set_content(
            bytes(attachment["content"]),
            maintype,
            subtype,
            disposition=disposition,
            filename=attachment.get("filename"),
            cid=cid,
        )
    except (KeyError, ValueError, TypeError, MessageError) as exc:
        raise InvalidContentError(field, f"cannot be attached: {exc}") from exc
    return part


def is_inline(part: MIMEPart) -> bool:
    # Inline parts with a Content-ID are the HTML's own images: they belong in multipart/related.
    return part.get_content_disposition() == "inline" and part["Content-ID"] is not None
