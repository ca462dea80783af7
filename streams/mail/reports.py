"""What a message that came back to a return path reports (pure: bytes in, a report out).

Three kinds, tried in this order:

- a delivery status notification (RFC 3464: ``multipart/report; report-type=delivery-status``
  with a ``message/delivery-status`` part), read field by field: per recipient its ``Action``,
  ``Status``, ``Diagnostic-Code`` and ``Remote-MTA``;
- a feedback report (RFC 5965 ARF: ``multipart/report; report-type=feedback-report``), with its
  ``Feedback-Type``, ``User-Agent`` and ``Original-Rcpt-To``;
- a bounce in no standard shape (qmail, old Exchange, provider specials): ``flufl.bounce``'s
  detectors find the failed addresses, permanent and temporary, and the first text part is kept
  for the classification of the reason.

An auto-reply (RFC 3834 ``Auto-Submitted: auto-replied``) that is none of these says nothing about
delivery; anything else raises ReportError with the reason, for the dead letter.
"""

from __future__ import annotations

import email
import email.policy
import re
from dataclasses import dataclass
from email.message import Message
from typing import Final

from flufl.bounce import all_failures

from streams.errors import ReportError

__all__ = [
    "AutoReply",
    "DeliveryReport",
    "DetectedBounce",
    "FeedbackReport",
    "RecipientStatus",
    "Report",
    "parse_report",
]

TEXT_KEPT: Final = 2000  # characters of a non-standard bounce's text kept for its reason
_SPACE = re.compile(r"\s+")
_ADDRESS = re.compile(r"<?([^<>\s;]+@[^<>\s;]+)>?")


@dataclass(frozen=True)
class RecipientStatus:
    """One per-recipient block of a DSN (RFC 3464 2.3)."""

    final_recipient: str | None
    original_recipient: str | None
    action: str  # failed, delayed, delivered, relayed, expanded (lower-cased)
    status: str | None  # the enhanced status code, "5.1.1"
    diagnostic: str | None  # the remote reply, "550 5.1.1 ... User unknown" (type stripped)
    remote_mta: str | None


@dataclass(frozen=True)
class DeliveryReport:
    reporting_mta: str | None
    recipients: tuple[RecipientStatus, ...]


@dataclass(frozen=True)
class FeedbackReport:
    feedback_type: str  # abuse, fraud, virus, other, not-spam (lower-cased)
    user_agent: str | None
    original_rcpt_to: str | None
    source_ip: str | None
    # where the reported message's return path is named: the report's Original-Mail-From, then
    # the Return-Path of the message (or headers) it encloses; how a report sent to a feedback
    # loop's registered address, not to the return path, is traced to its message
    return_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class DetectedBounce:
    """A bounce in no standard shape, as the detectors read it."""

    permanent: tuple[str, ...]
    temporary: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class AutoReply:
    """An out-of-office or other automatic answer sent to the return path."""

    subject: str


Report = DeliveryReport | FeedbackReport | DetectedBounce | AutoReply


def _field(value: str | None) -> str | None:
    if value is None:
        return None
    text = _SPACE.sub(" ", str(value)).strip()
    return text or None


def _typed(value: str | None) -> str | None:
    """The value of an ``rfc822; x`` / ``smtp; x`` / ``dns; x`` field without its type."""
    text = _field(value)
    if text is None:
        return None
    kind, sep, rest = text.partition(";")
    return (rest.strip() or None) if sep and " " not in kind.strip() else text


def _address(value: str | None) -> str | None:
    text = _typed(value)
    if text is None:
        return None
    match = _ADDRESS.search(text)
    return match.group(1).lower() if match else None


def _report_type(msg: Message) -> str | None:
    if msg.get_content_type() != "multipart/report":
        return None
    found = msg.get_param("report-type")
    return found.lower() if isinstance(found, str) else None


def _part(msg: Message, content_type: str) -> Message | None:
    for part in msg.walk():
        if part.get_content_type() == content_type:
            return part
    return None


def _blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    # a part the parser left as text (a wrong transfer encoding, say): read it as header blocks
    text = part.get_payload(decode=True)
    raw = text if isinstance(text, bytes) else str(payload).encode()
    return [
        email.message_from_bytes(block.strip() + b"\n", policy=email.policy.compat32)
        for block in re.split(rb"\r?\n\s*\r?\n", raw)
        if block.strip()
    ]


