"""Response-driven traffic shaping per destination site (pure, time a parameter).

The large mailbox providers say in their replies when a sender pushes too hard: Yahoo's
``421 4.7.0 [TSS04]``, Microsoft's ``451 4.7.500 Server busy``, Gmail's ``421-4.7.28 ... unusual
rate``. Retrying each message on its own ladder keeps hitting them at the configured rate, which
is what earns the next deferral. A ``Rule`` matches such replies (code, enhanced status, a regular
expression on the text, optionally only for MX hosts under given suffixes) and, once it has seen
``count`` of them within ``window`` seconds for one site, acts on the whole site: ``suspend`` it
(no attempts until the time is up) or ``slow`` it (its message rate times ``factor``). Both end by
themselves; expiry restores the site.

``Shaping`` keeps the rules, the recent matches and the state of every site one process knows.
States fired here are queued for publishing (``take_published``), and states fired elsewhere are
folded in with ``apply``, so a suspension holds in every delivery process. The site is a plain
string the caller chooses (today ``DestinationThrottle.key``).
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import orjson

__all__ = [
    "ActionKind",
    "Fired",
    "Reply",
    "Rule",
    "Shaping",
    "SiteState",
    "normalise_site",
]

ActionKind = Literal["suspend", "slow"]
ACTIONS: tuple[ActionKind, ...] = ("suspend", "slow")
# what of the reply a published state keeps: enough to recognise it, never a recipient address
_REPLY_CHARS = 240
_ADDRESS = re.compile(r"[^\s<>@]+@[^\s<>@]+")


def normalise_site(site: str) -> str:
    return site.strip().rstrip(".").lower()


def _host_suffix(name: str) -> str:
    return name.strip().strip(".").lower()


@dataclass(frozen=True)
class Reply:
    """What a receiver said: the reply that ended an attempt, and the MX host that said it."""

    code: int | None
    enhanced: str | None
    text: str
    mx_host: str = ""

    def describe(self) -> str:
        """The reply as a state keeps it: one line, addresses masked, bounded."""
        parts = [str(self.code) if self.code is not None else "-"]
        if self.enhanced and not self.text.lstrip().startswith(self.enhanced):
            parts.append(self.enhanced)
        parts.append(" ".join(self.text.split()))
        said = _ADDRESS.sub("<address>", " ".join(parts))
        return said[:_REPLY_CHARS]


@dataclass(frozen=True)
class Rule:
    """One shaping rule; an empty matcher (no codes, no enhanced codes, no pattern) matches any
    value of that part, but the file loader refuses a rule with none of the three."""

    name: str
    action: ActionKind
    duration: float  # seconds the suspension or the cut lasts
    codes: frozenset[int] = frozenset()
    enhanced: frozenset[str] = frozenset()
    pattern: re.Pattern[str] | None = None
    mx_suffixes: tuple[str, ...] = ()
    factor: float = 1.0  # for slow: the site's rate is multiplied by this
    count: int = 1  # matching replies ...
    window: float = 60.0  # ... within this many seconds, before it fires

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"rule {self.name}: action must be one of {ACTIONS}")
        for name in ("duration", "window"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"rule {self.name}: {name} must be a positive number of seconds")
        if self.count < 1:
            raise ValueError(f"rule {self.name}: count must be at least 1")
        if self.action == "slow" and not 0 < self.factor < 1:
            raise ValueError(f"rule {self.name}: factor must be between 0 and 1 (exclusive)")
        object.__setattr__(self, "mx_suffixes", tuple(_host_suffix(s) for s in self.mx_suffixes))

    def applies_to(self, mx_host: str) -> bool:
        """Whether the rule covers a site reached through ``mx_host``: a suffix on a label
        boundary, so ``yahoodns.net`` covers ``mta5.am0.yahoodns.net``, not ``notyahoodns.net``."""
        if not self.mx_suffixes:
            return True
        host = _host_suffix(mx_host)
        return any(host == s or host.endswith("." + s) for s in self.mx_suffixes)

    def matches(self, reply: Reply) -> bool:
        if reply.code is None:
            return False  # no reply at all (a timeout, a reset): the breaker's business
        if self.codes and reply.code not in self.codes:
            return False
        if self.enhanced and reply.enhanced not in self.enhanced:
            return False
        if self.pattern is not None and self.pattern.search(reply.text) is None:
            return False
        return self.applies_to(reply.mx_host)


@dataclass(frozen=True)
class SiteState:
    """What shaping does to one site; times are epoch seconds, 0 when that part is not in force.
    The value of the site's record on the shaping topic."""

    site: str
    suspended_until: float = 0.0
    suspend_rule: str = ""
    suspend_reply: str = ""
    slowed_until: float = 0.0
    factor: float = 1.0
    slow_rule: str = ""
    slow_reply: str = ""

    def suspended(self, now: float) -> bool:
        return now < self.suspended_until

    def slowed(self, now: float) -> bool:
        return now < self.slowed_until

    def active(self, now: float) -> bool:
        return self.suspended(now) or self.slowed(now)

    def rate_factor(self, now: float) -> float:
        return self.factor if self.slowed(now) else 1.0

    def merge(self, other: SiteState) -> SiteState:
        """Both states together: each part from whichever holds it longer (a cut that ends
        later wins with its factor), so folding in the same state twice changes nothing."""
        merged = self
        if other.suspended_until > merged.suspended_until:
            merged = replace(
                merged,
                suspended_until=other.suspended_until,
                suspend_rule=other.suspend_rule,
                suspend_reply=other.suspend_reply,
            )
        if other.slowed_until > merged.slowed_until:
            merged = replace(
                merged,
                slowed_until=other.slowed_until,
                factor=other.factor,
                slow_rule=other.slow_rule,
                slow_reply=other.slow_reply,
            )
        return merged

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def encode(self) -> bytes:
        return orjson.dumps(self.to_json())

    @classmethod
    def decode(cls, raw: bytes) -> SiteState:
        """Raises ValueError for anything that is not a site state."""
        try:
            data = orjson.loads(raw)
            return cls(
                site=normalise_site(str(data["site"])),
                suspended_until=float(data.get("suspended_until", 0.0)),
                suspend_rule=str(data.get("suspend_rule", "")),
                suspend_reply=str(data.get("suspend_reply", "")),
                slowed_until=float(data.get("slowed_until", 0.0)),
                factor=float(data.get("factor", 1.0)),
                slow_rule=str(data.get("slow_rule", "")),
                slow_reply=str(data.get("slow_reply", "")),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not a shaping state: {exc}") from exc


@dataclass(frozen=True)
class Fired:
    """A rule that acted on a site: for the metrics, the log and the caller."""

    site: str
    rule: str
    action: ActionKind
    until: float
    factor: float
    reply: str


@dataclass
class Shaping:
    """The rules and what they did to the sites this process knows. One event loop owns it."""

    rules: Sequence[Rule] = ()
    _hits: dict[tuple[str, str], deque[float]] = field(default_factory=dict)
    _sites: dict[str, SiteState] = field(default_factory=dict)
    _published: list[SiteState] = field(default_factory=list)

    def observe(self, site: str, reply: Reply, now: float) -> list[Fired]:
        """Count ``reply`` against every rule it matches; return the rules that fire now."""
        site = normalise_site(site)
        fired: list[Fired] = []
        for rule in self.rules:
            if not rule.matches(reply):
                continue
            hits = self._hits.setdefault((site, rule.name), deque())
            hits.append(now)
            while hits and now - hits[0] >= rule.window:
                hits.popleft()
            if len(hits) < rule.count:
                continue
            del self._hits[(site, rule.name)]
            fired.append(self._fire(site, rule, reply.describe(), now))
        return fired

    def _fire(self, site: str, rule: Rule, said: str, now: float) -> Fired:
        until = now + rule.duration
        if rule.action == "suspend":
            change = SiteState(
                site, suspended_until=until, suspend_rule=rule.name, suspend_reply=said
            )
        else:
            change = SiteState(
                site, slowed_until=until, factor=rule.factor, slow_rule=rule.name, slow_reply=said
            )
        state = self._sites.get(site, SiteState(site)).merge(change)
        self._sites[site] = state
        self._published.append(state)
        return Fired(site, rule.name, rule.action, until, rule.factor, said)

    def state(self, site: str, now: float) -> SiteState | None:
        """The site's state while some part of it is in force."""
        state = self._sites.get(normalise_site(site))
        return state if state is not None and state.active(now) else None

    def suspension(self, site: str, now: float) -> SiteState | None:
        """The site's state while it is suspended."""
        state = self._sites.get(normalise_site(site))
        return state if state is not None and state.suspended(now) else None

    def rate_factor(self, site: str, now: float) -> float:
        state = self._sites.get(normalise_site(site))
        return 1.0 if state is None else state.rate_factor(now)

    def apply(self, state: SiteState) -> bool:
        """Fold in a state another process (or this one, read back) published; True if it
        changed what this process does."""
        known = self._sites.get(state.site)
        merged = state if known is None else known.merge(state)
        if merged == known:
            return False
        self._sites[state.site] = merged
        return True

    def lift(self, site: str) -> None:
        """An operator's resume: the site's suspension, cut and recent matches are forgotten."""
        site = normalise_site(site)
        self._sites.pop(site, None)
        for key in [k for k in self._hits if k[0] == site]:
            del self._hits[key]

    def take_published(self) -> list[SiteState]:
        """The states fired here since the last call, for the shaping topic."""
        published, self._published = self._published, []
        return published

    def sites(self, now: float) -> list[SiteState]:
        """The sites with a suspension or a cut in force."""
        return [s for s in self._sites.values() if s.active(now)]

    def counts(self, now: float) -> tuple[int, int]:
        """How many sites are suspended, and how many slowed, now."""
        sites = self.sites(now)
        return sum(s.suspended(now) for s in sites), sum(s.slowed(now) for s in sites)

    def prune(self, now: float) -> list[str]:
        """Forget expired states and stale matches; return the sites restored."""
        restored = [site for site, s in self._sites.items() if not s.active(now)]
        for site in restored:
            del self._sites[site]
        windows = {rule.name: rule.window for rule in self.rules}
        for key, hits in list(self._hits.items()):
            window = windows.get(key[1], 0.0)
            while hits and now - hits[0] >= window:
                hits.popleft()
            if not hits:
                del self._hits[key]
        return restored
