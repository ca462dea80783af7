"""A circuit breaker per destination (MX host or site), so a dead host costs one probe per
cool-down instead of a connection timeout for every queued message. Time is a parameter.

closed --(``threshold`` consecutive failures within ``window``)--> open
open --(cool-down over)--> half-open: one probe connection is allowed
half-open --(probe succeeds)--> closed, cool-down back to its base
half-open --(probe fails)--> open again, cool-down doubled up to ``max_cool_down``

Only connection-level failures should be recorded (``Outcome.destination_failure`` in
``bounce``): a rejected recipient is the host working as intended.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Breaker", "BreakerPolicy", "BreakerState"]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class BreakerPolicy:
    threshold: int = 5  # consecutive failures that open the breaker
    window: float = 300.0  # ... all within this many seconds
    cool_down: float = 60.0  # first time open
    max_cool_down: float = 900.0
    # a probe that never reports (its worker died, its task was cancelled) must not keep the
    # breaker half-open forever: after this long another probe is let through
    probe_timeout: float = 300.0

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError(f"breaker: threshold must be at least 1, not {self.threshold}")
        for name in ("window", "cool_down", "max_cool_down", "probe_timeout"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"breaker: {name} must be a positive number, not {value!r}")
        if self.max_cool_down < self.cool_down:
            raise ValueError(
                f"breaker: max_cool_down ({self.max_cool_down}) is below cool_down "
                f"({self.cool_down})"
            )


class Breaker:
    """The breaker of one destination. Not thread-safe; one event loop owns it."""

    __slots__ = ("_cool_down", "_failures", "_open_until", "_probe_started", "policy")

    def __init__(self, policy: BreakerPolicy | None = None) -> None:
        self.policy = policy or BreakerPolicy()
        # times of the current run of failures; only the last ``threshold`` matter
        self._failures: deque[float] = deque(maxlen=self.policy.threshold)
        self._open_until: float | None = None  # set while open or half-open
        self._cool_down = self.policy.cool_down  # the next trip's cool-down
        self._probe_started: float | None = None

    def state(self, now: float) -> BreakerState:
        if self._open_until is None:
            return BreakerState.CLOSED
        return BreakerState.OPEN if now < self._open_until else BreakerState.HALF_OPEN

    def idle(self, now: float) -> bool:
        """Closed with no failures counted: indistinguishable from a new breaker."""
        return self.state(now) is BreakerState.CLOSED and not self._failures

    def allow(self, now: float) -> bool:
        """May a connection be opened now? In half-open, ``True`` hands out the one probe."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.OPEN:
            return False
        if (
            self._probe_started is not None
            and now < self._probe_started + self.policy.probe_timeout
        ):
            return False
        self._probe_started = now
        return True

    def retry_after(self, now: float) -> float:
        """Seconds until ``allow`` could say yes; 0 if it would now."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return 0.0
        if state is BreakerState.OPEN:
            assert self._open_until is not None
            return self._open_until - now
        if self._probe_started is None:
            return 0.0
        return max(self._probe_started + self.policy.probe_timeout - now, 0.0)

    def record_success(self, now: float) -> None:
        # any success closes, even one that started before the breaker opened: the host has
        # just shown it answers, which is all a probe would find out
        self._failures.clear()
        self._open_until = None
        self._probe_started = None
        self._cool_down = self.policy.cool_down

    def record_failure(self, now: float) -> None:
        state = self.state(now)
        if state is BreakerState.OPEN:
            # a connection begun before the trip, reporting late: it tells nothing new, and
            # counting it would stretch the cool-down for every straggler
            return
        if state is BreakerState.HALF_OPEN:
            self._trip(now, self._cool_down * 2)
            return
        failures = self._failures
        failures.append(now)
        # a run of failures spread over longer than the window is a flaky host, not a dead one
        while failures and now - failures[0] > self.policy.window:
            failures.popleft()
        if len(failures) >= self.policy.threshold:
            self._trip(now, self._cool_down)

    def _trip(self, now: float, cool_down: float) -> None:
        self._cool_down = min(cool_down, self.policy.max_cool_down)
        self._open_until = now + self._cool_down
        self._probe_started = None
        self._failures.clear()

    @property
    def cool_down(self) -> float:
        """The cool-down of the current or the next trip."""
        return self._cool_down
