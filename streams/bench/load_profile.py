"""Load scenarios for `postwire bench load`, as pure functions: rate profiles, the open-model
send schedule derived from them, the traffic mix, and percentile math. No I/O, no clock.

Open model: the schedule says when each request is sent, whatever happened to the earlier ones,
so a slow pipeline shows as latency and backlog instead of slowing the generator down (the
"coordinated omission" a closed loop of N clients suffers from). Arrivals are evenly spaced, as
k6's ``constant-arrival-rate`` and ``ramping-arrival-rate`` executors space them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final

__all__ = [
    "KINDS",
    "SCENARIOS",
    "Quantiles",
    "Scenario",
    "Stage",
    "format_ms",
    "kinds",
    "parse_mix",
    "percentile",
    "quantiles",
    "schedule",
]

KINDS: Final = ("verify", "send")


@dataclass(frozen=True, slots=True)
class Stage:
    """``seconds`` of arrivals at ``rate`` requests/s, or ramping linearly from ``rate`` to
    ``to_rate`` when that is given."""

    seconds: float
    rate: float
    to_rate: float | None = None

    def __post_init__(self) -> None:
        if self.seconds <= 0 or self.rate < 0 or (self.to_rate is not None and self.to_rate < 0):
            raise ValueError(f"a stage needs seconds > 0 and rates >= 0, not {self}")

    @property
    def end_rate(self) -> float:
        return self.rate if self.to_rate is None else self.to_rate

    @property
    def requests(self) -> float:
        """Arrivals in the stage (the integral of the rate over its duration)."""
        return (self.rate + self.end_rate) / 2 * self.seconds

    def time_of(self, k: float) -> float:
        """Seconds into the stage at which the cumulative arrivals reach ``k``."""
        if k <= 0:
            return 0.0
        r0 = self.rate
        a = (self.end_rate - r0) / (2 * self.seconds)  # arrivals(t) = r0 t + a t^2
        if a == 0:
            return k / r0
        # the root of a t^2 + r0 t - k = 0 in the stable form (no cancellation when a is small)
        return 2 * k / (r0 + math.sqrt(max(r0 * r0 + 4 * a * k, 0.0)))

    def describe(self) -> str:
        if self.to_rate is None or self.to_rate == self.rate:
            return f"{self.rate:,.0f}/s for {self.seconds:g} s"
        return f"{self.rate:,.0f} -> {self.end_rate:,.0f}/s over {self.seconds:g} s"


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    stages: tuple[Stage, ...]
    purpose: str = ""

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages)

    @property
    def requests(self) -> int:
        """How many requests :func:`schedule` yields."""
        return math.ceil(round(sum(s.requests for s in self.stages), 9))

    @property
    def mean_rate(self) -> float:
        return self.requests / self.seconds

    def scaled(self, seconds: float) -> Scenario:
        """The same shape squeezed or stretched to last ``seconds`` (rates unchanged)."""
        if seconds <= 0:
            raise ValueError("a scenario must last more than 0 s")
        factor = seconds / self.seconds
        stages = tuple(replace(s, seconds=s.seconds * factor) for s in self.stages)
        return replace(self, stages=stages)

    def rate_at(self, t: float) -> float:
        """The scheduled rate ``t`` seconds into the run (0 outside it)."""
        began = 0.0
        for s in self.stages:
            if began <= t < began + s.seconds:
                return s.rate + (s.end_rate - s.rate) * (t - began) / s.seconds
            began += s.seconds
        return 0.0

    def describe(self) -> str:
        return ", then ".join(s.describe() for s in self.stages)


SCENARIOS: Final[Mapping[str, Scenario]] = {
    s.name: s
    for s in (
        Scenario("baseline", (Stage(60, 500),), "normal day: well under capacity"),
        Scenario("peak", (Stage(60, 2000),), "the busiest hour; target p99 < 250 ms"),
        Scenario("stress", (Stage(60, 5000),), "past capacity: nothing lost, backlog drains"),
        Scenario(
            "spike",
            (Stage(20, 100), Stage(20, 5000), Stage(20, 100)),
            "a sudden burst and back: recovery",
        ),
        Scenario("endurance", (Stage(600, 1000),), "ten minutes: memory and state stay flat"),
    )
}


def schedule(scenario: Scenario) -> Iterator[float]:
    """Send offsets in seconds from the start, ascending: arrival ``j`` (0-based) goes out when
    the cumulative arrivals of the rate profile reach ``j``, so the first is at 0 and a
    constant 500/s puts exactly 500 in every second."""
    began = 0.0
    base = 0.0  # cumulative arrivals before the stage
    j = 0
    total = scenario.requests
    for stage in scenario.stages:
        end = base + stage.requests
        while j < total and (j < end or stage is scenario.stages[-1]):
            k = min(j - base, stage.requests)
            yield began + min(stage.time_of(k), stage.seconds)
            j += 1
        began += stage.seconds
        base = end


def parse_mix(text: str) -> dict[str, float]:
    """``verify=0.8,send=0.2`` -> shares that add up to 1 (weights need not)."""
    weights: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        name = name.strip().lower()
        if not sep or name not in KINDS:
            raise ValueError(f"mix parts are KIND=WEIGHT with KIND one of {', '.join(KINDS)}")
        if name in weights:
            raise ValueError(f"{name} appears twice in the mix")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"{name}'s weight {value!r} is not a number") from None
        if not weight >= 0 or math.isinf(weight):
            raise ValueError(f"{name}'s weight must be a finite number >= 0")
        weights[name] = weight
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("the mix needs at least one kind with a weight above 0")
    return {name: w / total for name, w in weights.items() if w > 0}


def kinds(mix: Mapping[str, float]) -> Iterator[str]:
    """An endless, evenly interleaved sequence of request kinds in the mix's shares (smooth
    weighted round robin: after any n picks each kind is within one of its share of n)."""
    if not mix:
        raise ValueError("an empty mix")
    current = dict.fromkeys(mix, 0.0)
    while True:
        for name, share in mix.items():
            current[name] += share
        pick = max(current, key=lambda n: current[n])
        current[pick] -= 1.0
        yield pick


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ascending ``ordered`` with linear interpolation between
    closest ranks (PostgreSQL's ``percentile_cont``). ``inf`` stands for "never arrived" and
    wins wherever it is interpolated with."""
    if not ordered:
        raise ValueError("no values")
    if not 0 <= q <= 1:
        raise ValueError("q must be within 0..1")
    pos = q * (len(ordered) - 1)
    low = math.floor(pos)
    frac = pos - low
    lower = ordered[low]
    if frac == 0:
        return lower
    upper = ordered[low + 1]
    if math.isinf(upper):
        return upper
    return lower + (upper - lower) * frac


@dataclass(frozen=True, slots=True)
class Quantiles:
    """Milliseconds; ``inf`` where some requests never arrived."""

    count: int
    p50: float
    p95: float
    p99: float
    max: float

    def text(self) -> str:
        return " / ".join(format_ms(v) for v in (self.p50, self.p95, self.p99))


def format_ms(value: float) -> str:
    if math.isinf(value):
        return "never"
    if value >= 10_000:
        return f"{value / 1000:,.1f} s"
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def quantiles(seconds: Sequence[float]) -> Quantiles | None:
    """p50/p95/p99/max in milliseconds of durations in seconds; None for none."""
    if not seconds:
        return None
    ordered = sorted(seconds)
    ms = [percentile(ordered, q) * 1000 for q in (0.5, 0.95, 0.99)]
    return Quantiles(len(ordered), ms[0], ms[1], ms[2], ordered[-1] * 1000)
