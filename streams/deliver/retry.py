"""The retry ladder of the delivery stage and the delay topic a waiting message sits in (pure).

The default ladder is Postfix's: the first retry 5 minutes after a failure, each wait twice the
last, never more than 4 hours apart, and the message gives up 5 days after its first attempt.
Times are plain seconds (``time.time()`` style); the caller passes ``now``.

Waiting happens in delay topics rather than in memory, so a restart loses nothing. A topic can
only hold records for one fixed time, so there is a ladder of tiers (5, 10, 20 ... 240 minutes) and
a record goes to the longest tier that does not overshoot its wait. When the tier's time is up the
record is checked against its exact not-before time; if it is still early it goes to the tier for
what is left, so a message is never attempted before its time and waits at most one smallest tier
longer than it should.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "DEFAULT_TIERS",
    "Expire",
    "Retry",
    "RetryPolicy",
    "delay_tier",
    "next_attempt",
    "tier_name",
    "tier_topic",
    "tier_topics",
]

# seconds: 5, 10, 20, 40, 80, 160 and 240 minutes, the waits of the default ladder
DEFAULT_TIERS: tuple[int, ...] = (300, 600, 1200, 2400, 4800, 9600, 14400)


@dataclass(frozen=True)
class RetryPolicy:
    first: float = 300.0  # wait after the first failed attempt
    factor: float = 2.0  # each wait is the previous one times this
    cap: float = 14400.0  # longest wait between two attempts
    max_age: float = 432000.0  # give up this long after the first attempt
    tiers: tuple[int, ...] = DEFAULT_TIERS  # delay topics, seconds, shortest first

    def __post_init__(self) -> None:
        for name in ("first", "factor", "cap", "max_age"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"retry policy: {name} must be a finite number, not {value!r}")
        if self.first <= 0:
            raise ValueError(f"retry policy: first must be positive, not {self.first}")
        if self.factor < 1:
            # a factor below 1 would retry ever faster: a hammer, not a backoff
            raise ValueError(f"retry policy: factor must be at least 1, not {self.factor}")
        if self.cap < self.first:
            raise ValueError(f"retry policy: cap ({self.cap}) is below first ({self.first})")
        if self.max_age <= 0:
            raise ValueError(f"retry policy: max_age must be positive, not {self.max_age}")
        if not self.tiers:
            raise ValueError("retry policy: at least one delay tier is needed")
        if any(t <= 0 for t in self.tiers) or list(self.tiers) != sorted(set(self.tiers)):
            raise ValueError(
                f"retry policy: tiers must be positive and strictly increasing: {self.tiers}"
            )

    def delay(self, attempt: int) -> float:
        """The wait after failed attempt number ``attempt`` (1 = the first attempt)."""
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, not {attempt}")
        wait = self.first
        # multiply step by step instead of first * factor ** n: a message retried for days
        # with a custom policy must not overflow a float, and the cap is reached in a few steps
        for _ in range(attempt - 1):
            if wait >= self.cap or self.factor == 1:
                break
            wait *= self.factor
        return min(wait, self.cap)


@dataclass(frozen=True)
class Retry:
    at: float  # not before this time


@dataclass(frozen=True)
class Expire:
    age: float  # seconds since the first attempt, for the bounce text


def next_attempt(
    policy: RetryPolicy, attempt: int, first_tried_at: float, now: float
) -> Retry | Expire:
    """After failed attempt number ``attempt`` (1 = the first), when to try again, or give up.

    The last retry is pulled in to the deadline itself rather than skipped, so a message whose
    ladder would step past ``max_age`` still gets its final attempt exactly at ``max_age``; a
    failure at or after the deadline expires it.
    """
    deadline = first_tried_at + policy.max_age
    if now >= deadline:
        return Expire(now - first_tried_at)
    return Retry(min(now + policy.delay(attempt), deadline))


def tier_name(seconds: int) -> str:
    """``300`` -> ``"5m"``: whole minutes in minutes (as Postfix logs them), otherwise seconds."""
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def delay_tier(policy: RetryPolicy, delay_seconds: float) -> tuple[str, int]:
    """The delay tier to wait ``delay_seconds`` in: the longest one not longer than the wait.

    A wait shorter than the shortest tier goes to the shortest one: late by less than one tier is
    the price of holding nothing in memory, and being early is never allowed.
    """
    if not math.isfinite(delay_seconds) or delay_seconds <= 0:
        raise ValueError(f"a delay tier needs a positive wait, not {delay_seconds!r}")
    fitting = [t for t in policy.tiers if t <= delay_seconds]
    seconds = fitting[-1] if fitting else policy.tiers[0]
    return tier_name(seconds), seconds


def tier_topic(prefix: str, name: str) -> str:
    """``("postwire", "5m")`` -> ``"postwire.retry.5m"``."""
    return f"{prefix}.retry.{name}"


def tier_topics(policy: RetryPolicy, prefix: str) -> list[str]:
    return [tier_topic(prefix, tier_name(t)) for t in policy.tiers]
