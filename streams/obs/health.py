"""Readiness and liveness, the same way in every process.

A process is *ready* (``/healthz`` 200) when it can do its job now: its parts run (stages
assigned and recovered, sinks consuming) and the dependencies it needs answer. A dependency is
asked by a :class:`Probe` in the background, every few seconds with a short timeout, so the
request handler only reads the last answer and never waits on a frozen server. *Alive*
(``/livez`` 200) only says the event loop answers and the process is not stopping: a supervisor
restarts on that, and takes the process out of service on the other.

:func:`verdict` is the pure part: the checks in, ``ok`` and the reasons out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Check",
    "Probe",
    "ProbeResult",
    "Verdict",
    "phase_checks",
    "probe_check",
    "verdict",
]

log = logging.getLogger("postwire.health")


@dataclass(frozen=True)
class Check:
    """One condition of readiness: ``reason`` says what is wrong when it does not hold."""

    name: str
    ok: bool
    reason: str = ""
    detail: Any = None  # JSON-safe, shown in the body under ``name``


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reasons: list[str]
    details: dict[str, Any]

    def body(self) -> dict[str, Any]:
        return {"ok": self.ok, "reasons": self.reasons, **self.details}


def verdict(checks: Iterable[Check]) -> Verdict:
    """Ready when every check holds; the reasons of those that do not, in order."""
    found = list(checks)
    reasons = [c.reason or c.name for c in found if not c.ok]
    details = {c.name: c.detail for c in found if c.detail is not None}
    return Verdict(not reasons, reasons, details)


@dataclass(frozen=True)
class ProbeResult:
    """What a probe last saw: ``ok`` None before its first answer; times are monotonic."""

    ok: bool | None = None
    error: str | None = None
    checked_at: float | None = None
    ok_at: float | None = None


def probe_check(name: str, result: ProbeResult, now: float, stale_after: float) -> Check:
    """A probe's last answer as a check. An answer older than ``stale_after`` counts as none:
    the probe itself is stuck, so nothing vouches for the dependency."""
    since = None if result.ok_at is None else round(now - result.ok_at, 1)
    detail: dict[str, Any] = {"ok": bool(result.ok), "last_ok_s_ago": since}
    if result.ok is None or result.checked_at is None:
        return Check(name, False, f"{name} not checked yet", detail)
    if now - result.checked_at > stale_after:
        age = now - result.checked_at
        return Check(name, False, f"{name} probe stale: last answer {age:.0f} s ago", detail)
    if not result.ok:
        detail["error"] = result.error
        return Check(name, False, f"{name} unreachable: {result.error}", detail)
    return Check(name, True, detail=detail)


def phase_checks(kind: str, phases: Mapping[str, str]) -> list[Check]:
    """One check per part (stage, sink) from its phase: ``running`` holds; anything else
    (``starting``, ``rebalancing``, ``recovering [0, 1]``, ``failing: ...``) is the reason, e.g.
    ``recovering gate[0, 1]``."""
    checks = []
    for name, phase in phases.items():
        word, _, rest = phase.partition(" ")
        reason = f"{word} {name}{rest}" if rest.startswith("[") else f"{kind} {name} {phase}"
        checks.append(Check(f"{kind}:{name}", phase == "running", reason))
    return checks


class Probe:
    """Runs ``check`` every ``interval`` seconds, each try bounded by ``timeout``, and keeps the
    last answer. A check raises to say the dependency is not usable."""

    def __init__(
        self,
        name: str,
        check: Callable[[], Awaitable[Any]],
        *,
        interval: float,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._check = check
        self.interval = interval
        self.timeout = timeout
        self._clock = clock
        self.result = ProbeResult()
        self._task: asyncio.Task[None] | None = None

    @property
    def stale_after(self) -> float:
        # a few missed rounds, not one slow one: the loop may be busy for a moment
        return 3 * (self.interval + self.timeout)

    def check(self) -> Check:
        return probe_check(self.name, self.result, self._clock(), self.stale_after)

    async def once(self) -> bool:
        began = self._clock()
        try:
            async with asyncio.timeout(self.timeout):
                await self._check()
        except Exception as exc:  # noqa: BLE001 - any failure is the answer; the probe goes on
            text = f"timed out after {self.timeout:g} s" if isinstance(exc, TimeoutError) else ""
            error = text or f"{type(exc).__name__}: {exc}"
            if self.result.ok is not False:
                log.warning("%s probe failed: %s", self.name, error)
            self.result = ProbeResult(False, error[:300], began, self.result.ok_at)
            return False
        if self.result.ok is False:
            log.info("%s probe answers again", self.name)
        self.result = ProbeResult(True, None, began, began)
        return True

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Probe until ``stop`` is set (or the task is cancelled)."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            await self.once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"probe-{self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        closing = getattr(self._check, "close", None)  # a check holding a connection
        if closing is not None:
            await closing()
