from __future__ import annotations

from datetime import UTC, datetime

from streams.inbound.decide import SOURCE, Target, decide
from streams.mail.reports import (
    AutoReply,
    DeliveryReport,
    DetectedBounce,
    FeedbackReport,
    RecipientStatus,
    parse_report,
)
from tests.fixtures.inbound import fixture

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
RP = "babcdefgh@bounces.postwire.test"
TO = "gina@example.org"
TARGET = Target("acme", "0123456789abcdef0123456789abcdef", TO, "req-1", ("news",), {"k": "v"})


def _from(name: str):  # type: ignore[no-untyped-def]
    return decide(parse_report(fixture(name, RP, TO)), TARGET, NOW)


def test_a_late_user_unknown_bounces_hard_and_suppresses() -> None:
    for name in ("postfix_user_unknown", "exchange_recipient_not_found", "gmail_no_such_account"):
        verdict = _from(name)
        [event] = verdict.events
        assert event["type"] == "bounced", name
        assert event["bounce_class"] == "user_unknown", name
        assert event["recipient"] == TO
        assert event["tenant"] == "acme"
        assert event["message_id"] == TARGET.message_id
        assert event["request_id"] == "req-1"
        assert event["categories"] == ["news"]
        assert event["custom_args"] == {"k": "v"}
        assert event["smtp"] is not None
        assert event["smtp"]["code"] == 550
        [suppression] = verdict.suppressions
        assert suppression["address"] == TO
        assert suppression["tenant"] == "acme"
        assert suppression["reason"] == "user_unknown"
        assert suppression["source"] == SOURCE


def test_the_gmail_reply_keeps_its_enhanced_code_and_host() -> None:
    [event] = _from("gmail_no_such_account").events
    assert event["smtp"] is not None
    assert event["smtp"]["enhanced_code"] == "5.1.1"
    assert event["reason"] is not None
    assert "gmail-smtp-in.l.google.com" in event["reason"]


def test_a_full_mailbox_bounces_without_suppressing() -> None:
    verdict = _from("gmail_mailbox_full")
    [event] = verdict.events
    assert event["type"] == "bounced"
    assert event["bounce_class"] == "mailbox_full"
    assert verdict.suppressions == ()


def test_a_delay_warning_is_a_deferred_event() -> None:
    verdict = _from("postfix_delayed")
    [event] = verdict.events
    assert event["type"] == "deferred"
    assert verdict.outcome == "deferred"
    assert event["reason"] is not None
    assert event["reason"].startswith("delayed:")
    assert verdict.suppressions == ()


def test_a_complaint_suppresses() -> None:
    for name in ("arf_abuse", "arf_outlook_jmrp"):
        verdict = _from(name)
        [event] = verdict.events
        assert event["type"] == "complained"
        assert verdict.outcome == "complained"
        [suppression] = verdict.suppressions
        assert suppression["reason"] == "complaint"
        assert suppression["address"] == TO


def test_not_spam_feedback_changes_nothing() -> None:
    verdict = decide(FeedbackReport("not-spam", None, TO, None), TARGET, NOW)
    assert verdict.events == ()
    assert verdict.suppressions == ()


def test_a_non_standard_bounce_is_classed_by_its_text() -> None:
    verdict = _from("qmail_nonstandard")
    [event] = verdict.events
    assert event["type"] == "bounced"
    assert event["bounce_class"] == "user_unknown"
    assert len(verdict.suppressions) == 1
    temporary = decide(DetectedBounce((), (TO,), "try later"), TARGET, NOW)
    assert [e["type"] for e in temporary.events] == ["deferred"]
    assert not temporary.suppressions


def test_an_expired_4xx_failure_is_the_expired_class_and_does_not_suppress() -> None:
    block = RecipientStatus(TO, None, "failed", "4.4.7", "450 4.4.7 delivery time expired", None)
    verdict = decide(DeliveryReport("mx", (block,)), TARGET, NOW)
    [event] = verdict.events
    assert event["bounce_class"] == "expired"
    assert verdict.suppressions == ()


def test_a_policy_block_reported_late_does_not_suppress_the_address() -> None:
    diag = "550 5.7.1 Service unavailable; client host blocked using Spamhaus"
    block = RecipientStatus(TO, None, "failed", "5.7.1", diag, None)
    verdict = decide(DeliveryReport("mx", (block,)), TARGET, NOW)
    assert verdict.events[0]["bounce_class"] == "policy"
    assert verdict.suppressions == ()


def test_a_forwarded_address_is_judged_by_the_block_that_names_it_or_any() -> None:
    other = RecipientStatus("g@forward.example", TO, "failed", "5.1.1", "550 5.1.1 unknown", None)
    fine = RecipientStatus("h@x.example", None, "delivered", "2.0.0", None, None)
    verdict = decide(DeliveryReport("mx", (fine, other)), TARGET, NOW)
    assert verdict.events[0]["type"] == "bounced"
    forwarded = RecipientStatus("g@forward.example", None, "failed", "5.1.1", None, None)
    verdict = decide(DeliveryReport("mx", (forwarded,)), TARGET, NOW)
    assert verdict.events[0]["bounce_class"] == "user_unknown"
    assert verdict.suppressions[0]["address"] == TO  # ours, not where it was forwarded


def test_positive_dsns_and_auto_replies_say_nothing() -> None:
    fine = RecipientStatus(TO, None, "delivered", "2.0.0", None, None)
    assert decide(DeliveryReport("mx", (fine,)), TARGET, NOW).events == ()
    assert decide(AutoReply("away"), TARGET, NOW).note == "auto-reply"


def test_the_same_report_twice_is_the_same_event() -> None:
    assert (
        _from("postfix_user_unknown").events[0]["event_id"]
        == (_from("postfix_user_unknown").events[0]["event_id"])
    )
