from __future__ import annotations

import pytest

from streams.mail.replies import (
    Category,
    Disposition,
    Outcome,
    Stage,
    TransportErrorKind,
    classify,
    parse_enhanced,
    transport_error,
)

D, B = Disposition.DEFERRED, Disposition.BOUNCED
C = Category

# (who, stage, code, text as the server sent it, disposition, category, is_hard)
REPLIES = [
    # Gmail
    (
        "gmail",
        Stage.RCPT,
        550,
        "5.1.1 The email account that you tried to reach does not exist. Please try\n"
        "5.1.1 double-checking the recipient's email address for typos or\n"
        "5.1.1 unnecessary spaces. https://support.google.com/mail/?p=NoSuchUser",
        B,
        C.USER_UNKNOWN,
        True,
    ),
    (
        "gmail",
        Stage.RCPT,
        550,
        "5.2.1 The email account that you tried to reach is disabled.",
        B,
        C.MAILBOX_DISABLED,
        True,
    ),
    (
        "gmail",
        Stage.RCPT,
        452,
        "4.2.2 The email account that you tried to reach is over quota. Please direct\n"
        "4.2.2 the recipient to https://support.google.com/mail/?p=OverQuotaTemp",
        D,
        C.MAILBOX_FULL,
        False,
    ),
    (
        "gmail",
        Stage.AFTER_DATA,
        552,
        "5.2.2 The email account that you tried to reach is over quota.",
        B,
        C.MAILBOX_FULL,
        False,
    ),
    (
        "gmail",
        Stage.AFTER_DATA,
        552,
        "5.3.4 Your message exceeded Google's message size limits.",
        B,
        C.MESSAGE_TOO_LARGE,
        False,
    ),
    (
        "gmail",
        Stage.AFTER_DATA,
        550,
        "5.7.26 This mail has been blocked because the sender is unauthenticated. Gmail\n"
        "5.7.26 requires all senders to authenticate with either SPF or DKIM.",
        B,
        C.POLICY,
        False,
    ),
    (
        "gmail",
        Stage.AFTER_DATA,
        550,
        "5.7.1 [203.0.113.5] Our system has detected that this message is likely\n"
        "5.7.1 unsolicited mail. To reduce the amount of spam sent to Gmail, this message\n"
        "5.7.1 has been blocked.",
        B,
        C.POLICY,
        False,
    ),
    (
        "gmail",
        Stage.RCPT,
        450,
        "4.2.1 The user you are trying to contact is receiving mail at a rate that\n"
        "4.2.1 prevents additional messages from being delivered.",
        D,
        C.RATE_LIMITED,
        False,
    ),
    (
        "gmail",
        Stage.EHLO,
        421,
        "4.7.0 Try again later, closing connection. (EHLO)",
        D,
        C.RATE_LIMITED,
        False,
    ),
    (
        "gmail",
        Stage.AFTER_DATA,
        552,
        "5.7.0 This message was blocked because its content presents a potential\n"
        "5.7.0 security issue.",
        B,
        C.POLICY,
        False,
    ),
    (
        "gmail",
        Stage.MAIL,
        530,
        "5.7.0 Authentication Required. Learn more at https://support.google.com/mail",
        D,
        C.AUTH_FAILED,
        False,
    ),
    # Outlook / Exchange Online
    (
        "outlook",
        Stage.RCPT,
        550,
        "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        B,
        C.USER_UNKNOWN,
        True,
    ),
    (
        "outlook",
        Stage.RCPT,
        550,
        "5.4.1 Recipient address rejected: Access denied. AS(201806281) [DM6NAM.prod]",
        B,
        C.USER_UNKNOWN,
        True,
    ),
    (
        "outlook",
        Stage.RCPT,
        550,
        "5.7.1 Service unavailable, Client host [203.0.113.5] blocked using Spamhaus.",
        B,
        C.POLICY,
        False,
    ),
    (
        "outlook",
        Stage.RCPT,
        451,
        "4.7.500 Server busy. Please try again later from [203.0.113.5]. (S77719)",
        D,
        C.RATE_LIMITED,
        False,
    ),
    (
        "outlook",
        Stage.AFTER_DATA,
        554,
        "5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException",
        B,
        C.MAILBOX_FULL,
        False,
    ),
    # RFC 5321's catch-all wording: Hotmail uses it for unknown users, others for policy
    (
        "outlook",
        Stage.RCPT,
        550,
        "5.5.0 Requested action not taken: mailbox unavailable (S2017062302)",
        B,
        C.OTHER,
        False,
    ),
    # Postfix
    (
        "postfix",
        Stage.RCPT,
        550,
        "550 5.1.1 <x@example.org>: Recipient address rejected: User unknown in local "
        "recipient table",
        B,
        C.USER_UNKNOWN,
        True,
    ),
    (
        "postfix",
        Stage.RCPT,
        450,
        "4.1.2 <x@nowhere.example>: Recipient address rejected: Domain not found",
        D,
        C.DOMAIN_NOT_FOUND,
        False,
    ),
    (
        "postfix",
        Stage.RCPT,
        550,
        "5.1.2 <x@nowhere.example>: Recipient address rejected: Domain not found",
        B,
        C.DOMAIN_NOT_FOUND,
        True,
    ),
    (
        "postfix",
        Stage.RCPT,
        554,
        "5.7.1 <x@elsewhere.example>: Relay access denied",
        B,
        C.RELAY_DENIED,
        False,
    ),
    (
        "postfix",
        Stage.RCPT,
        450,
        "4.2.0 <x@example.org>: Recipient address rejected: Greylisted, see "
        "http://postgrey.schweikert.ch/help/example.org.html",
        D,
        C.GREYLISTED,
        False,
    ),
    # smtpd_delay_reject: the sender check fires at RCPT and must not count against x@
    (
        "postfix",
        Stage.RCPT,
        553,
        "5.1.8 <bounce@sender.example>: Sender address rejected: Domain not found",
        B,
        C.SENDER_REJECTED,
        False,
    ),
    (
        "postfix",
        Stage.RCPT,
        450,
        "4.7.1 Client host rejected: cannot find your hostname, [203.0.113.5]",
        D,
        C.POLICY,
        False,
    ),
    (
        "postfix",
        Stage.RCPT,
        504,
        "5.5.2 <localhost>: Helo command rejected: need fully-qualified hostname",
        B,
        C.POLICY,
        False,
    ),
    (
        "postfix",
        Stage.AFTER_DATA,
        552,
        "5.3.4 Message size exceeds fixed limit",
        B,
        C.MESSAGE_TOO_LARGE,
        False,
    ),
    (
        "postfix",
        Stage.CONNECT,
        554,
        "5.7.1 Service unavailable; Client host [203.0.113.5] blocked using zen.spamhaus.org",
        D,
        C.POLICY,
        False,
    ),
    # Exim (often without enhanced codes)
    ("exim", Stage.RCPT, 550, "Unrouteable address", B, C.USER_UNKNOWN, True),
    ("exim", Stage.RCPT, 550, "No Such User Here", B, C.USER_UNKNOWN, True),
    (
        "exim",
        Stage.RCPT,
        550,
        "Verification failed for <bounce@sender.example>\nUnrouteable address\n"
        "Sender verify failed",
        B,
        C.SENDER_REJECTED,
        False,
    ),
    (
        "exim",
        Stage.AFTER_DATA,
        552,
        "Message size exceeds maximum permitted",
        B,
        C.MESSAGE_TOO_LARGE,
        False,
    ),
    (
        "exim",
        Stage.RCPT,
        550,
        "rejected because 203.0.113.5 is in a black list at zen.spamhaus.org",
        B,
        C.POLICY,
        False,
    ),
    ("exim", Stage.RCPT, 451, "Temporary local problem - please try later", D, C.OTHER, False),
    (
        "exim",
        Stage.AFTER_DATA,
        550,
        "This message contains a virus (Eicar-Signature) and has been rejected",
        B,
        C.CONTENT_REJECTED,
        False,
    ),
    # Yahoo / AOL
    (
        "yahoo",
        Stage.AFTER_DATA,
        554,
        "delivery error: dd This user doesn't have a yahoo.com account (x@yahoo.com) [0] - "
        "mta1010.mail.bf1.yahoo.com",
        B,
        C.USER_UNKNOWN,
        True,
    ),
    (
        "yahoo",
        Stage.AFTER_DATA,
        554,
        "delivery error: dd Sorry your message to x@yahoo.com cannot be delivered. This "
        "mailbox is disabled (554.30). - mta1010.mail.bf1.yahoo.com",
        B,
        C.MAILBOX_DISABLED,
        True,
    ),
    (
        "yahoo",
        Stage.CONNECT,
        421,
        "4.7.0 [TSS04] Messages from 203.0.113.5 temporarily deferred due to unexpected "
        "volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes",
        D,
        C.RATE_LIMITED,
        False,
    ),
    (
        "yahoo",
        Stage.AFTER_DATA,
        554,
        "5.7.9 Message not accepted for policy reasons.  See "
        "https://postmaster.yahooinc.com/error-codes",
        B,
        C.POLICY,
        False,
    ),
    (
        "yahoo",
        Stage.CONNECT,
        553,
        "5.7.1 [BL21] Connections will not be accepted from 203.0.113.5, because the ip is "
        "in Spamhaus's list; see https://postmaster.yahooinc.com/error-codes",
        D,
        C.POLICY,
        False,
    ),
    # generic
    ("any", Stage.RCPT, 552, "Requested mail action aborted", B, C.MAILBOX_FULL, False),
    ("any", Stage.RCPT, 452, "4.5.3 Too many recipients", D, C.RATE_LIMITED, False),
    ("any", Stage.AUTH, 535, "5.7.8 Authentication credentials invalid", D, C.AUTH_FAILED, False),
    ("any", Stage.DATA, 554, "5.5.1 Error: no valid recipients", B, C.PROTOCOL, False),
    ("any", Stage.STARTTLS, 454, "4.7.0 TLS not available due to local problem", D, C.TLS, False),
    ("any", Stage.STARTTLS, 502, "5.5.1 Command not implemented", D, C.TLS, False),
]


