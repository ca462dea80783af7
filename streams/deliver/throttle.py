"""How fast and how wide delivery may go: per destination site and per tenant (pure, time a
parameter).

Receivers judge a sender by its connection count and message rate, and the big mailbox providers
defer (421/4.7.0) anyone who pushes too hard, so each destination site (``sites.py``: the set of
MX hosts a domain's mail goes to) gets a connection limit and a token bucket; a tenant's bucket
caps its total across sites so one tenant's campaign cannot take every slot. Limits are looked up
by name suffix of the site's hosts, so the ``google.com`` entry covers the ``aspmx.l.google.com``
hosts of every domain Google hosts.

The connections are slots of a ``SiteSlots`` budget: in process, or shared by every worker through
PostgreSQL (``streams/db/slots.py``). A shared budget splits the site's rate too: this process may
send at the share of the slots it holds (``sites.apportion``), so the limits hold at the sum
without a round trip per message.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from streams.deliver.sites import apportion, site_hosts
from streams.mail.pool import ConnectionBudget, LocalSlots

__all__ = [
    "DEFAULT_OVERRIDES",
    "DestinationLimits",
    "DestinationThrottle",
    "Limit",
    "SiteSlots",
    "TokenBucket",
]

# a hair of slack so that waiting exactly the time ``take`` asked for is always enough, despite
# the float arithmetic of the refill
_EPSILON = 1e-9


class TokenBucket:
    """``rate`` tokens a second, holding at most ``burst``; it starts full."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"token bucket: rate must be a positive number, not {rate!r}")
        if not (math.isfinite(burst) and burst >= 1):
            raise ValueError(f"token bucket: burst must be at least 1, not {burst!r}")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        # a clock that steps back refills nothing rather than draining the bucket
        if self._last is not None and now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now

    def wait_time(self, now: float, n: float = 1) -> float:
        """Seconds until ``n`` tokens are there, without taking them; 0 if they are now."""
        if n > self.burst:
            raise ValueError(f"token bucket: {n} tokens can never fit a burst of {self.burst}")
        self._refill(now)
        missing = n - self._tokens
        return 0.0 if missing <= _EPSILON else missing / self.rate

    def take(self, now: float, n: float = 1) -> float:
        """Take ``n`` tokens and return 0, or take nothing and return the seconds to wait."""
        wait = self.wait_time(now, n)
        if wait == 0.0:
            self._tokens = max(self._tokens - n, 0.0)
        return wait

    def tokens(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def give_back(self, n: float = 1) -> None:
        """Return tokens taken for something that did not happen."""
        self._tokens = min(self.burst, self._tokens + n)

    def resize(self, rate: float, burst: float, now: float) -> None:
        """Go on at another rate and burst from ``now`` (a process's share of a site changed, or
        shaping cut it), keeping the tokens earned so far, up to the new burst."""
        if (rate, burst) == (self.rate, self.burst):
            return
        self._refill(now)
        self.rate, self.burst = rate, burst
        self._tokens = min(self._tokens, burst)


@dataclass(frozen=True)
class Limit:
    connections: int = 10  # open at once
    rate: float = 50.0  # messages a second
    burst: int = 10  # messages allowed at once after a quiet spell
    # a session closes after this many messages (None: the transport's own limit); some
    # providers want few per session
    messages_per_connection: int | None = None

    def __post_init__(self) -> None:
        if self.messages_per_connection is not None and self.messages_per_connection < 1:
            raise ValueError(
                "limit: messages_per_connection must be at least 1, "
                f"not {self.messages_per_connection}"
            )
        if self.connections < 1:
            raise ValueError(f"limit: connections must be at least 1, not {self.connections}")
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"limit: rate must be a positive number, not {self.rate!r}")
        if self.burst < 1:
            raise ValueError(f"limit: burst must be at least 1, not {self.burst}")


# Starting points, not published numbers (the providers publish none): wide for Google, which
# tolerates volume from a clean IP; narrow for Microsoft and Yahoo, which defer sooner. A site
# matches by its MX host names, so the MX suffixes (google.com, outlook.com, yahoodns.net) are the
# keys that count; the recipient domains among them only match a site whose hosts they name.
_GOOGLE = Limit(connections=20, rate=100.0, burst=20)
_MICROSOFT = Limit(connections=5, rate=20.0, burst=5)
_YAHOO = Limit(connections=5, rate=20.0, burst=5)
DEFAULT_OVERRIDES: Mapping[str, Limit] = MappingProxyType(
    {
        "gmail.com": _GOOGLE,
        "googlemail.com": _GOOGLE,
        "google.com": _GOOGLE,
        "outlook.com": _MICROSOFT,
        "hotmail.com": _MICROSOFT,
        "live.com": _MICROSOFT,
        "msn.com": _MICROSOFT,
        "yahoo.com": _YAHOO,
        "yahoodns.net": _YAHOO,
        "aol.com": _YAHOO,
    }
)


def _normalise(name: str) -> str:
    return name.strip().rstrip(".").lower()


