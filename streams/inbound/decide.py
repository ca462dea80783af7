"""What a report that came back to a return path means for the recipient it names (pure).

The classification is the delivery path's own (``streams.mail.replies.classify``): a DSN's
``Diagnostic-Code`` is the remote server's reply, read as a reply to RCPT, with the DSN's
``Status`` as its enhanced code. So a late ``550 5.1.1 user unknown`` is the same
``user_unknown`` bounce, and suppresses the same way, as one refused during the session.

- ``failed`` -> a ``bounced`` event with the bounce class; a permanent (5.x.x) failure of the
  address itself (``HARD_CATEGORIES``) also suppresses it; a 4.4.7 (given up after retrying) is
  the ``expired`` class, like the deliver stage's own expiry;
- ``delayed`` -> a ``deferred`` event (the receiver still has the message; no suppression);
- ``delivered``/``relayed``/``expanded`` -> nothing (positive DSNs: postwire never asks for them);
- a feedback report -> a ``complained`` event and a ``complaint`` suppression (``not-spam``
  reports nothing);
- a bounce found by the detectors -> ``bounced`` (permanent) or ``deferred`` (temporary), classed
  by its text; an auto-reply -> nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from streams.contract.build import make_event, make_suppression
from streams.contract.records import DeliveryEvent, EventType, SmtpReply, Suppression
from streams.mail.replies import HARD_CATEGORIES, Category, Stage, classify, parse_enhanced
from streams.mail.reports import (
    AutoReply,
    DeliveryReport,
    DetectedBounce,
    FeedbackReport,
    RecipientStatus,
    Report,
)

__all__ = ["SOURCE", "Target", "Verdict", "decide", "unsubscribed"]

SOURCE: Final = "inbound"  # the suppressions' source
REASON_CHARS: Final = 500
_CODE = re.compile(r"^\s*([245]\d\d)(?=[ -]|$)")
# an enhanced code anywhere in a notice's text (qmail's "(#5.1.1)"), not part of an IP address
_ENHANCED_IN_TEXT = re.compile(r"(?<![\d.])(5\.\d{1,3}\.\d{1,3})(?![\d.])")


@dataclass(frozen=True)
class Target:
    """The message and recipient a return path names, as resolved."""

    tenant: str
    message_id: str
    recipient: str
    request_id: str | None = None
    categories: tuple[str, ...] = ()
    custom_args: Mapping[str, str] = field(default_factory=dict)
    # the message's suppression group; for an unsubscribe, the group its link leaves
    asm_group_id: int | None = None


@dataclass(frozen=True)
class Verdict:
    events: tuple[DeliveryEvent, ...] = ()
    suppressions: tuple[Suppression, ...] = ()
    outcome: str = "ignored"  # what became of the report: an event type or "ignored"
    note: str = ""  # why, when ignored


def _event(
    target: Target,
    kind: EventType,
    now: datetime,
    reason: str,
    smtp: SmtpReply | None = None,
    bounce_class: str | None = None,
) -> DeliveryEvent:
    return make_event(
        kind,
        target.tenant,
        now,
        request_id=target.request_id,
        message_id=target.message_id,
        recipient=target.recipient,
        reason=reason[:REASON_CHARS],
        smtp=smtp,
        bounce_class=bounce_class,
        categories=target.categories,
        custom_args=target.custom_args,
        asm_group_id=target.asm_group_id,
    )


def _suppression(
    target: Target, reason: str, detail: str, now: datetime, group_id: int | None = None
) -> Suppression:
    return make_suppression(target.tenant, target.recipient, reason, SOURCE, now, detail, group_id)


def _about(report: DeliveryReport, recipient: str) -> tuple[RecipientStatus, ...]:
    """The blocks about the recipient; all of them when none names it (the address was
    forwarded, and the DSN names where it went)."""
    mine = tuple(
        r for r in report.recipients if recipient in (r.final_recipient, r.original_recipient)
    )
    return mine or report.recipients


def _reply(block: RecipientStatus) -> tuple[int, str | None, str]:
    """(basic code, enhanced code, text) of the remote reply the block reports."""
    text = block.diagnostic or ""
    match = _CODE.match(text)
    status = parse_enhanced(block.status or "")
    if match is not None:
        code = int(match.group(1))
    elif status is not None:
        code = 550 if status.startswith("5") else 450
    else:
        code = 550  # "failed" with neither: the report still says it is final
    return code, status, text or (block.status or "")


def _from_dsn(report: DeliveryReport, target: Target, now: datetime) -> Verdict:
    blocks = _about(report, target.recipient)
    failed = [b for b in blocks if b.action == "failed"]
    delayed = [b for b in blocks if b.action == "delayed"]
    if not failed and not delayed:
        actions = ",".join(sorted({b.action for b in blocks}))
        return Verdict(note=f"dsn without a failure ({actions})")
    block = (failed or delayed)[0]
    code, status, text = _reply(block)
    outcome = classify(code, status, text, Stage.RCPT)
    category = outcome.category or Category.OTHER
    where = block.remote_mta or report.reporting_mta
    reason = f"{text}{f' (from {where})' if where else ''}"
    smtp: SmtpReply = {"code": code, "enhanced_code": outcome.enhanced, "message": text}
    if not failed:
        return Verdict(
            (_event(target, "deferred", now, f"delayed: {reason}", smtp),), (), "deferred"
        )
    permanent = code >= 500 and (status is None or status.startswith("5"))
    bounce_class = "expired" if status == "4.4.7" else str(category)
    event = _event(target, "bounced", now, reason, smtp, bounce_class)
    if permanent and category in HARD_CATEGORIES:
        return Verdict((event,), (_suppression(target, bounce_class, reason, now),), "bounced")
    return Verdict((event,), (), "bounced")


def _from_arf(report: FeedbackReport, target: Target, now: datetime) -> Verdict:
    if report.feedback_type == "not-spam":
        return Verdict(note="feedback report: not-spam")
    agent = f" from {report.user_agent}" if report.user_agent else ""
    reason = f"{report.feedback_type} report{agent}"
    event = _event(target, "complained", now, reason)
    return Verdict((event,), (_suppression(target, "complaint", reason, now),), "complained")


def _from_detected(report: DetectedBounce, target: Target, now: datetime) -> Verdict:
    text = report.text or "a bounce in no standard form"
    if not report.permanent:
        reason = f"delayed (non-standard notice): {text}"
        return Verdict((_event(target, "deferred", now, reason),), (), "deferred")
    found = _ENHANCED_IN_TEXT.search(text)
    enhanced = found.group(1) if found else None
    category = classify(550, enhanced, text, Stage.RCPT).category or Category.OTHER
    event = _event(target, "bounced", now, text, bounce_class=str(category))
    if category in HARD_CATEGORIES:
        return Verdict((event,), (_suppression(target, str(category), text, now),), "bounced")
    return Verdict((event,), (), "bounced")


def decide(report: Report, target: Target, now: datetime) -> Verdict:
    """The events and suppressions ``report`` calls for about ``target``."""
    if isinstance(report, DeliveryReport):
        return _from_dsn(report, target, now)
    if isinstance(report, FeedbackReport):
        return _from_arf(report, target, now)
    if isinstance(report, DetectedBounce):
        return _from_detected(report, target, now)
    if isinstance(report, AutoReply):
        return Verdict(note="auto-reply")
    raise AssertionError(f"unknown report {report!r}")


def unsubscribed(target: Target, how: str, now: datetime) -> Verdict:
    """A one-click unsubscribe (the https URI's POST, or mail to the mailto): an ``unsubscribed``
    event and an ``unsubscribe`` suppression, of the target's suppression group when its link
    names one (the recipient leaves that group only), else global. The event id does not depend
    on ``now``, so a second click records nothing new. ``how`` says which door (``one-click``,
    ``mailto``)."""
    reason = f"list-unsubscribe {how}"
    event = _event(target, "unsubscribed", now, reason)
    left = _suppression(target, "unsubscribe", reason, now, target.asm_group_id)
    return Verdict((event,), (left,), "unsubscribed")
