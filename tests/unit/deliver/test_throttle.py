from __future__ import annotations

import math

import pytest

from streams.deliver.throttle import (
    DEFAULT_OVERRIDES,
    DestinationLimits,
    DestinationThrottle,
    Limit,
    TokenBucket,
)


def test_a_bucket_starts_full_and_allows_its_burst_at_once() -> None:
    bucket = TokenBucket(rate=10, burst=3)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.1)


def test_a_refused_take_takes_nothing() -> None:
    bucket = TokenBucket(rate=10, burst=3)
    for _ in range(3):
        bucket.take(0.0)
    assert bucket.take(0.05) == pytest.approx(0.05)
    assert bucket.take(0.05) == pytest.approx(0.05)
    assert bucket.tokens(0.05) == pytest.approx(0.5)


def test_waiting_exactly_the_answer_is_enough() -> None:
    bucket = TokenBucket(rate=3, burst=1)
    now = 0.0
    assert bucket.take(now) == 0.0
    for _ in range(100):
        wait = bucket.take(now)
        assert wait > 0
        now += wait
        assert bucket.take(now) == 0.0


def test_the_rate_holds_over_time() -> None:
    bucket = TokenBucket(rate=50, burst=5)
    taken, now = 0, 0.0
    while now < 10.0:
        wait = bucket.take(now)
        if wait == 0.0:
            taken += 1
        else:
            now += wait
    # 10 s at 50/s plus the initial burst
    assert 500 <= taken <= 506


def test_refill_stops_at_the_burst() -> None:
    bucket = TokenBucket(rate=100, burst=4)
    bucket.take(0.0)
    assert bucket.tokens(3600.0) == 4


def test_several_tokens_at_once() -> None:
    bucket = TokenBucket(rate=2, burst=5)
    assert bucket.take(0.0, n=4) == 0.0
    assert bucket.take(0.0, n=3) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="never fit"):
        bucket.take(0.0, n=6)


def test_a_clock_stepping_back_does_not_refill_or_drain() -> None:
    bucket = TokenBucket(rate=1, burst=2)
    bucket.take(10.0)
    bucket.take(10.0)
    assert bucket.take(5.0) == pytest.approx(1.0)
    assert bucket.take(11.0) == 0.0


@pytest.mark.parametrize(("rate", "burst"), [(0, 1), (-1, 1), (math.inf, 1), (1, 0.5), (1, 0)])
def test_invalid_buckets_are_rejected(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="token bucket"):
        TokenBucket(rate, burst)


def test_default_limits() -> None:
    limits = DestinationLimits()
    assert limits.default == Limit(connections=10, rate=50.0, burst=10)
    assert limits.for_destination("example.org") is limits.default
    assert limits.overrides == DEFAULT_OVERRIDES


@pytest.mark.parametrize(
    ("destination", "key"),
    [
        ("gmail.com", "gmail.com"),
        ("GMAIL.COM.", "gmail.com"),
        ("gmail-smtp-in.l.google.com", "google.com"),
        ("aspmx.l.google.com", "google.com"),
        ("example-com.mail.protection.outlook.com", "outlook.com"),
        ("hotmail.com", "hotmail.com"),
        ("mta5.am0.yahoodns.net", "yahoodns.net"),
        ("notgmail.com", None),
        ("gmail.com.evil.example", None),
        ("com", None),
    ],
)
def test_overrides_match_by_suffix_on_label_boundaries(destination: str, key: str | None) -> None:
    assert DestinationLimits().match(destination) == key


def test_the_big_providers_get_their_own_limits() -> None:
    limits = DestinationLimits()
    assert limits.for_destination("gmail.com").connections > limits.default.connections
    assert limits.for_destination("outlook.com").connections < limits.default.connections
    assert limits.for_destination("yahoo.com").rate < limits.default.rate


