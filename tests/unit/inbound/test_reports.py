from __future__ import annotations

import pytest

from streams.errors import ReportError
from streams.mail.reports import (
    AutoReply,
    DeliveryReport,
    DetectedBounce,
    FeedbackReport,
    parse_report,
)
from tests.fixtures.inbound import fixture

RP = "babcdefgh@bounces.postwire.test"
TO = "gina@example.org"


def _dsn(name: str) -> DeliveryReport:
    report = parse_report(fixture(name, RP, TO))
    assert isinstance(report, DeliveryReport)
    return report


def test_postfix_dsn_fields_per_recipient() -> None:
    report = _dsn("postfix_user_unknown")
    assert report.reporting_mta == "mx1.example.net"
    [block] = report.recipients
    assert block.final_recipient == TO
    assert block.original_recipient == TO
    assert block.action == "failed"
    assert block.status == "5.1.1"
    assert block.remote_mta == "mail.example.org"
    assert block.diagnostic == (
        f"550 5.1.1 <{TO}>: Recipient address rejected: User unknown in local recipient table"
    )


def test_exchange_dsn_with_its_resolver_diagnostic() -> None:
    [block] = _dsn("exchange_recipient_not_found").recipients
    assert block.final_recipient == TO
    assert block.original_recipient is None
    assert block.status == "5.1.10"
    assert block.diagnostic is not None
    assert block.diagnostic.startswith("550 5.1.10 RESOLVER.ADR.RecipientNotFound")


def test_gmail_dsn_with_a_folded_multiline_diagnostic() -> None:
    report = _dsn("gmail_no_such_account")
    assert report.reporting_mta == "googlemail.com"
    [block] = report.recipients
    assert block.diagnostic is not None
    assert block.diagnostic.startswith("550-5.1.1 The email account that you tried to reach does")
    assert "\n" not in block.diagnostic
    assert "  " not in block.diagnostic


def test_postfix_delay_warning() -> None:
    [block] = _dsn("postfix_delayed").recipients
    assert block.action == "delayed"
    assert block.status == "4.4.1"
    assert block.diagnostic is not None
    assert "Connection timed out" in block.diagnostic


def test_arf_report_fields() -> None:
    report = parse_report(fixture("arf_abuse", RP, TO))
    assert report == FeedbackReport("abuse", "SomeGenerator/1.0", TO, "192.0.2.1", (RP,))


def test_an_arf_report_names_the_return_path_of_what_it_encloses() -> None:
    # no Original-Mail-From: the enclosed message's Return-Path, or its headers' (Postfix's
    # text/rfc822-headers shape)
    raw = fixture("arf_abuse", RP, TO).replace(f"Original-Mail-From: <{RP}>\r\n".encode(), b"")
    report = parse_report(raw)
    assert isinstance(report, FeedbackReport)
    assert report.return_paths == (RP,)
    headers_only = raw.replace(
        b"Content-Type: message/rfc822", b"Content-Type: text/rfc822-headers"
    )
    report = parse_report(headers_only)
    assert isinstance(report, FeedbackReport)
    assert report.return_paths == (RP,)


def test_a_redacted_arf_report_still_parses() -> None:
    report = parse_report(fixture("arf_outlook_jmrp", RP, TO))
    assert isinstance(report, FeedbackReport)
    assert report.feedback_type == "abuse"
    assert report.original_rcpt_to is None


def test_a_qmail_bounce_is_found_by_the_detectors() -> None:
    report = parse_report(fixture("qmail_nonstandard", RP, TO))
    assert isinstance(report, DetectedBounce)
    assert report.permanent == (TO,)
    assert "no mailbox here by that name" in report.text


def test_an_out_of_office_reply_is_an_auto_reply() -> None:
    assert parse_report(fixture("out_of_office", RP, TO)) == AutoReply("Out of office: Hello")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (fixture("garbage", RP, TO), "inbound.unrecognised"),
        (b"\x00\x01 not mail at all", "inbound.not_a_message"),
        (
            b"From: a@b\r\nContent-Type: multipart/report; report-type=delivery-status;"
            b' boundary="x"\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--\r\n',
            "inbound.dsn_without_status",
        ),
        (
            b"From: a@b\r\nContent-Type: multipart/report; report-type=delivery-status;"
            b' boundary="x"\r\n\r\n--x\r\nContent-Type: message/delivery-status\r\n\r\n'
            b"Reporting-MTA: dns; a\r\n\r\nFinal-Recipient: rfc822; g@e.org\r\n\r\n--x--\r\n",
            "inbound.dsn_without_action",
        ),
        (
            b"From: a@b\r\nContent-Type: multipart/report; report-type=feedback-report;"
            b' boundary="x"\r\n\r\n--x\r\nContent-Type: message/feedback-report\r\n\r\n'
            b"User-Agent: x\r\n\r\n--x--\r\n",
            "inbound.arf_without_type",
        ),
    ],
)
def test_what_cannot_be_read_says_why(raw: bytes, code: str) -> None:
    with pytest.raises(ReportError) as caught:
        parse_report(raw)
    assert caught.value.code == code
