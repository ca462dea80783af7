"""What an SMTP reply, or a failure to get one, means (pure): for a message being delivered
(``classify``, ``transport_error``) and for a mailbox being probed (``classify_rcpt``). One parser
of RFC 3463 enhanced status codes (``parse_enhanced``) serves both.

For a message:

``classify(code, enhanced, text, stage)`` turns a reply into an ``Outcome``: delivered, deferred
(retry later), bounced (give up), or proceed (the session goes on). ``transport_error(kind, stage)``
does the same for timeouts and broken connections, which have no reply at all.

The category says why, for the bounce event and for operators; ``is_hard`` says whether the address
itself is bad and belongs on the suppression list. Only a recipient-level rejection of the address
is hard: a block of our IP, our content or our sender says nothing about the mailbox, and
suppressing on it would silently lose a customer's recipients for good.

Where the reply says it precisely, the RFC 3463 enhanced status code decides; the text decides when
the code is missing or generic (X.0.0, X.1.0 ...), using the wordings of Gmail, Outlook, Yahoo,
Postfix and Exim. Postfix's client is the model for the stage rules: a 5xx greeting is skipped and
retried like a 4xx (``smtp_skip_5xx_greeting``) and authentication failures are soft
(``smtp_sasl_auth_soft_bounce``), because both are about this connection or our configuration, not
about the message.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "HARD_CATEGORIES",
    "Category",
    "Disposition",
    "Outcome",
    "RcptOutcome",
    "Stage",
    "TransportErrorKind",
    "classify",
    "classify_rcpt",
    "parse_enhanced",
    "transport_error",
]


class Stage(StrEnum):
    CONNECT = "connect"  # the greeting
    EHLO = "ehlo"
    STARTTLS = "starttls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"  # the reply to the DATA command itself (354 expected)
    AFTER_DATA = "after_data"  # the reply to the final "." : the real verdict on the message


class Disposition(StrEnum):
    PROCEED = "proceed"  # a positive reply before the end: carry on with the session
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


class Category(StrEnum):
    USER_UNKNOWN = "user_unknown"
    MAILBOX_FULL = "mailbox_full"
    MAILBOX_DISABLED = "mailbox_disabled"
    DOMAIN_NOT_FOUND = "domain_not_found"
    POLICY = "policy"  # blocklists, reputation, spam, authentication (SPF/DKIM/DMARC) checks
    MESSAGE_TOO_LARGE = "message_too_large"
    CONTENT_REJECTED = "content_rejected"
    RELAY_DENIED = "relay_denied"
    AUTH_FAILED = "auth_failed"  # our credentials at a relay
    SENDER_REJECTED = "sender_rejected"  # the envelope sender, not the recipient
    RATE_LIMITED = "rate_limited"
    GREYLISTED = "greylisted"
    CONNECTION = "connection"
    TIMEOUT = "timeout"
    TLS = "tls"
    PROTOCOL = "protocol"  # a reply that makes no sense here: likely a bug on one side
    OTHER = "other"


HARD_CATEGORIES = frozenset(
    {Category.USER_UNKNOWN, Category.MAILBOX_DISABLED, Category.DOMAIN_NOT_FOUND}
)


class TransportErrorKind(StrEnum):
    TIMEOUT = "timeout"
    REFUSED = "refused"
    RESET = "reset"  # the peer closed or reset the connection mid-session
    UNREACHABLE = "unreachable"
    DNS = "dns"  # the MX host name did not resolve this time
    TLS = "tls"  # the handshake failed or the certificate was refused


@dataclass(frozen=True)
class Outcome:
    disposition: Disposition
    category: Category | None  # None when delivered or proceeding
    stage: Stage
    code: int | None = None  # None for transport errors
    enhanced: str | None = None
    text: str = ""
    # the destination, not this message, failed: what a circuit breaker counts
    destination_failure: bool = False

    @property
    def is_hard(self) -> bool:
        """Whether the recipient address should be suppressed."""
        return self.disposition is Disposition.BOUNCED and self.category in HARD_CATEGORIES


# an optional basic code with its continuation mark ("550-", "550 "), then the enhanced code;
# only at the start, as Yahoo's texts carry dotted numbers ("4.16.55.1") further on
_ENHANCED = re.compile(r"^\s*(?:[2-5]\d\d[ -])?([245])\.(\d{1,3})\.(\d{1,3})(?![.\d])")

_SENDER = re.compile(
    r"sender address rejected|sender verify failed|sender domain|sender rejected|"
    r"bad sender|sender not allowed",
    re.I,
)
_RELAY = re.compile(
    r"relay(?:ing)? (?:access )?(?:denied|not permitted|not allowed|prohibited)|"
    r"unable to relay|not permitted to relay|we do not relay|no relaying",
    re.I,
)
_CLIENT_POLICY = re.compile(r"client host rejected|helo command rejected", re.I)
_GREYLIST = re.compile(r"grey ?list|gray ?list", re.I)
_RATE = re.compile(
    r"rate limit|too many (?:connections|messages|recipients|concurrent)|try again later|"
    r"receiving mail (?:at|too)|unusual rate|temporarily deferred|server busy|throttl",
    re.I,
)
_AUTH = re.compile(
    r"authentication (?:is )?(?:required|failed|credentials invalid)|must authenticate", re.I
)
_DOMAIN = re.compile(
    r"domain (?:name )?(?:does not|doesn't) exist|domain not found|no such domain|"
    r"unknown domain|host (?:or domain name )?not found|null mx",
    re.I,
)
_USER = re.compile(
    r"user unknown|unknown user|no such (?:user|mailbox|recipient)|"
    r"(?:user|mailbox|recipient|account|address)\b[^.;]{0,40}?(?:does not|doesn't) exist|"
    r"doesn't have an? \S+ account|recipient (?:address )?not found|unknown recipient|"
    r"invalid recipient|mailbox not found|user not found|unrouteable address|"
    r"recipientnotfound|not a valid (?:mailbox|recipient)|"
    r"recipient address rejected: access denied",
    re.I,
)
_FULL = re.compile(
    r"mailbox (?:is )?full|over quota|quota exceeded|exceeded (?:\S+ )?(?:storage|quota)|"
    r"mailbox size limit|out of storage",
    re.I,
)
_DISABLED = re.compile(
    r"disabled|deactivated|inactive|suspended|account (?:has been )?(?:closed|terminated)|"
    r"no longer (?:active|available)",
    re.I,
)
_TOO_LARGE = re.compile(
    r"message (?:size|length) exceeds|(?:message|mail) (?:is )?too (?:big|large)|size limit|"
    r"exceeds (?:the )?(?:maximum|max)",
    re.I,
)
_BLOCKED = re.compile(
    r"block|black ?list|deny ?list|spamhaus|spamcop|barracuda|\bspam|\brbl\b|dnsbl|reputation|"
    r"polic(?:y|ies)|unsolicited|dmarc|\bspf\b|\bdkim\b|unauthenticated|prohibit|access denied|"
    r"not accepted from",
    re.I,
)
_CONTENT = re.compile(r"virus|malware|content rejected|malformed|attachment", re.I)

# which recipient-looking categories turn into a sender rejection when MAIL FROM was refused
_RECIPIENT_CATEGORIES = HARD_CATEGORIES | {Category.MAILBOX_FULL}


def parse_enhanced(text: str, code: int | None = None) -> str | None:
    """The enhanced status code at the start of ``text``, if its class agrees with ``code``.

    RFC 3463 wants the class digit to equal the first digit of the reply code; a reply where they
    differ is confused, and trusting its detail would be guessing.
    """
    match = _ENHANCED.match(text)
    if match is None:
        return None
    cls, subject, detail = match.groups()
    if code is not None and str(code)[:1] != cls:
        return None
    return f"{cls}.{int(subject)}.{int(detail)}"


def _vague_or_security(enhanced: str | None) -> bool:
    if enhanced is None:
        return True
    _, subject, detail = enhanced.split(".")
    return subject == "7" or detail == "0"


def _by_enhanced(subject: int, detail: int, text: str) -> Category | None:
    """The category a specific enhanced code states, or None for a generic one."""
    by_subject = _BY_SUBJECT.get(subject)
    return None if by_subject is None else by_subject(detail, text)


def _addressing(detail: int, text: str) -> Category | None:  # X.1.*
    if detail == 10:
        # RFC 7505 made X.1.10 "null MX"; Exchange uses it for an unknown recipient
        return Category.DOMAIN_NOT_FOUND if "null mx" in text.lower() else Category.USER_UNKNOWN
    return {
        1: Category.USER_UNKNOWN,
        2: Category.DOMAIN_NOT_FOUND,
        3: Category.USER_UNKNOWN,  # bad address syntax: it can never be delivered
        6: Category.MAILBOX_DISABLED,  # moved, no forwarding address
        7: Category.SENDER_REJECTED,
        8: Category.SENDER_REJECTED,
    }.get(detail)


def _mailbox(detail: int, text: str) -> Category | None:  # X.2.*
    if detail == 1 and _RATE.search(text):
        # Gmail's 4.2.1 "receiving mail at a rate that prevents additional messages"
        return Category.RATE_LIMITED
    return {
        1: Category.MAILBOX_DISABLED,
        2: Category.MAILBOX_FULL,
        3: Category.MESSAGE_TOO_LARGE,
    }.get(detail)


def _mail_system(detail: int, _text: str) -> Category | None:  # X.3.*
    return {4: Category.MESSAGE_TOO_LARGE}.get(detail, Category.OTHER if detail else None)


def _network(detail: int, text: str) -> Category | None:  # X.4.*
    # Exchange Online rejects unknown recipients with "5.4.1 Recipient address rejected:
    # Access denied" (directory-based edge blocking); X.4.1/X.4.2 are otherwise network trouble
    if detail == 1 and _USER.search(text):
        return Category.USER_UNKNOWN
    if detail == 5:
        return Category.RATE_LIMITED  # mail system congestion
    return Category.CONNECTION if detail in (1, 2) else None


def _protocol(detail: int, _text: str) -> Category | None:  # X.5.*
    if detail == 3:
        return Category.RATE_LIMITED  # too many recipients: send the rest later
    return Category.PROTOCOL if detail else None


def _content(_detail: int, _text: str) -> Category | None:  # X.6.*
    return Category.CONTENT_REJECTED


def _security(detail: int, text: str) -> Category | None:  # X.7.*
    if detail == 8 or _AUTH.search(text):
        return Category.AUTH_FAILED
    if _RELAY.search(text):
        return Category.RELAY_DENIED
    return Category.POLICY


# RFC 3463's subjects: addressing, mailbox, mail system, network, protocol, content, security
_BY_SUBJECT: dict[int, Callable[[int, str], Category | None]] = {
    1: _addressing,
    2: _mailbox,
    3: _mail_system,
    4: _network,
    5: _protocol,
    6: _content,
    7: _security,
}


def _by_text(text: str) -> Category | None:
    # domains before users: "domain does not exist" must not read as a missing user
    for pattern, category in (
        (_DOMAIN, Category.DOMAIN_NOT_FOUND),
        (_USER, Category.USER_UNKNOWN),
        (_FULL, Category.MAILBOX_FULL),
        (_DISABLED, Category.MAILBOX_DISABLED),
        (_TOO_LARGE, Category.MESSAGE_TOO_LARGE),
        (_AUTH, Category.AUTH_FAILED),
        (_CONTENT, Category.CONTENT_REJECTED),
        (_BLOCKED, Category.POLICY),
    ):
        if pattern.search(text):
            return category
    return None


def _category(code: int, enhanced: str | None, text: str, stage: Stage) -> Category:
    temporary = code < 500
    if stage is Stage.AUTH or (enhanced is not None and enhanced.endswith(".7.8")):
        return Category.AUTH_FAILED
    # Postfix names the restriction that fired; with smtpd_delay_reject a rejected sender or
    # client arrives as a reply to RCPT, and must not be pinned on the recipient
    if _SENDER.search(text):
        return Category.SENDER_REJECTED
    if _RELAY.search(text):
        return Category.RELAY_DENIED
    if _CLIENT_POLICY.search(text):
        return Category.POLICY
    if temporary and _GREYLIST.search(text):
        return Category.GREYLISTED
    # a 4xx saying "slow down" is throttling, though it often wears a security code (4.7.0);
    # a specific mailbox or address code still wins ("4.2.2 mailbox full, try again later")
    if temporary and _RATE.search(text) and _vague_or_security(enhanced):
        return Category.RATE_LIMITED
    if stage is Stage.STARTTLS:
        return Category.TLS
    category: Category | None = None
    if enhanced is not None:
        _, subject, detail = (int(part) for part in enhanced.split("."))
        category = _by_enhanced(subject, detail, text)
    if category is None:
        category = _by_text(text)
    if category is None:
        category = _by_basic_code(code, stage)
    if stage is Stage.MAIL and category in _RECIPIENT_CATEGORIES:
        return Category.SENDER_REJECTED
    return category


def _by_basic_code(code: int, stage: Stage) -> Category:
    if code == 552:
        # RFC 5321: exceeded storage allocation; for one recipient that is the mailbox, for the
        # message as a whole (MAIL FROM SIZE=, end of data) it is the size
        return Category.MAILBOX_FULL if stage is Stage.RCPT else Category.MESSAGE_TOO_LARGE
    if code in (500, 501, 502, 503, 504):
        return Category.PROTOCOL
    # a bare 550 "mailbox unavailable" is RFC 5321's catch-all for unknown users and policy
    # rejections alike; too vague to suppress an address on
    return Category.OTHER


def classify(code: int, enhanced: str | None, text: str, stage: Stage) -> Outcome:
    """What the reply ``code``/``text`` to the command of ``stage`` means for the message.

    ``enhanced`` is the enhanced status code if the SMTP library split it off; otherwise (or if it
    is malformed) it is read from the start of ``text``.
    """
    parsed = parse_enhanced(enhanced, code) if enhanced else None
    enhanced = parsed or parse_enhanced(text, code)
    if 200 <= code < 400:
        if stage is not Stage.AFTER_DATA:
            return Outcome(Disposition.PROCEED, None, stage, code, enhanced, text)
        if code < 300:
            return Outcome(Disposition.DELIVERED, None, stage, code, enhanced, text)
    if not 400 <= code < 600:
        # a 3xx after the data, or no SMTP code at all: the session is confused; keep the
        # message and try again rather than lose it on a misunderstanding
        return Outcome(Disposition.DEFERRED, Category.PROTOCOL, stage, code, enhanced, text, True)
    category = _category(code, enhanced, text, stage)
    soft = (
        code < 500 or stage in (Stage.CONNECT, Stage.STARTTLS) or category is Category.AUTH_FAILED
    )
    # 421 means the server is closing the connection: the host is unwell or shedding load
    destination_failure = (
        stage in (Stage.CONNECT, Stage.EHLO, Stage.STARTTLS)
        or code == 421
        or category in (Category.CONNECTION, Category.TIMEOUT)
    )
    disposition = Disposition.DEFERRED if soft else Disposition.BOUNCED
    return Outcome(disposition, category, stage, code, enhanced, text, destination_failure)


def transport_error(
    kind: TransportErrorKind, stage: Stage = Stage.CONNECT, text: str = ""
) -> Outcome:
    """A step that got no reply at all. Always deferred, even after the data was sent: the
    message may then arrive twice, but losing it would be worse (RFC 1047)."""
    category = {
        TransportErrorKind.TIMEOUT: Category.TIMEOUT,
        TransportErrorKind.TLS: Category.TLS,
    }.get(kind, Category.CONNECTION)
    return Outcome(Disposition.DEFERRED, category, stage, None, None, text or str(kind), True)


# the verifier's probe: a RCPT reply read as news about the mailbox
_RCPT_BLOCK_WORDS = re.compile(
    r"block|spamhaus|blacklist|denylist|policy|reputation|rejected by", re.I
)
_RCPT_DISABLED_WORDS = re.compile(r"disabled|inactive|deactivated|suspended", re.I)


class RcptOutcome(StrEnum):
    DELIVERABLE = "deliverable"
    INVALID = "invalid"
    FULL = "full"
    DISABLED = "disabled"
    TEMPORARY = "temporary"  # greylisting and other 4xx: ask again later
    BLOCKED = "blocked"  # the server refuses us, which says nothing about the mailbox
    UNKNOWN = "unknown"


def classify_rcpt(code: int, message: str) -> RcptOutcome:
    """What a RCPT TO reply says about the mailbox, for the verifier's probe (no message is sent,
    so only the mailbox matters; ``classify`` is the same question for a message)."""
    enhanced = parse_enhanced(message) or ""
    if code in (250, 251):
        return RcptOutcome.DELIVERABLE
    if enhanced.endswith(".2.2") or code == 552 or (code == 452 and not enhanced.endswith(".5.3")):
        return RcptOutcome.FULL
    if 500 <= code < 600:
        if enhanced.startswith("5.7") or _RCPT_BLOCK_WORDS.search(message):
            return RcptOutcome.BLOCKED
        if enhanced == "5.2.1" or _RCPT_DISABLED_WORDS.search(message):
            return RcptOutcome.DISABLED
        if code in (550, 551, 553) or enhanced.startswith("5.1"):
            return RcptOutcome.INVALID
        return RcptOutcome.UNKNOWN
    if 400 <= code < 500:
        return RcptOutcome.TEMPORARY
    return RcptOutcome.UNKNOWN
