from __future__ import annotations

import math

import pytest

from streams.deliver.sites import site_name
from streams.deliver.throttle import (
    DEFAULT_OVERRIDES,
    DestinationLimits,
    DestinationThrottle,
    Limit,
    TokenBucket,
)
from streams.mail.pool import LocalSlots, Slot


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


async def test_connections_are_limited_per_site() -> None:
    throttle = DestinationThrottle(DestinationLimits(default=Limit(connections=2)))
    a, b = site_name(["mx.a.example"]), site_name(["mx.b.example"])
    first = await throttle.slots.open_connection(a)
    assert first is not None
    assert await throttle.slots.open_connection(a) is not None
    assert await throttle.slots.open_connection(a) is None
    assert await throttle.slots.open_connection(b) is not None
    throttle.slots.close_connection(first)
    assert throttle.connections(a) == 1
    again = await throttle.slots.open_connection(a)
    assert again is not None
    assert again.number == first.number  # the slot given back is the one taken next


async def test_a_site_takes_the_limit_its_hosts_match() -> None:
    throttle = DestinationThrottle()
    site = site_name(["alt1.gmail-smtp-in.l.google.com", "gmail-smtp-in.l.google.com"])
    opened = [await throttle.slots.open_connection(site) for _ in range(30)]
    assert sum(slot is not None for slot in opened) == 20  # google.com's 20
    assert throttle.connections(site) == 20


def test_giving_back_a_slot_never_taken_is_an_error() -> None:
    with pytest.raises(ValueError, match="no open connection"):
        DestinationThrottle().slots.close_connection(Slot("mx.a.example", 0))


def test_site_rate() -> None:
    throttle = DestinationThrottle(DestinationLimits(default=Limit(rate=10, burst=2)))
    assert throttle.pace("mx.a.example", 0.0) == 0.0
    assert throttle.pace("mx.a.example", 0.0) == 0.0
    assert throttle.pace("mx.a.example", 0.0) == pytest.approx(0.1)
    # another site has its own bucket
    assert throttle.pace("mx.b.example", 0.0) == 0.0


def test_tenant_rate_spans_sites() -> None:
    throttle = DestinationThrottle(DestinationLimits(tenant_rate=5, tenant_burst=3))
    for _ in range(3):
        assert throttle.take_tenant("t1", 0.0) == 0.0
    assert throttle.take_tenant("t1", 0.0) == pytest.approx(0.2)
    assert throttle.take_tenant("t2", 0.0) == 0.0


def test_a_tenant_token_given_back_can_be_taken_again() -> None:
    throttle = DestinationThrottle(DestinationLimits(tenant_rate=1, tenant_burst=1))
    assert throttle.take_tenant("t1", 0.0) == 0.0
    assert throttle.take_tenant("t1", 0.0) == pytest.approx(1.0)
    throttle.give_back_tenant("t1")
    assert throttle.take_tenant("t1", 0.0) == 0.0


class _Shared(LocalSlots):
    """The in-process slots, posing as a shared budget: ``held`` is what this process has."""

    shared = True


async def test_a_shared_budget_gives_the_rate_of_the_slots_held() -> None:
    limit = Limit(connections=4, rate=40.0, burst=8)
    limits = DestinationLimits(default=limit, overrides={})
    slots = _Shared(lambda _site: 4)
    throttle = DestinationThrottle(limits, slots)
    # no slot yet: one slot's share (its next message takes one), 10/s and a burst of 2
    assert [throttle.pace("s", 0.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]
    for _ in range(2):
        assert await slots.open_connection("s") is not None
    # two of four slots: half the rate, so the next token comes in 1/20 s
    assert throttle.pace("s", 0.0) == pytest.approx(0.05)
    assert throttle.pace("s", 1.0) == 0.0


def test_an_unshared_budget_keeps_the_whole_rate() -> None:
    limits = DestinationLimits(default=Limit(connections=4, rate=40.0, burst=8), overrides={})
    throttle = DestinationThrottle(limits)
    assert sum(throttle.pace("s", 0.0) == 0.0 for _ in range(10)) == 8


def test_messages_per_connection_can_be_set_per_site() -> None:
    narrow = Limit(connections=2, messages_per_connection=5)
    limits = DestinationLimits(overrides={"slow.example": narrow})
    throttle = DestinationThrottle(limits)
    assert throttle.limit(site_name(["mx1.slow.example", "mx2.slow.example"])) is narrow
    assert throttle.limit("mx.other.example").messages_per_connection is None
    with pytest.raises(ValueError, match="messages_per_connection"):
        Limit(messages_per_connection=0)


def test_prune_forgets_only_idle_buckets() -> None:
    limits = DestinationLimits(default=Limit(rate=10, burst=10), tenant_rate=10, tenant_burst=10)
    throttle = DestinationThrottle(limits)
    throttle.take_tenant("t1", 0.0)
    throttle.pace("a.example", 0.0)
    assert throttle.prune(0.05) == 0
    assert throttle.prune(10.0) == 2
    # forgotten buckets come back full
    assert all(throttle.pace("a.example", 10.0) == 0.0 for _ in range(10))
    assert all(throttle.take_tenant("t1", 10.0) == 0.0 for _ in range(10))


def test_waits_can_be_read_without_taking() -> None:
    limits = DestinationLimits(
        default=Limit(rate=10, burst=1), overrides={}, tenant_rate=2, tenant_burst=1
    )
    throttle = DestinationThrottle(limits)
    assert throttle.site_wait("s", 0.0) == 0.0
    assert throttle.tenant_wait("t1", 0.0) == 0.0
    throttle.pace("s", 0.0)
    throttle.take_tenant("t1", 0.0)
    assert throttle.site_wait("s", 0.0) == pytest.approx(0.1)
    assert throttle.site_wait("s", 0.0) == pytest.approx(0.1)  # reading took nothing
    assert throttle.tenant_wait("t1", 0.0) == pytest.approx(0.5)


def test_shaping_can_cut_a_site_rate_and_restore_it() -> None:
    limits = DestinationLimits(default=Limit(rate=10, burst=4), overrides={})
    throttle = DestinationThrottle(limits)
    throttle.scale("s", 0.5, 0.0)
    assert throttle.factor("s") == 0.5
    # half the rate and half the burst: 2 at once, then one every 200 ms
    assert [throttle.pace("s", 0.0) == 0.0 for _ in range(3)] == [True, True, False]
    assert throttle.site_wait("s", 0.0) == pytest.approx(0.2)
    throttle.scale("s", 1.0, 0.0)
    assert throttle.factor("s") == 1.0
    assert throttle.site_wait("s", 0.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="rate factor"):
        throttle.scale("s", 0.0, 0.0)