@pytest.mark.parametrize(
    ("who", "stage", "code", "text", "disposition", "category", "hard"),
    REPLIES,
    ids=[f"{r[0]}-{r[2]}-{i}" for i, r in enumerate(REPLIES)],
)
def test_real_replies(
    who: str,
    stage: Stage,
    code: int,
    text: str,
    disposition: Disposition,
    category: Category,
    hard: bool,
) -> None:
    outcome = classify(code, None, text, stage)
    assert (outcome.disposition, outcome.category, outcome.is_hard) == (disposition, category, hard)
    assert outcome.stage is stage
    assert outcome.code == code


def test_2xx_after_data_is_delivered() -> None:
    outcome = classify(250, None, "2.0.0 OK  1700000000 a1-20020a05 - gsmtp", Stage.AFTER_DATA)
    assert outcome.disposition is Disposition.DELIVERED
    assert outcome.category is None
    assert outcome.enhanced == "2.0.0"
    assert not outcome.is_hard


@pytest.mark.parametrize(
    ("code", "stage"),
    [(220, Stage.CONNECT), (250, Stage.EHLO), (334, Stage.AUTH), (250, Stage.RCPT),
     (354, Stage.DATA)],
)  # fmt: skip
def test_positive_replies_before_the_end_let_the_session_proceed(code: int, stage: Stage) -> None:
    outcome = classify(code, None, "ok", stage)
    assert outcome.disposition is Disposition.PROCEED
    assert outcome.category is None