def _delivery_report(msg: Message) -> DeliveryReport:
    part = _part(msg, "message/delivery-status")
    if part is None:
        raise ReportError("inbound.dsn_without_status", "a DSN without a delivery-status part")
    blocks = _blocks(part)
    if len(blocks) < 2:
        raise ReportError("inbound.dsn_without_recipients", "a DSN with no per-recipient fields")
    recipients = []
    for block in blocks[1:]:
        action = _field(block.get("Action"))
        if action is None:
            raise ReportError("inbound.dsn_without_action", "a DSN recipient without an Action")
        recipients.append(
            RecipientStatus(
                final_recipient=_address(block.get("Final-Recipient")),
                original_recipient=_address(block.get("Original-Recipient")),
                action=action.lower(),
                status=_field(block.get("Status")),
                diagnostic=_typed(block.get("Diagnostic-Code")),
                remote_mta=_typed(block.get("Remote-MTA")),
            )
        )
    return DeliveryReport(_typed(blocks[0].get("Reporting-MTA")), tuple(recipients))


def _feedback_report(msg: Message) -> FeedbackReport:
    part = _part(msg, "message/feedback-report")
    if part is None:
        raise ReportError("inbound.arf_without_report", "an ARF report without its report part")
    blocks = _blocks(part)
    fields = blocks[0] if blocks else Message()
    kind = _field(fields.get("Feedback-Type"))
    if kind is None:
        raise ReportError("inbound.arf_without_type", "an ARF report without a Feedback-Type")
    paths = [_address(fields.get("Original-Mail-From")), _address(_enclosed_return_path(msg))]
    return FeedbackReport(
        feedback_type=kind.lower(),
        user_agent=_field(fields.get("User-Agent")),
        original_rcpt_to=_address(fields.get("Original-Rcpt-To")),
        source_ip=_field(fields.get("Source-IP")),
        return_paths=tuple(dict.fromkeys(p for p in paths if p)),
    )


def _enclosed_return_path(msg: Message) -> str | None:
    """The Return-Path of the message a report encloses (whole, or its headers only)."""
    for part in msg.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner and isinstance(inner[0], Message):
                return inner[0].get("Return-Path")
        elif kind == "text/rfc822-headers":
            text = part.get_payload(decode=True)
            if isinstance(text, bytes):
                headers = email.message_from_bytes(text, policy=email.policy.compat32)
                return headers.get("Return-Path")
    return None


def _first_text(msg: Message) -> str:
    for part in msg.walk():
        if part.get_content_type() == "text/plain":
            body = part.get_payload(decode=True)
            if isinstance(body, bytes):
                charset = part.get_content_charset() or "utf-8"
                try:
                    text = body.decode(charset, errors="replace")
                except LookupError:
                    text = body.decode("utf-8", errors="replace")
                return _SPACE.sub(" ", text).strip()[:TEXT_KEPT]
    return ""


def _detected(msg: Message) -> DetectedBounce | None:
    temporary, permanent = all_failures(msg)
    if not temporary and not permanent:
        return None

    def addresses(found: frozenset[bytes]) -> tuple[str, ...]:
        return tuple(sorted(a.decode(errors="replace").lower() for a in found))

    return DetectedBounce(addresses(permanent), addresses(temporary), _first_text(msg))


def parse_report(raw: bytes) -> Report:
    """What ``raw`` (a whole message as received) reports; ReportError when it is nothing we
    can read."""
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    if not msg.keys():
        raise ReportError("inbound.not_a_message", "the data is not an email message")
    kind = _report_type(msg)
    if kind == "delivery-status":
        return _delivery_report(msg)
    if kind == "feedback-report":
        return _feedback_report(msg)
    try:
        detected = _detected(msg)
    except Exception as exc:
        raise ReportError(
            "inbound.detector_failed", f"a bounce detector failed on it: {exc!r}"
        ) from exc
    if detected is not None:
        return detected
    auto = (_field(msg.get("Auto-Submitted")) or "").lower()
    if auto.startswith("auto-replied"):
        return AutoReply(_field(msg.get("Subject")) or "")
    raise ReportError(
        "inbound.unrecognised",
        "neither a DSN (RFC 3464), a feedback report (RFC 5965) nor a bounce the detectors know",
    )
