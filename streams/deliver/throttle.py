"""How fast and how wide delivery may go: per destination and per tenant (pure, time a parameter).

Receivers judge a sender by its connection count and message rate, and the big mailbox providers
defer (421/4.7.0) anyone who pushes too hard, so each destination gets a connection limit and a
token bucket; a tenant's bucket caps its total across destinations so one tenant's campaign cannot
take every slot. Limits are looked up by name suffix, of a recipient domain or an MX host, so the
``google.com`` entry covers the ``aspmx.l.google.com`` hosts of every domain Google hosts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "DEFAULT_OVERRIDES",
    "DestinationLimits",
    "DestinationThrottle",
    "Limit",
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

    def retune(self, rate: float, burst: float, now: float) -> None:
        """Go on at another rate and burst, keeping the tokens earned so far (up to the burst)."""
        if not (math.isfinite(rate) and rate > 0) or not (math.isfinite(burst) and burst >= 1):
            raise ValueError(f"token bucket: cannot retune to rate {rate!r}, burst {burst!r}")
        self._refill(now)
        self.rate = rate
        self.burst = burst
        self._tokens = min(self._tokens, burst)


@dataclass(frozen=True)
class Limit:
    connections: int = 10  # open at once
    rate: float = 50.0  # messages a second
    burst: int = 10  # messages allowed at once after a quiet spell

    def __post_init__(self) -> None:
        if self.connections < 1:
            raise ValueError(f"limit: connections must be at least 1, not {self.connections}")
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"limit: rate must be a positive number, not {self.rate!r}")
        if self.burst < 1:
            raise ValueError(f"limit: burst must be at least 1, not {self.burst}")


# Starting points, not published numbers (the providers publish none): wide for Google, which
# tolerates volume from a clean IP; narrow for Microsoft and Yahoo, which defer sooner. Keys are
# recipient domains and the MX host suffixes their mail really goes to.
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


class DestinationThrottle:
    """The buckets and connection counts of one worker. Destinations that match an override share
    its limits as one budget: every Google MX host draws on the ``google.com`` bucket."""

    def __init__(self, limits: DestinationLimits | None = None) -> None:
        self.limits = limits or DestinationLimits()
        self._destinations: dict[str, TokenBucket] = {}
        self._tenants: dict[str, TokenBucket] = {}
        self._open: dict[str, int] = {}
        # sites whose rate shaping has cut (streams/deliver/shaping.py): key -> factor
        self._factors: dict[str, float] = {}

    def key(self, destination: str) -> str:
        return self.limits.match(destination) or _normalise(destination)

    def _bucket(self, key: str) -> TokenBucket:
        bucket = self._destinations.get(key)
        if bucket is None:
            rate, burst = self._scaled(key)
            bucket = self._destinations[key] = TokenBucket(rate, burst)
        return bucket

    def _scaled(self, key: str) -> tuple[float, float]:
        limit = self.limits.for_destination(key)
        factor = self._factors.get(key, 1.0)
        return limit.rate * factor, max(1.0, limit.burst * factor)

    def scale(self, key: str, factor: float, now: float) -> None:
        """Run the bucket of ``key`` (a ``key()``) at ``factor`` times its limit's rate and
        burst, as shaping asks after a provider's "slow down"; 1 restores the limit."""
        if not (math.isfinite(factor) and 0 < factor <= 1):
            raise ValueError(f"throttle: a rate factor is in (0, 1], not {factor!r}")
        if self._factors.get(key, 1.0) == factor:
            return
        if factor == 1.0:
            del self._factors[key]
        else:
            self._factors[key] = factor
        bucket = self._destinations.get(key)
        if bucket is not None:
            bucket.retune(*self._scaled(key), now)

    def factor(self, key: str) -> float:
        return self._factors.get(key, 1.0)

    def take(self, tenant: str, destination: str, now: float, n: int = 1) -> float:
        """Take ``n`` messages' worth from both the tenant's and the destination's bucket and
        return 0, or take from neither and return the seconds to wait: a refusal by one must not
        spend the other's tokens."""
        tenant_bucket = self._tenants.get(tenant)
        if tenant_bucket is None:
            tenant_bucket = TokenBucket(self.limits.tenant_rate, self.limits.tenant_burst)
            self._tenants[tenant] = tenant_bucket
        destination_bucket = self._bucket(self.key(destination))
        wait = max(tenant_bucket.wait_time(now, n), destination_bucket.wait_time(now, n))
        if wait > 0:
            return wait
        tenant_bucket.take(now, n)
        destination_bucket.take(now, n)
        return 0.0

    def tenant_wait(self, tenant: str, now: float) -> float:
        """Seconds until ``tenant`` may send one more message (0: now), taking nothing."""
        bucket = self._tenants.get(tenant)
        return 0.0 if bucket is None else bucket.wait_time(now)

    def destination_wait(self, destination: str, now: float) -> float:
        """Seconds until ``destination`` may take one more message (0: now), taking nothing."""
        bucket = self._destinations.get(self.key(destination))
        return 0.0 if bucket is None else bucket.wait_time(now)

    def open_connection(self, destination: str) -> bool:
        """Count a new connection to ``destination`` if one more is allowed."""
        key = self.key(destination)
        count = self._open.get(key, 0)
        if count >= self.limits.for_destination(key).connections:
            return False
        self._open[key] = count + 1
        return True

    def close_connection(self, destination: str) -> None:
        key = self.key(destination)
        count = self._open.get(key, 0)
        if count <= 0:
            # closing what was never opened is a bookkeeping bug that would hand out extra slots
            raise ValueError(f"no open connection to {destination!r} to close")
        if count == 1:
            del self._open[key]
        else:
            self._open[key] = count - 1

    def connections(self, destination: str) -> int:
        return self._open.get(self.key(destination), 0)

    def prune(self, now: float) -> int:
        """Forget buckets that have refilled completely, which behave exactly like new ones, so
        a worker that has seen a million domains does not keep a million buckets. Returns how
        many were dropped."""
        dropped = 0
        for table in (self._destinations, self._tenants):
            for name in [k for k, b in table.items() if b.tokens(now) >= b.burst]:
                del table[name]
                dropped += 1
        return dropped
