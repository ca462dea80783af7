from __future__ import annotations

import pytest

from streams.gate.admission import (
    Admit,
    Dedup,
    Limits,
    RateLimited,
    dedup_decide,
    rate_decide,
    window_end,
)

LIMITS = Limits(per_second=10, per_minute=100, per_hour=1000)


def test_first_use_of_a_key_is_new_and_stored_with_its_expiry() -> None:
    outcome, entry = dedup_decide(None, "r1", now=1000.0, ttl=60)
    assert outcome is Dedup.NEW
    assert entry == {"request_id": "r1", "expires": 1060.0}


def test_same_key_other_request_is_a_duplicate_until_expiry() -> None:
    entry = {"request_id": "r1", "expires": 1060.0}
    assert dedup_decide(entry, "r2", now=1059.9, ttl=60) == (Dedup.DUPLICATE, None)
    outcome, fresh = dedup_decide(entry, "r2", now=1060.0, ttl=60)
    assert outcome is Dedup.NEW
    assert fresh == {"request_id": "r2", "expires": 1120.0}


def test_the_same_request_again_is_a_replay() -> None:
    entry = {"request_id": "r1", "expires": 1060.0}
    assert dedup_decide(entry, "r1", now=1010.0, ttl=60) == (Dedup.REPLAY, None)


@pytest.mark.parametrize(
    ("now", "size", "end"),
    [(0.0, 1, 1.0), (59.5, 60, 60.0), (60.0, 60, 120.0), (7199.0, 3600, 7200.0)],
)
def test_window_end(now: float, size: int, end: float) -> None:
    assert window_end(now, size) == end


def test_under_every_limit_is_admitted() -> None:
    assert rate_decide({"second": 9, "minute": 99, "hour": 999}, LIMITS, 10.2) == Admit()


def test_second_limit_waits_for_the_next_second() -> None:
    decision = rate_decide({"second": 10, "minute": 50}, LIMITS, 10.25)
    assert isinstance(decision, RateLimited)
    assert decision.window == "second"
    assert decision.retry_after == pytest.approx(0.75)


def test_the_longest_exhausted_window_decides_the_wait() -> None:
    decision = rate_decide({"second": 10, "minute": 100, "hour": 5}, LIMITS, 130.0)
    assert isinstance(decision, RateLimited)
    assert decision.window == "minute"
    assert decision.retry_after == pytest.approx(50.0)


def test_hour_limit() -> None:
    decision = rate_decide({"hour": 1000}, LIMITS, 3600 * 5 + 1)
    assert isinstance(decision, RateLimited)
    assert decision.retry_after == pytest.approx(3599.0)
