"""When to restart a child that died, and when to give up on it: systemd's
``Restart=on-failure`` with ``StartLimitBurst``/``StartLimitIntervalSec``, as pure functions of
the child's exit history and the time.

Times are the supervisor's monotonic seconds. Any exit while the stack is not stopping is a
failure, code 0 included: a worker, a sink or a server never ends on its own."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "Exit",
    "GiveUp",
    "Restart",
    "RestartPolicy",
    "backoff",
    "decide",
    "describe_exit",
    "failures_in_window",
]


@dataclass(frozen=True)
class RestartPolicy:
    # at most ``burst`` restarts within ``interval`` seconds; one more failure gives up
    burst: int = 5
    interval: float = 300.0
    # the first restart waits ``backoff_first``, each quick failure after it twice as long
    backoff_first: float = 0.5
    backoff_max: float = 30.0
    # a child that ran this long before dying starts its backoff over: it had recovered
    stable_after: float = 60.0


@dataclass(frozen=True)
class Exit:
    started_at: float
    exited_at: float
    # Popen's returncode: negative for the signal that ended it, None when unknown (a child
    # this process did not start, only seen gone)
    returncode: int | None

    @property
    def uptime(self) -> float:
        return max(0.0, self.exited_at - self.started_at)


@dataclass(frozen=True)
class Restart:
    at: float
    delay: float
    attempt: int  # the n-th restart within the interval
    budget: int


@dataclass(frozen=True)
class GiveUp:
    failures: int
    interval: float

    @property
    def reason(self) -> str:
        return f"it failed {self.failures} times within {self.interval:g}s"


def failures_in_window(policy: RestartPolicy, exits: Sequence[Exit], now: float) -> int:
    """The failures the budget counts: those of the last ``interval`` seconds."""
    return sum(1 for e in exits if now - e.exited_at < policy.interval)


def backoff(policy: RestartPolicy, exits: Sequence[Exit]) -> float:
    """The wait before the next start: doubling over the run of quick failures that ends the
    history, back to the first step after a run that lasted ``stable_after``."""
    streak = 0
    for e in reversed(exits):
        streak += 1
        if e.uptime >= policy.stable_after:
            break
    if streak == 0:
        return 0.0
    # capped exponent: a long streak must not overflow the float before the cap applies
    return float(min(policy.backoff_max, policy.backoff_first * 2 ** min(streak - 1, 62)))


def decide(policy: RestartPolicy, exits: Sequence[Exit], now: float) -> Restart | GiveUp:
    """After the last exit of ``exits`` (oldest first): restart, at which time, or give up."""
    failures = failures_in_window(policy, exits, now)
    if failures > policy.burst:
        return GiveUp(failures, policy.interval)
    delay = backoff(policy, exits)
    last = exits[-1].exited_at if exits else now
    return Restart(at=last + delay, delay=delay, attempt=failures, budget=policy.burst)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "is gone (exit status unknown)"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    if returncode == 0:
        return "exited with code 0 (it must not end on its own)"
    return f"exited with code {returncode}"
