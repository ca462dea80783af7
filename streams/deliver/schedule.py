"""Who sends next at a site: queues per (site, tenant), round-robin across the tenants with work
at a site (pure: time a parameter, the limits behind ``Capacity``).

A Kafka partition is FIFO and holds every tenant's mail to its domains, so one tenant's campaign
would stand in front of everyone else's mail to the same provider. The lane reads ahead past such
a backlog and hands each task here; a task gets a send turn only when its site has a free
connection and a token of rate, and the turns go round the site's tenants one message each (as
KumoMTA queues by tenant, campaign and site; every message costs one turn, so deficit
round-robin is plain round-robin). Tenant B's 20 messages behind tenant A's 10,000 wait for
about 20 of A's, not 10,000.

A task waits here in memory for its turn. Only when its own queue cannot move for longer than
``max_wait`` (the site's rate or suspension, or its tenant's rate, says so) is it handed back
as postponed, for the delay topics; the depth of a queue is no reason, since the lane's
read-ahead bound already caps how much waits in memory.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

__all__ = ["Capacity", "Grants", "Scheduler", "Turn"]

T = TypeVar("T")


class Capacity(Protocol):
    """What the sites allow (the delivery stage's ``DestinationThrottle``, through an adapter):
    waits are seconds from ``now``, 0 when the send may go now."""

    def connections(self, site: str) -> int:
        """Sends the site may have in flight at once (its connection limit)."""
        ...

    def site_wait(self, site: str, now: float) -> float:
        """Until the site may take one more message (its rate, or a suspension)."""
        ...

    def tenant_wait(self, tenant: str, now: float) -> float:
        """Until the tenant may send one more message (its own rate, over every site)."""
        ...

    def take(self, tenant: str, site: str, now: float) -> None:
        """Spend one message of the tenant's and the site's rate (both waits were 0)."""
        ...


@dataclass(frozen=True, slots=True)
class Turn(Generic[T]):
    site: str
    tenant: str
    item: T


@dataclass
class Grants(Generic[T]):
    """What one call of ``grant`` decided: the sends to start now, the tasks to park (each with
    the epoch second it may go), and when calling again is worth it (None: only after a push or
    a ``done``)."""

    turns: list[Turn[T]] = field(default_factory=list)
    postponed: list[tuple[T, float]] = field(default_factory=list)
    wake_at: float | None = None


class _Site(Generic[T]):
    __slots__ = ("in_flight", "queues", "ready_at", "ring")

    def __init__(self) -> None:
        self.queues: dict[str, deque[T]] = {}
        self.ring: deque[str] = deque()  # tenants with work here, the next turn's first
        self.in_flight = 0
        self.ready_at = 0.0  # not worth looking before (its rate said so)


class Scheduler(Generic[T]):
    """At most ``concurrency`` sends granted and not settled over every site; per site at most
    its connection limit in flight. Call ``push`` for each task to send, ``grant`` to learn which
    go now, ``sent`` when a granted send finished (its connection is free again) and
    ``settled`` once its outcome is safe (the lane: acknowledged by Kafka)."""

    def __init__(self, concurrency: int, max_wait: float) -> None:
        if concurrency < 1:
            raise ValueError(f"scheduler: concurrency must be at least 1, not {concurrency}")
        self.concurrency = concurrency
        self.max_wait = max_wait
        self.in_flight = 0
        self._sites: dict[str, _Site[T]] = {}
        self._queued = 0

    def __len__(self) -> int:
        """Tasks waiting for a turn."""
        return self._queued

    def sites(self) -> int:
        """Sites with work queued or in flight (an idle one is forgotten)."""
        return len(self._sites)

    def queued(self, site: str, tenant: str) -> int:
        found = self._sites.get(site)
        queue = found.queues.get(tenant) if found is not None else None
        return len(queue) if queue is not None else 0

    def push(self, site: str, tenant: str, item: T) -> None:
        state = self._sites.get(site)
        if state is None:
            state = self._sites[site] = _Site()
        queue = state.queues.get(tenant)
        if queue is None:
            queue = state.queues[tenant] = deque()
            state.ring.append(tenant)
        queue.append(item)
        self._queued += 1

    def sent(self, site: str) -> None:
        """A send granted at ``site`` finished: its connection may carry the next one. It still
        counts against ``concurrency`` until ``settled``."""
        state = self._sites.get(site)
        if state is None or state.in_flight <= 0:
            # a turn that was never granted: a bookkeeping bug that would hand out extra turns
            raise ValueError(f"scheduler: no send in flight at {site!r}")
        state.in_flight -= 1
        if state.in_flight == 0 and not state.queues:
            del self._sites[site]

    def settled(self, n: int = 1) -> None:
        """``n`` finished sends are settled (what they wrote is acknowledged): a crash can no
        longer repeat them, so they stop counting against ``concurrency``."""
        if n > self.in_flight:
            raise ValueError(f"scheduler: {n} sends settled, {self.in_flight} were granted")
        self.in_flight -= n

    def done(self, site: str) -> None:
        """A send granted at ``site`` finished and is settled."""
        self.sent(site)
        self.settled()

    def drain(self) -> Iterator[T]:
        """Every queued task, taken out (the lane gives its partitions up); turns granted stay
        counted until they are ``sent`` and ``settled``."""
        for site, state in list(self._sites.items()):
            for queue in state.queues.values():
                yield from queue
            state.queues.clear()
            state.ring.clear()
            if state.in_flight == 0:
                del self._sites[site]
        self._queued = 0

    def grant(self, now: float, capacity: Capacity) -> Grants[T]:
        grants: Grants[T] = Grants()
        wake = math.inf
        for site in list(self._sites):
            if self.in_flight >= self.concurrency:
                break
            state = self._sites[site]
            if state.queues:
                wake = min(wake, self._grant_site(site, state, now, capacity, grants))
            if state.in_flight == 0 and not state.queues:
                del self._sites[site]
        # a site that still has turns to give only waits for a send to finish: done() wakes it
        grants.wake_at = None if wake == math.inf else wake
        return grants

    def _grant_site(
        self, site: str, state: _Site[T], now: float, capacity: Capacity, grants: Grants[T]
    ) -> float:
        """Grant ``site``'s turns; return when it is worth looking at it again (inf: after a
        ``done`` or a push)."""
        if state.ready_at > now:
            return state.ready_at
        limit = capacity.connections(site)
        # each tenant is asked at most once per round it cannot send in
        blocked: dict[str, float] = {}
        while state.ring and state.in_flight < limit and self.in_flight < self.concurrency:
            wait = capacity.site_wait(site, now)
            if wait > 0:
                if wait > self.max_wait:
                    self._postpone_site(state, now + wait, grants)
                    return math.inf
                state.ready_at = now + wait
                return state.ready_at
            tenant = state.ring[0]
            tenant_wait = capacity.tenant_wait(tenant, now)
            if tenant_wait > 0:
                state.ring.rotate(-1)
                if tenant_wait > self.max_wait:
                    self._postpone_queue(state, tenant, now + tenant_wait, grants)
                else:
                    blocked[tenant] = now + tenant_wait
                if len(blocked) >= len(state.ring):
                    break  # every tenant left here waits for its own rate
                continue
            capacity.take(tenant, site, now)
            queue = state.queues[tenant]
            grants.turns.append(Turn(site, tenant, queue.popleft()))
            self._queued -= 1
            state.in_flight += 1
            self.in_flight += 1
            state.ring.popleft()
            if queue:
                state.ring.append(tenant)  # round-robin: to the back of the ring
            else:
                del state.queues[tenant]  # an empty queue is forgotten
            blocked.pop(tenant, None)
        if blocked and len(blocked) >= len(state.ring) and state.ring:
            return min(blocked.values())
        return math.inf

    def _postpone_queue(
        self, state: _Site[T], tenant: str, until: float, grants: Grants[T]
    ) -> None:
        queue = state.queues.pop(tenant)
        state.ring.remove(tenant)
        self._queued -= len(queue)
        grants.postponed.extend((item, until) for item in queue)

    def _postpone_site(self, state: _Site[T], until: float, grants: Grants[T]) -> None:
        for tenant in list(state.ring):
            self._postpone_queue(state, tenant, until, grants)
