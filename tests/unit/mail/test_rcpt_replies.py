from __future__ import annotations

import pytest

from streams.mail.replies import RcptOutcome, classify_rcpt, parse_enhanced


@pytest.mark.parametrize(
    ("code", "message", "outcome"),
    [
        (250, "2.1.5 OK", RcptOutcome.DELIVERABLE),
        (251, "User not local; will forward", RcptOutcome.DELIVERABLE),
        (
            550,
            "5.1.1 The email account that you tried to reach does not exist",
            RcptOutcome.INVALID,
        ),
        (551, "User not local", RcptOutcome.INVALID),
        (553, "mailbox name not allowed", RcptOutcome.INVALID),
        (550, "5.2.1 The email account that you tried to reach is disabled", RcptOutcome.DISABLED),
        (550, "5.7.1 Service unavailable; client host blocked using Spamhaus", RcptOutcome.BLOCKED),
        (554, "5.7.1 rejected by policy", RcptOutcome.BLOCKED),
        (452, "4.2.2 Mailbox full", RcptOutcome.FULL),
        (552, "5.2.2 Mailbox full", RcptOutcome.FULL),
        (452, "4.5.3 Too many recipients", RcptOutcome.TEMPORARY),
        (451, "4.7.1 Greylisted, please try again later", RcptOutcome.TEMPORARY),
        (421, "Service not available", RcptOutcome.TEMPORARY),
        (500, "Syntax error", RcptOutcome.UNKNOWN),
    ],
)
def test_classify_rcpt(code: int, message: str, outcome: RcptOutcome) -> None:
    assert classify_rcpt(code, message) is outcome


def test_enhanced_code() -> None:
    assert parse_enhanced("5.1.1 no such user") == "5.1.1"
    assert parse_enhanced("no such user") is None