def test_the_longest_suffix_wins_and_keys_are_normalised() -> None:
    narrow, wide = Limit(connections=1), Limit(connections=50)
    limits = DestinationLimits(overrides={"Example.COM.": wide, "slow.example.com": narrow})
    assert limits.for_destination("mx.slow.example.com") is narrow
    assert limits.for_destination("fast.example.com") is wide
    assert limits.match("MX.Example.com") == "example.com"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"overrides": {"": Limit()}},
        {"overrides": {"a.com": Limit(), "A.com.": Limit()}},
        {"tenant_rate": 0},
        {"tenant_burst": 0},
    ],
)
def test_invalid_destination_limits_are_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="destination limits"):
        DestinationLimits(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs", [{"connections": 0}, {"rate": 0.0}, {"rate": math.nan}, {"burst": 0}]
)
def test_invalid_limits_are_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="limit"):
        Limit(**kwargs)  # type: ignore[arg-type]


def test_connections_are_limited_per_destination() -> None:
    throttle = DestinationThrottle(DestinationLimits(default=Limit(connections=2)))
    assert throttle.open_connection("mx.a.example")
    assert throttle.open_connection("mx.a.example")
    assert not throttle.open_connection("mx.a.example")
    assert throttle.open_connection("mx.b.example")
    throttle.close_connection("mx.a.example")
    assert throttle.connections("mx.a.example") == 1
    assert throttle.open_connection("mx.a.example")


def test_hosts_under_one_override_share_its_connections() -> None:
    throttle = DestinationThrottle()
    hosts = ["gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com"]
    opened = sum(throttle.open_connection(hosts[i % 2]) for i in range(30))
    assert opened == 20
    assert throttle.connections("aspmx.l.google.com") == 20


def test_closing_a_connection_never_opened_is_an_error() -> None:
    with pytest.raises(ValueError, match="no open connection"):
        DestinationThrottle().close_connection("mx.a.example")


def test_destination_rate() -> None:
    throttle = DestinationThrottle(DestinationLimits(default=Limit(rate=10, burst=2)))
    assert throttle.take("t1", "a.example", 0.0) == 0.0
    assert throttle.take("t1", "a.example", 0.0) == 0.0
    assert throttle.take("t1", "a.example", 0.0) == pytest.approx(0.1)
    # another destination has its own bucket
    assert throttle.take("t1", "b.example", 0.0) == 0.0


def test_tenant_rate_spans_destinations() -> None:
    throttle = DestinationThrottle(DestinationLimits(tenant_rate=5, tenant_burst=3))
    for domain in ("a.example", "b.example", "c.example"):
        assert throttle.take("t1", domain, 0.0) == 0.0
    assert throttle.take("t1", "d.example", 0.0) == pytest.approx(0.2)
    assert throttle.take("t2", "d.example", 0.0) == 0.0


def test_a_refusal_by_one_bucket_spends_nothing_from_the_other() -> None:
    limits = DestinationLimits(default=Limit(rate=1, burst=1), tenant_rate=1, tenant_burst=2)
    throttle = DestinationThrottle(limits)
    assert throttle.take("t1", "a.example", 0.0) == 0.0
    # a.example is empty; t1 still has a token, and must keep it
    assert throttle.take("t1", "a.example", 0.0) == pytest.approx(1.0)
    assert throttle.take("t1", "b.example", 0.0) == 0.0
    # now t1 is empty: c.example must not lose its token to t1's refusal
    assert throttle.take("t1", "c.example", 0.0) == pytest.approx(1.0)
    assert throttle.take("t2", "c.example", 0.0) == 0.0


def test_prune_forgets_only_idle_buckets() -> None:
    limits = DestinationLimits(default=Limit(rate=10, burst=10), tenant_rate=10, tenant_burst=10)
    throttle = DestinationThrottle(limits)
    throttle.take("t1", "a.example", 0.0)
    assert throttle.prune(0.05) == 0
    assert throttle.prune(10.0) == 2
    # forgotten buckets come back full
    assert all(throttle.take("t1", "a.example", 10.0) == 0.0 for _ in range(10))
