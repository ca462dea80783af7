"""Pure decisions of the gate: deduplication and windowed rate limits. Time is a parameter."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "WINDOWS",
    "Admit",
    "Dedup",
    "Limits",
    "Throttle",
    "dedup_decide",
    "rate_decide",
    "window_end",
]

# (name, size in seconds): tumbling windows counted per tenant
WINDOWS: tuple[tuple[str, int], ...] = (("second", 1), ("minute", 60), ("hour", 3600))


@dataclass(frozen=True)
class Limits:
    per_second: int
    per_minute: int
    per_hour: int

    def of(self, window: str) -> int:
        return {"second": self.per_second, "minute": self.per_minute, "hour": self.per_hour}[window]


class Dedup(StrEnum):
    NEW = "new"
    REPLAY = "replay"  # the same request again (redelivery, deferral): let it through
    DUPLICATE = "duplicate"  # another request with an idempotency key already used


def dedup_decide(
    entry: Mapping[str, Any] | None, request_id: str, now: float, ttl: float
) -> tuple[Dedup, dict[str, Any] | None]:
    """Return the outcome and, for a new key, the entry to store ({request_id, expires})."""
    if entry is not None and float(entry["expires"]) > now:
        return (Dedup.REPLAY if entry["request_id"] == request_id else Dedup.DUPLICATE), None
    return Dedup.NEW, {"request_id": request_id, "expires": now + ttl}


def window_end(now: float, size: int) -> float:
    return (math.floor(now / size) + 1) * size


@dataclass(frozen=True)
class Admit:
    pass


@dataclass(frozen=True)
class Throttle:
    window: str
    retry_after: float  # seconds until every exhausted window has rolled over


def rate_decide(counts: Mapping[str, int], limits: Limits, now: float) -> Admit | Throttle:
    """``counts``: requests already admitted in the current window of each size."""
    exhausted = [(name, size) for name, size in WINDOWS if counts.get(name, 0) >= limits.of(name)]
    if not exhausted:
        return Admit()
    name, size = max(exhausted, key=lambda w: w[1])
    return Throttle(name, max(window_end(now, size) - now, 0.001))