@pytest.mark.parametrize("code", [354, 199, 600, 0])
def test_a_nonsense_final_reply_defers_instead_of_losing_the_message(code: int) -> None:
    outcome = classify(code, None, "??", Stage.AFTER_DATA)
    assert outcome.disposition is Disposition.DEFERRED
    assert outcome.category is Category.PROTOCOL


def test_a_given_enhanced_code_is_used_and_normalised() -> None:
    outcome = classify(550, "5.01.001", "Recipient rejected", Stage.RCPT)
    assert outcome.enhanced == "5.1.1"
    assert outcome.category is Category.USER_UNKNOWN


def test_a_malformed_given_enhanced_code_falls_back_to_the_text() -> None:
    outcome = classify(550, "bogus", "5.2.1 account disabled", Stage.RCPT)
    assert outcome.enhanced == "5.2.1"
    assert outcome.category is Category.MAILBOX_DISABLED


def test_recipient_reasons_at_mail_from_are_about_the_sender() -> None:
    outcome = classify(550, None, "5.1.1 <bounce@sender.example>: user unknown", Stage.MAIL)
    assert outcome.category is Category.SENDER_REJECTED
    assert outcome.disposition is Disposition.BOUNCED
    assert not outcome.is_hard


def test_a_bare_550_is_not_enough_to_suppress() -> None:
    outcome = classify(550, None, "Rejected", Stage.RCPT)
    assert outcome.disposition is Disposition.BOUNCED
    assert outcome.category is Category.OTHER
    assert not outcome.is_hard


