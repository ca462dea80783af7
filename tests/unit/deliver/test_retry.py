from __future__ import annotations

import math
from itertools import pairwise

import pytest

from streams.deliver.retry import (
    DEFAULT_TIERS,
    Expire,
    Retry,
    RetryPolicy,
    delay_tier,
    next_attempt,
    tier_name,
    tier_topic,
    tier_topics,
)

MIN = 60
DAY = 86400
DEFAULT = RetryPolicy()
T0 = 1_700_000_000.0


def test_default_policy_is_postfix_like() -> None:
    assert (DEFAULT.first, DEFAULT.factor, DEFAULT.cap, DEFAULT.max_age) == (300, 2, 14400, 5 * DAY)


def test_the_default_ladder_doubles_from_5_minutes_and_stays_at_4_hours() -> None:
    waits = [DEFAULT.delay(attempt) / MIN for attempt in range(1, 11)]
    assert waits == [5, 10, 20, 40, 80, 160, 240, 240, 240, 240]


def test_a_message_failing_every_time_is_retried_until_exactly_5_days() -> None:
    now, attempt, tries = T0, 1, [T0]
    while True:
        decision = next_attempt(DEFAULT, attempt, first_tried_at=T0, now=now)
        if isinstance(decision, Expire):
            break
        assert decision.at > now
        now, attempt = decision.at, attempt + 1
        tries.append(now)
    offsets = [round((t - T0) / MIN) for t in tries]
    assert offsets[:8] == [0, 5, 15, 35, 75, 155, 315, 555]
    # then every 4 hours, and the step that would overshoot day 5 is pulled in to day 5 itself
    assert all(b - a == 240 for a, b in pairwise(offsets[7:-1]))
    assert offsets[-2:] == [7035, 7200]
    assert decision.age == 5 * DAY
    assert len(tries) == 36


def test_expiry_is_exactly_at_max_age() -> None:
    just_before = next_attempt(DEFAULT, 30, first_tried_at=T0, now=T0 + 5 * DAY - 1)
    assert just_before == Retry(T0 + 5 * DAY)
    assert next_attempt(DEFAULT, 31, first_tried_at=T0, now=T0 + 5 * DAY) == Expire(5 * DAY)
    assert next_attempt(DEFAULT, 31, T0, T0 + 6 * DAY) == Expire(6 * DAY)


def test_first_retry_is_first_seconds_after_the_failure() -> None:
    assert next_attempt(DEFAULT, 1, first_tried_at=T0, now=T0 + 2.5) == Retry(T0 + 302.5)


def test_custom_policy() -> None:
    policy = RetryPolicy(first=60, factor=3, cap=1000, max_age=3600, tiers=(60, 180, 540))
    assert [policy.delay(a) for a in range(1, 6)] == [60, 180, 540, 1000, 1000]
    assert next_attempt(policy, 2, first_tried_at=0.0, now=60.0) == Retry(240.0)
    assert next_attempt(policy, 5, first_tried_at=0.0, now=3000.0) == Retry(3600.0)
    assert next_attempt(policy, 6, first_tried_at=0.0, now=3600.0) == Expire(3600.0)


def test_a_factor_of_one_is_a_fixed_interval() -> None:
    policy = RetryPolicy(first=600, factor=1, cap=600)
    assert {policy.delay(a) for a in (1, 2, 50)} == {600}


def test_a_huge_attempt_number_stays_at_the_cap() -> None:
    assert DEFAULT.delay(10**6) == 14400
    assert RetryPolicy(first=1, factor=10, cap=1e300).delay(10_000) == 1e300


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        next_attempt(DEFAULT, 0, first_tried_at=T0, now=T0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"first": 0},
        {"first": -5},
        {"factor": 0.5},
        {"cap": 100},  # below first
        {"max_age": 0},
        {"first": math.nan},
        {"cap": math.inf},
        {"tiers": ()},
        {"tiers": (600, 300)},
        {"tiers": (300, 300, 600)},
        {"tiers": (0, 300)},
    ],
)
def test_invalid_policies_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="retry policy"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("delay", "tier"),
    [
        (300, ("5m", 300)),
        (600, ("10m", 600)),
        (1199, ("10m", 600)),  # never the tier that would overshoot
        (1200, ("20m", 1200)),
        (2400, ("40m", 2400)),
        (4800, ("80m", 4800)),
        (9600, ("160m", 9600)),
        (14400, ("240m", 14400)),
        (86400, ("240m", 14400)),  # longer than every tier: wait, re-check, wait again
        (30, ("5m", 300)),  # shorter than every tier: the shortest
        (0.5, ("5m", 300)),
    ],
)
def test_delay_tier_is_the_longest_not_exceeding_the_wait(
    delay: float, tier: tuple[str, int]
) -> None:
    assert delay_tier(DEFAULT, delay) == tier


def test_every_wait_of_the_default_ladder_has_its_own_tier() -> None:
    tiers = {delay_tier(DEFAULT, DEFAULT.delay(a)) for a in range(1, 9)}
    assert sorted(seconds for _, seconds in tiers) == list(DEFAULT_TIERS)


@pytest.mark.parametrize("delay", [0, -1, math.nan, math.inf])
def test_delay_tier_needs_a_positive_finite_wait(delay: float) -> None:
    with pytest.raises(ValueError, match="positive wait"):
        delay_tier(DEFAULT, delay)


def test_tier_names_and_topics() -> None:
    assert tier_name(300) == "5m"
    assert tier_name(14400) == "240m"
    assert tier_name(90) == "90s"
    assert tier_topic("postwire", "5m") == "postwire.retry.5m"
    assert tier_topics(DEFAULT, "postwire") == [
        "postwire.retry.5m",
        "postwire.retry.10m",
        "postwire.retry.20m",
        "postwire.retry.40m",
        "postwire.retry.80m",
        "postwire.retry.160m",
        "postwire.retry.240m",
    ]
    custom = RetryPolicy(first=30, cap=600, tiers=(30, 120, 600))
    assert tier_topics(custom, "t1") == ["t1.retry.30s", "t1.retry.2m", "t1.retry.10m"]
    assert delay_tier(custom, 100) == ("30s", 30)