@dataclass(frozen=True)
class DestinationLimits:
    default: Limit = Limit()
    overrides: Mapping[str, Limit] = field(default_factory=lambda: DEFAULT_OVERRIDES)
    tenant_rate: float = 500.0  # messages a second per tenant, all destinations together
    tenant_burst: int = 50

    def __post_init__(self) -> None:
        normalised = {_normalise(key): limit for key, limit in self.overrides.items()}
        if "" in normalised or len(normalised) != len(self.overrides):
            raise ValueError(
                f"destination limits: empty or clashing override keys: {dict(self.overrides)}"
            )
        # frozen, so the normalised copy has to be put in place past the dataclass guard
        object.__setattr__(self, "overrides", MappingProxyType(normalised))
        if not (math.isfinite(self.tenant_rate) and self.tenant_rate > 0):
            raise ValueError(
                f"destination limits: tenant_rate must be positive, not {self.tenant_rate!r}"
            )
        if self.tenant_burst < 1:
            raise ValueError(
                f"destination limits: tenant_burst must be at least 1, not {self.tenant_burst}"
            )

    def match(self, destination: str) -> str | None:
        """The override key for ``destination`` (a domain or MX host): its longest suffix on a
        label boundary, so ``mx.gmail.com`` matches ``gmail.com`` and ``notgmail.com`` does not.
        """
        name = _normalise(destination)
        while name:
            if name in self.overrides:
                return name
            _, _, name = name.partition(".")
        return None

    def for_destination(self, destination: str) -> Limit:
        key = self.match(destination)
        return self.default if key is None else self.overrides[key]

    def site_match(self, site: str) -> str | None:
        """The override key of a site: the longest match among its hosts' names."""
        keys = [key for key in map(self.match, site_hosts(site)) if key is not None]
        return max(keys, key=lambda key: (key.count("."), len(key), key), default=None)

    def for_site(self, site: str) -> Limit:
        key = self.site_match(site)
        return self.default if key is None else self.overrides[key]


class SiteSlots(ConnectionBudget, Protocol):
    """The connection slots of the sites: ``held`` is how many of a site's this process holds
    (and counts on); ``shared`` says whether other processes hold the rest."""

    shared: bool

    def held(self, group: str) -> int: ...

    def status(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class DestinationThrottle:
    """The buckets of one worker, and the connection slots it takes its sites' sessions from.
    Site buckets are keyed by the site name; a shared budget gives this process the share of a
    site's rate that its slots are of the site's connections."""

    def __init__(
        self, limits: DestinationLimits | None = None, slots: SiteSlots | None = None
    ) -> None:
        self.limits = limits or DestinationLimits()
        self.slots: SiteSlots = slots or LocalSlots(self.connection_limit)
        self._sites: dict[str, TokenBucket] = {}
        self._tenants: dict[str, TokenBucket] = {}
        self._limits: dict[str, Limit] = {}
        self._factors: dict[str, float] = {}  # sites whose rate is cut: site -> factor in (0, 1)

    def limit(self, site: str) -> Limit:
        found = self._limits.get(site)
        if found is None:
            if len(self._limits) >= 10_000:
                self._limits.clear()
            found = self._limits[site] = self.limits.for_site(site)
        return found

    def connection_limit(self, site: str) -> int:
        return self.limit(site).connections

    def take_tenant(self, tenant: str, now: float, n: int = 1) -> float:
        """Take ``n`` messages' worth from the tenant's bucket and return 0, or take nothing and
        return the seconds to wait."""
        bucket = self._tenants.get(tenant)
        if bucket is None:
            bucket = TokenBucket(self.limits.tenant_rate, self.limits.tenant_burst)
            self._tenants[tenant] = bucket
        return bucket.take(now, n)

    def give_back_tenant(self, tenant: str, n: int = 1) -> None:
        """The tenant's tokens for messages that were not sent after all (their site was)."""
        bucket = self._tenants.get(tenant)
        if bucket is not None:
            bucket.give_back(n)

    def tenant_wait(self, tenant: str, now: float) -> float:
        """Seconds until ``tenant`` may send one more message (0: now), taking nothing."""
        bucket = self._tenants.get(tenant)
        return 0.0 if bucket is None else bucket.wait_time(now)

    def _site_bucket(self, site: str, now: float) -> TokenBucket:
        """The site's bucket, at this process's share of the site's rate (times its factor)."""
        limit = self.limit(site)
        held = self.slots.held(site) if self.slots.shared else limit.connections
        factor = self._factors.get(site, 1.0)
        rate, burst = apportion(limit.rate * factor, limit.burst, limit.connections, held)
        burst = max(1.0, burst * factor)
        bucket = self._sites.get(site)
        if bucket is None:
            bucket = self._sites[site] = TokenBucket(rate, burst)
        else:
            bucket.resize(rate, burst, now)
        return bucket

    def pace(self, site: str, now: float, n: int = 1) -> float:
        """Take ``n`` messages' worth from the site's bucket, at this process's share of it, and
        return 0, or take nothing and return the seconds to wait."""
        bucket = self._site_bucket(site, now)
        return bucket.take(now, min(n, bucket.burst))

    def site_wait(self, site: str, now: float) -> float:
        """Seconds until ``site`` may take one more message here (0: now), taking nothing."""
        return self._site_bucket(site, now).wait_time(now)

    def scale(self, site: str, factor: float, now: float) -> None:
        """Run ``site``'s rate and burst at ``factor`` times its limit's, as response shaping
        asks after a provider's "slow down"; 1 restores the limit."""
        if not (math.isfinite(factor) and 0 < factor <= 1):
            raise ValueError(f"throttle: a rate factor is in (0, 1], not {factor!r}")
        if factor == 1.0:
            self._factors.pop(site, None)
        else:
            self._factors[site] = factor
        if site in self._sites:
            self._site_bucket(site, now)

    def factor(self, site: str) -> float:
        return self._factors.get(site, 1.0)

    def connections(self, site: str) -> int:
        """The site's slots this process holds."""
        return self.slots.held(site)

    def prune(self, now: float) -> int:
        """Forget buckets that have refilled completely, which behave exactly like new ones, so
        a worker that has seen a million domains does not keep a million buckets. Returns how
        many were dropped."""
        dropped = 0
        for table in (self._sites, self._tenants):
            for name in [k for k, b in table.items() if b.tokens(now) >= b.burst]:
                del table[name]
                dropped += 1
        return dropped
