from __future__ import annotations

import math

import pytest

from streams.deliver.breaker import Breaker, BreakerPolicy, BreakerState

CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def tripped(at: float = 100.0, policy: BreakerPolicy | None = None) -> Breaker:
    breaker = Breaker(policy)
    for i in range(breaker.policy.threshold):
        breaker.record_failure(at - breaker.policy.threshold + 1 + i)
    assert breaker.state(at) is OPEN
    return breaker


def test_a_new_breaker_is_closed_and_allows() -> None:
    breaker = Breaker()
    assert breaker.state(0.0) is CLOSED
    assert breaker.allow(0.0)
    assert breaker.retry_after(0.0) == 0.0


def test_defaults() -> None:
    policy = Breaker().policy
    assert (policy.threshold, policy.cool_down, policy.max_cool_down) == (5, 60.0, 900.0)


def test_closed_to_open_after_five_consecutive_failures() -> None:
    breaker = Breaker()
    for t in range(4):
        breaker.record_failure(float(t))
        assert breaker.state(float(t)) is CLOSED
        assert breaker.allow(float(t))
    breaker.record_failure(4.0)
    assert breaker.state(4.0) is OPEN
    assert not breaker.allow(4.0)
    assert breaker.retry_after(4.0) == 60.0
    assert breaker.retry_after(34.0) == 30.0


def test_a_success_in_between_restarts_the_count() -> None:
    breaker = Breaker()
    for t in range(4):
        breaker.record_failure(float(t))
    breaker.record_success(4.0)
    for t in range(5, 9):
        breaker.record_failure(float(t))
    assert breaker.state(9.0) is CLOSED
    breaker.record_failure(9.0)
    assert breaker.state(9.0) is OPEN


def test_failures_spread_wider_than_the_window_do_not_trip() -> None:
    breaker = Breaker(BreakerPolicy(threshold=3, window=60))
    for t in (0.0, 40.0, 80.0, 120.0, 160.0):
        breaker.record_failure(t)
        assert breaker.state(t) is CLOSED
    # three within 60 s do
    breaker.record_failure(170.0)
    breaker.record_failure(175.0)
    assert breaker.state(175.0) is OPEN


def test_open_to_half_open_when_the_cool_down_is_over() -> None:
    breaker = tripped(at=100.0)
    assert breaker.state(159.9) is OPEN
    assert not breaker.allow(159.9)
    assert breaker.state(160.0) is HALF
    assert breaker.retry_after(160.0) == 0.0


def test_half_open_allows_exactly_one_probe() -> None:
    breaker = tripped(at=100.0)
    assert breaker.allow(160.0)
    assert not breaker.allow(160.5)
    assert not breaker.allow(200.0)
    assert breaker.state(200.0) is HALF
    assert breaker.retry_after(200.0) == pytest.approx(260.0)


def test_a_lost_probe_is_replaced_after_the_probe_timeout() -> None:
    breaker = tripped(at=100.0, policy=BreakerPolicy(probe_timeout=30))
    assert breaker.allow(160.0)
    assert not breaker.allow(189.0)
    assert breaker.allow(190.0)
    assert not breaker.allow(191.0)


def test_half_open_to_closed_on_success() -> None:
    breaker = tripped(at=100.0)
    assert breaker.allow(160.0)
    breaker.record_success(161.0)
    assert breaker.state(161.0) is CLOSED
    assert breaker.allow(161.0)
    assert breaker.allow(161.0)
    assert breaker.cool_down == 60.0


def test_half_open_to_open_on_failure_with_a_doubled_cool_down() -> None:
    breaker = tripped(at=100.0)
    assert breaker.allow(160.0)
    breaker.record_failure(161.0)
    assert breaker.state(161.0) is OPEN
    assert breaker.cool_down == 120.0
    assert breaker.retry_after(161.0) == 120.0
    assert breaker.state(281.0) is HALF


def test_repeated_trips_double_up_to_15_minutes() -> None:
    breaker = tripped(at=0.0)
    now, seen = 0.0, []
    for _ in range(7):
        now += breaker.retry_after(now)
        assert breaker.allow(now)
        breaker.record_failure(now)
        seen.append(breaker.cool_down)
    assert seen == [120.0, 240.0, 480.0, 900.0, 900.0, 900.0, 900.0]


def test_closing_resets_the_cool_down_for_the_next_trip() -> None:
    breaker = tripped(at=0.0)
    breaker.allow(60.0)
    breaker.record_failure(60.0)  # 120 s now
    breaker.allow(180.0)
    breaker.record_success(180.0)
    for t in range(5):
        breaker.record_failure(200.0 + t)
    assert breaker.state(204.0) is OPEN
    assert breaker.retry_after(204.0) == 60.0


def test_late_failures_while_open_do_not_extend_it() -> None:
    breaker = tripped(at=100.0)
    for t in (101.0, 130.0, 159.0):
        breaker.record_failure(t)
    assert breaker.cool_down == 60.0
    assert breaker.state(160.0) is HALF


def test_a_late_success_while_open_closes() -> None:
    breaker = tripped(at=100.0)
    breaker.record_success(110.0)
    assert breaker.state(110.0) is CLOSED
    assert breaker.allow(110.0)


def test_after_closing_it_takes_a_full_run_of_failures_again() -> None:
    breaker = tripped(at=100.0)
    breaker.allow(160.0)
    breaker.record_success(160.0)
    for t in range(4):
        breaker.record_failure(161.0 + t)
    assert breaker.state(165.0) is CLOSED


def test_threshold_of_one_trips_on_the_first_failure() -> None:
    breaker = Breaker(BreakerPolicy(threshold=1))
    breaker.record_failure(5.0)
    assert breaker.state(5.0) is OPEN


@pytest.mark.parametrize(
    "kwargs",
    [
        {"threshold": 0},
        {"window": 0},
        {"cool_down": -1},
        {"probe_timeout": math.nan},
        {"cool_down": 600, "max_cool_down": 300},
    ],
)
def test_invalid_policies_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="breaker"):
        BreakerPolicy(**kwargs)  # type: ignore[arg-type]
