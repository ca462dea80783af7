from __future__ import annotations

from datetime import UTC, datetime

from streams.mail.dns import MxAnswer
from streams.mail.replies import RcptOutcome
from streams.mail.syntax import check_syntax
from streams.verify.lists import MiscFlags
from streams.verify.probe import ProbeResult
from streams.verify.verdict import apply_suppression, build_result, cache_ttl, judge

OK = check_syntax("alice@example.org")
MX = MxAnswer("ok", ("mx.example.org",), 300)
CLEAN = MiscFlags(False, False, False, None)


def probe(
    outcome: RcptOutcome, catch_all: bool | None = False, connect: bool = True
) -> ProbeResult:
    return ProbeResult(
        connect, outcome, 250 if outcome is RcptOutcome.DELIVERABLE else 550, "", catch_all
    )


def test_probe_deliverable_is_safe_and_confident() -> None:
    v = judge(OK, MX, CLEAN, probe(RcptOutcome.DELIVERABLE))
    assert (v.is_reachable, v.reasons) == ("safe", ())
    assert v.score == 99
    assert cache_ttl(v, probed=True) == 7 * 86400


def test_without_probe_safe_but_less_sure() -> None:
    v = judge(OK, MX, CLEAN, None)
    assert v.is_reachable == "safe"
    assert v.score < 99
    assert cache_ttl(v, probed=False) == 12 * 3600


def test_invalid_syntax_is_cached_longest() -> None:
    v = judge(check_syntax("nope"), None, None, None)
    assert v.is_reachable == "invalid"
    assert cache_ttl(v, probed=False) == 30 * 86400


def test_dns_outcomes() -> None:
    assert judge(OK, MxAnswer("null_mx"), CLEAN, None).reasons == ("null_mx",)
    assert judge(OK, MxAnswer("nxdomain"), CLEAN, None).is_reachable == "invalid"
    timeout = judge(OK, MxAnswer("timeout"), CLEAN, None)
    assert timeout.is_reachable == "unknown"
    assert cache_ttl(timeout, probed=False) == 600


def test_catch_all_and_full_are_risky_unknown_mailbox_invalid() -> None:
    assert (
        judge(OK, MX, CLEAN, probe(RcptOutcome.DELIVERABLE, catch_all=True)).is_reachable == "risky"
    )
    assert judge(OK, MX, CLEAN, probe(RcptOutcome.FULL)).reasons == ("mailbox_full",)
    assert judge(OK, MX, CLEAN, probe(RcptOutcome.INVALID)).reasons == ("mailbox_unknown",)
    assert judge(OK, MX, CLEAN, probe(RcptOutcome.TEMPORARY)).is_reachable == "unknown"
    assert judge(OK, MX, CLEAN, probe(RcptOutcome.UNKNOWN, connect=False)).is_reachable == "unknown"


def test_misc_flags_make_an_address_risky() -> None:
    v = judge(OK, MX, MiscFlags(True, True, False, "example.com"), None)
    assert v.is_reachable == "risky"
    assert v.reasons == ("disposable", "role_account", "possible_typo")


def test_suppression_caps_the_verdict() -> None:
    task = {"request_id": "r", "tenant": "t", "address": "alice@example.org", "requested_at": None}
    now = datetime(2026, 1, 1, tzinfo=UTC)
    result = build_result(task, OK, MX, CLEAN, None, judge(OK, MX, CLEAN, None), now)
    suppressed = apply_suppression(result)
    assert suppressed["is_reachable"] == "risky"
    assert suppressed["misc"]["is_suppressed"] is True
    assert "suppressed" in suppressed["reasons"]
    assert result["misc"]["is_suppressed"] is False  # the original is left alone
