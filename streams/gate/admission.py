"""Pure decisions of the gate: deduplication and windowed rate limits. Time is a parameter."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypedDict

from streams.db.tenants import Limits

__all__ = [
    "WINDOWS",
    "Admit",
    "Dedup",
    "DedupEntry",
    "Limits",
    "Memo",
    "RateLimited",
    "count_admission",
    "dedup_decide",
    "rate_decide",
    "window_counts",
    "window_end",
    "window_start",
    "windows_expired",
]

# (name, size in seconds): tumbling windows counted per tenant
WINDOWS: tuple[tuple[str, int], ...] = (("second", 1), ("minute", 60), ("hour", 3600))


class DedupEntry(TypedDict):
    """What the gate's store keeps under a tenant's idempotency key."""

    request_id: str
    expires: float


class Memo(TypedDict):
    """A rate decision remembered for a request, so that a replay repeats it."""

    window: str | None  # None: admitted
    retry_after: float
    expires: float


class Dedup(StrEnum):
    NEW = "new"
    REPLAY = "replay"  # the same request again (redelivery, deferral): let it through
    DUPLICATE = "duplicate"  # another request with an idempotency key already used


def dedup_decide(
    entry: Mapping[str, Any] | None, request_id: str, now: float, ttl: float
) -> tuple[Dedup, DedupEntry | None]:
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
class RateLimited:
    window: str
    retry_after: float  # seconds until every exhausted window has rolled over


def rate_decide(counts: Mapping[str, int], limits: Limits, now: float) -> Admit | RateLimited:
    """``counts``: requests already admitted in the current window of each size."""
    exhausted = [(name, size) for name, size in WINDOWS if counts.get(name, 0) >= limits.of(name)]
    if not exhausted:
        return Admit()
    name, size = max(exhausted, key=lambda w: w[1])
    return RateLimited(name, max(window_end(now, size) - now, 0.001))


def window_start(now: float, size: int) -> float:
    return math.floor(now / size) * size


def window_counts(entry: Mapping[str, Any] | None, now: float) -> dict[str, int]:
    """Requests admitted in the current window of each size, from a tenant's stored entry
    ``{window: [start, count]}`` (a count from an earlier window is zero now)."""
    if not entry:
        return {}
    counts = {}
    for name, size in WINDOWS:
        start, count = entry.get(name, (None, 0))
        if start == window_start(now, size):
            counts[name] = int(count)
    return counts


def count_admission(entry: Mapping[str, Any] | None, now: float) -> dict[str, list[float]]:
    """The tenant's entry after one more admission at ``now``."""
    counts = window_counts(entry, now)
    return {name: [window_start(now, size), counts.get(name, 0) + 1] for name, size in WINDOWS}


def windows_expired(entry: Mapping[str, Any], now: float) -> bool:
    """Every window in the entry has ended: it counts nothing any more."""
    return all(float(entry.get(name, (0, 0))[0]) + size <= now for name, size in WINDOWS)
