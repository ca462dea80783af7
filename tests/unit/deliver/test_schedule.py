"""The fair scheduler's core: turns round the tenants of a site, bounded by its connections and
rate, long waits handed back for the delay topics, empty queues forgotten."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from streams.deliver.schedule import Scheduler
from streams.deliver.throttle import TokenBucket


@dataclass
class Sites:
    """Connection limits and token buckets per site and per tenant, as the throttle has them."""

    connections_per_site: int = 10
    rate: float = 1000.0
    burst: int = 1000
    tenant_rate: float = 10_000.0
    tenant_burst: int = 1000
    suspended_until: dict[str, float] = field(default_factory=dict)
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    tenants: dict[str, TokenBucket] = field(default_factory=dict)
    taken: list[tuple[str, str]] = field(default_factory=list)

    def _site(self, site: str) -> TokenBucket:
        return self.buckets.setdefault(site, TokenBucket(self.rate, self.burst))

    def _tenant(self, tenant: str) -> TokenBucket:
        return self.tenants.setdefault(tenant, TokenBucket(self.tenant_rate, self.tenant_burst))

    def connections(self, site: str) -> int:
        return self.connections_per_site

    def site_wait(self, site: str, now: float) -> float:
        until = self.suspended_until.get(site, 0.0)
        if until > now:
            return until - now
        return self._site(site).wait_time(now)

    def tenant_wait(self, tenant: str, now: float) -> float:
        return self._tenant(tenant).wait_time(now)

    def take(self, tenant: str, site: str, now: float) -> None:
        assert self._site(site).take(now) == 0
        assert self._tenant(tenant).take(now) == 0
        self.taken.append((tenant, site))


def _finish(scheduler: Scheduler[str], turns: list[object]) -> None:
    for turn in turns:
        scheduler.done(turn.site)  # type: ignore[attr-defined]


def test_a_small_tenant_is_not_stuck_behind_a_backlog() -> None:
    scheduler: Scheduler[str] = Scheduler(concurrency=4, max_wait=5.0)
    sites = Sites(connections_per_site=2)
    for i in range(1000):
        scheduler.push("big.example", "a", f"a{i}")
    for i in range(3):
        scheduler.push("big.example", "b", f"b{i}")
    order: list[str] = []
    now = 0.0
    while len(scheduler):
        grants = scheduler.grant(now, sites)
        order.extend(t.item for t in grants.turns)
        _finish(scheduler, grants.turns)  # type: ignore[arg-type]
        now += 0.01
    assert order[:6] == ["a0", "b0", "a1", "b1", "a2", "b2"]
    assert order[6:] == [f"a{i}" for i in range(3, 1000)]


def test_turns_round_robin_over_three_tenants_in_their_own_order() -> None:
    scheduler: Scheduler[str] = Scheduler(concurrency=100, max_wait=5.0)
    for tenant, n in (("a", 3), ("b", 2), ("c", 1)):
        for i in range(n):
            scheduler.push("s", tenant, f"{tenant}{i}")
    grants = scheduler.grant(0.0, Sites(connections_per_site=100))
    assert [t.item for t in grants.turns] == ["a0", "b0", "c0", "a1", "b1", "a2"]
    assert [t.tenant for t in grants.turns] == ["a", "b", "c", "a", "b", "a"]


def test_turns_are_bounded_by_the_sites_connections_and_the_lanes_concurrency() -> None:
    scheduler: Scheduler[str] = Scheduler(concurrency=5, max_wait=5.0)
    for i in range(10):
        scheduler.push("one.example", "a", f"x{i}")
        scheduler.push("two.example", "a", f"y{i}")
    sites = Sites(connections_per_site=3)
    first = scheduler.grant(0.0, sites)
    per_site = [t.site for t in first.turns]
    assert per_site.count("one.example") == 3
    assert per_site.count("two.example") == 2  # the lane's bound of 5 in flight
    assert first.wake_at is None  # nothing to do until a send finishes
    assert scheduler.grant(0.0, sites).turns == []
    scheduler.done("one.example")
    again = scheduler.grant(0.0, sites)
    assert [t.item for t in again.turns] == ["x3"]
    assert scheduler.in_flight == 5


def test_turns_wait_for_the_sites_rate_and_say_when_to_look_again() -> None:
    scheduler: Scheduler[str] = Scheduler(concurrency=100, max_wait=5.0)
    for i in range(10):
        scheduler.push("slow.example", "a", f"m{i}")
    sites = Sites(connections_per_site=100, rate=2.0, burst=2)
    grants = scheduler.grant(0.0, sites)
    assert len(grants.turns) == 2  # the burst
    assert grants.wake_at == pytest.approx(0.5)
    assert grants.postponed == []
    assert scheduler.grant(0.2, sites).turns == []  # not yet
    later = scheduler.grant(0.5, sites)
    assert [t.item for t in later.turns] == ["m2"]
    assert len(sites.taken) == 3


def test_a_site_throttled_past_max_wait_hands_its_queue_back() -> None:
    scheduler: Scheduler[str] = Scheduler(concurrency=100, max_wait=5.0)
    sites = Sites(suspended_until={"down.example": 60.0})
    for i in range(3):
        scheduler.push("down.example", "a", f"a{i}")
    scheduler.push("down.example", "b", "b0")
    scheduler.push("up.example", "a", "u0")
    grants = scheduler.grant(0.0, sites)
    assert [t.item for t in grants.turns] == ["u0"]
    assert sorted(grants.postponed) == [("a0", 60.0), ("a1", 60.0), ("a2", 60.0), ("b0", 60.0)]
    assert len(scheduler) == 0


def test_a_short_suspension_is_waited_out_in_memory() -> None:
    scheduler: Scheduler[str] = Scheduler(concurrency=100, max_wait=5.0)
    sites = Sites(suspended_until={"s": 2.0})
    scheduler.push("s", "a", "a0")
    grants = scheduler.grant(0.0, sites)
    assert grants.turns == []
    assert grants.postponed == []
    assert grants.wake_at == pytest.approx(2.0)
    assert [t.item for t in scheduler.grant(2.0, sites).turns] == ["a0"]


def test_a_tenant_over_its_own_rate_yields_its_turns_to_the_others() -> None:
    scheduler: Scheduler[str] = Scheduler(concurrency=100, max_wait=5.0)
    sites = Sites(tenant_rate=1.0, tenant_burst=1)  # one message a second per tenant, burst 1
    for i in range(3):
        scheduler.push("s", "a", f"a{i}")
    scheduler.push("s", "b", "b0")
    grants = scheduler.grant(0.0, sites)
    assert [t.item for t in grants.turns] == ["a0", "b0"]
    assert grants.wake_at == pytest.approx(1.0)  # a's next token
    assert [t.item for t in scheduler.grant(1.0, sites).turns] == ["a1"]


def test_only_the_tenant_throttled_past_max_wait_is_postponed() -> None:
    scheduler: Scheduler[str] = Scheduler(concurrency=100, max_wait=5.0)
    sites = Sites(tenant_rate=0.1, tenant_burst=1)  # a token every 10 s
    sites.tenant_wait("a", 0.0)
    sites._tenant("a").take(0.0)  # a has just spent its only token
    scheduler.push("s", "a", "a0")
    scheduler.push("s", "a", "a1")
    scheduler.push("s", "b", "b0")
    grants = scheduler.grant(0.0, sites)
    assert [t.item for t in grants.turns] == ["b0"]
    assert [item for item, _ in grants.postponed] == ["a0", "a1"]
    assert grants.postponed[0][1] == pytest.approx(10.0)


def test_empty_queues_and_idle_sites_are_forgotten() -> None:
    scheduler: Scheduler[str] = Scheduler(concurrency=10, max_wait=5.0)
    sites = Sites()
    scheduler.push("s", "a", "a0")
    scheduler.push("t", "b", "b0")
    grants = scheduler.grant(0.0, sites)
    assert scheduler.queued("s", "a") == 0
    assert scheduler.sites() == 2  # their sends are still in flight
    _finish(scheduler, grants.turns)  # type: ignore[arg-type]
    assert scheduler.sites() == 0
    assert scheduler.in_flight == 0
    with pytest.raises(ValueError, match="no send in flight"):
        scheduler.done("s")


def test_drain_takes_every_queued_task_out_and_keeps_the_sends_in_flight() -> None:
    scheduler: Scheduler[str] = Scheduler(concurrency=1, max_wait=5.0)
    for i in range(3):
        scheduler.push("s", "a", f"a{i}")
    [turn] = scheduler.grant(0.0, Sites()).turns
    assert sorted(scheduler.drain()) == ["a1", "a2"]
    assert len(scheduler) == 0
    assert scheduler.in_flight == 1
    scheduler.done(turn.site)
    assert scheduler.sites() == 0


def test_a_finished_send_frees_its_connection_and_its_lane_slot_only_once_settled() -> None:
    scheduler: Scheduler[str] = Scheduler(concurrency=2, max_wait=5.0)
    sites = Sites(connections_per_site=1)
    for i in range(3):
        scheduler.push("s", "a", f"s{i}")
        scheduler.push("t", "a", f"t{i}")
    first = scheduler.grant(0.0, sites)
    assert [t.item for t in first.turns] == ["s0", "t0"]
    scheduler.sent("s")  # s0's connection is free, its outcome not yet safe
    assert scheduler.grant(0.0, sites).turns == []  # the lane's two slots are still taken
    scheduler.settled()
    assert [t.item for t in scheduler.grant(0.0, sites).turns] == ["s1"]
    with pytest.raises(ValueError, match="settled"):
        scheduler.settled(3)