def test_a_full_mailbox_saying_try_later_is_still_a_full_mailbox() -> None:
    outcome = classify(452, None, "4.2.2 Mailbox full, try again later", Stage.RCPT)
    assert outcome.category is Category.MAILBOX_FULL


def test_null_mx_is_domain_not_found() -> None:
    outcome = classify(556, None, "5.1.10 Recipient address has null MX", Stage.RCPT)
    assert outcome.category is Category.DOMAIN_NOT_FOUND
    assert outcome.is_hard


def test_a_deferred_hard_reason_does_not_suppress() -> None:
    outcome = classify(450, None, "4.1.1 <x@example.org>: user unknown", Stage.RCPT)
    assert outcome.category is Category.USER_UNKNOWN
    assert outcome.disposition is Disposition.DEFERRED
    assert not outcome.is_hard


@pytest.mark.parametrize(
    ("code", "text", "stage", "counts"),
    [
        (421, "4.7.0 closing connection", Stage.RCPT, True),
        (554, "5.7.1 go away", Stage.CONNECT, True),
        (421, "Service not available", Stage.EHLO, True),
        (450, "4.4.2 bad connection", Stage.RCPT, True),
        (550, "5.1.1 user unknown", Stage.RCPT, False),
        (450, "4.2.0 Greylisted", Stage.RCPT, False),
        (535, "5.7.8 bad credentials", Stage.AUTH, False),
    ],
)
def test_destination_failures_are_what_a_breaker_counts(
    code: int, text: str, stage: Stage, counts: bool
) -> None:
    assert classify(code, None, text, stage).destination_failure is counts


@pytest.mark.parametrize(
    ("kind", "category"),
    [
        (TransportErrorKind.TIMEOUT, Category.TIMEOUT),
        (TransportErrorKind.REFUSED, Category.CONNECTION),
        (TransportErrorKind.RESET, Category.CONNECTION),
        (TransportErrorKind.UNREACHABLE, Category.CONNECTION),
        (TransportErrorKind.DNS, Category.CONNECTION),
        (TransportErrorKind.TLS, Category.TLS),
    ],
)
def test_transport_errors_are_deferred_destination_failures(
    kind: TransportErrorKind, category: Category
) -> None:
    outcome = transport_error(kind)
    assert outcome == Outcome(
        Disposition.DEFERRED, category, Stage.CONNECT, None, None, str(kind), True
    )


def test_a_timeout_after_the_data_is_still_deferred() -> None:
    outcome = transport_error(TransportErrorKind.TIMEOUT, Stage.AFTER_DATA, "read timed out")
    assert outcome.disposition is Disposition.DEFERRED
    assert outcome.stage is Stage.AFTER_DATA
    assert outcome.text == "read timed out"


@pytest.mark.parametrize(
    ("text", "code", "enhanced"),
    [
        ("550 5.1.1 <x@y>: Recipient address rejected", 550, "5.1.1"),
        ("550-5.7.26 unauthenticated", 550, "5.7.26"),
        ("5.4.1 Recipient address rejected", 550, "5.4.1"),
        ("  4.7.500 Server busy", 451, "4.7.500"),
        ("2.0.0 OK", 250, "2.0.0"),
        ("5.1.1 no such user", None, "5.1.1"),
        ("4.1.1 class disagrees with the code", 550, None),
        ("Unrouteable address", 550, None),
        ("delivery error: dd 554.30", 554, None),
        ("5.1.1.2 not a status code", 550, None),
        ("see 5.1.1", 550, None),
    ],
)
def test_parse_enhanced(text: str, code: int | None, enhanced: str | None) -> None:
    assert parse_enhanced(text, code) == enhanced


def test_a_generic_5_1_0_needs_the_text_to_say_the_user_is_unknown() -> None:
    unknown = classify(550, None, "5.1.0 Address rejected. User unknown", Stage.RCPT)
    vague = classify(550, None, "5.1.0 Address rejected", Stage.RCPT)
    assert (unknown.category, unknown.is_hard) == (Category.USER_UNKNOWN, True)
    assert (vague.category, vague.is_hard) == (Category.OTHER, False)
