"""The phases of a `postwire bench load` door run around the scenario itself: the warm-up
(with the restart of workers caught by faust's start-up race), the progress ticker, the
probes and the drain."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from typing import Any, Protocol

import asyncpg

from streams.bench.load_doors import Door, Generator
from streams.bench.load_profile import Scenario, Stage, kinds, schedule
from streams.bench.load_report import Drain
from streams.bench.load_stack import make_tenants
from streams.bench.load_watch import BacklogWatch, count_end_rows
from streams.bench.stacks import Credentials
from streams.errors import BenchError
from streams.stack.process import ManagedProcess
from streams.stack.stack import WORKER_ROLES, Stack

__all__ = [
    "PROBE_EVERY",
    "WARM",
    "Progress",
    "acked",
    "drain",
    "probes",
    "ticker",
    "warm_up",
]

PROBE_EVERY = 0.5
STARTUP_RACE = "PartitionsMismatch"
NORMAL_PRIORITY = os.getpriority(os.PRIO_PROCESS, 0)
IDLE_LOST = 10.0  # no backlog and no new row for this long: the missing rows are lost
WARM = Scenario("warm-up", (Stage(5, 100),))


class Progress(Protocol):
    def note(self, message: str) -> None: ...

    def phase(self, description: str, total: int | None) -> None: ...

    def update(self, completed: int, status: str) -> None: ...


async def ticker(gen: Generator, backlog: BacklogWatch | None, progress: Progress) -> None:
    last, last_t = 0, time.monotonic()
    while True:
        await asyncio.sleep(0.5)
        now, sent = time.monotonic(), len(gen.sent)
        rate = (sent - last) / (now - last_t)
        last, last_t = sent, now
        current = None if backlog is None else backlog.current
        queued = "?" if current is None else f"{current:,}"
        progress.update(
            sent,
            f"{rate:,.0f}/s, {gen.in_flight:,} in flight, {gen.errors:,} errors, backlog {queued}",
        )


async def probes(gen: Generator, stop: asyncio.Event) -> None:
    while not stop.is_set():
        await gen.probe("verify")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PROBE_EVERY)


def acked(gen: Generator) -> int:
    return sum(1 for s in (*gen.sent, *gen.probes) if s.error is None and s.request_id)


async def drain(
    conn: asyncpg.Connection[Any],
    tenants: list[str],
    gen: Generator,
    backlog: BacklogWatch,
    deadline: float,
    progress: Progress,
) -> Drain:
    """Wait until every acknowledged request of the schedule has its end row: ``drained``; or
    the pipeline has had no backlog and landed none of them for IDLE_LOST s: ``lost``; or
    ``timeout``. The probes, which keep going out meanwhile, are left out of the count."""
    best, idle_since = -1, None
    while True:
        probe_ids = [p.request_id for p in gen.probes if p.request_id]
        landed = await count_end_rows(conn, tenants, exclude=probe_ids)
        progress.phase("draining", gen.acked)
        queued = "?" if backlog.current is None else f"{backlog.current:,}"
        progress.update(landed, f"backlog {queued} records, {gen.pending:,} unanswered")
        if landed >= gen.acked and gen.pending == 0:
            return "drained"
        now = time.monotonic()
        if backlog.current == 0 and landed <= best and gen.pending == 0:
            idle_since = idle_since or now
            if now - idle_since >= IDLE_LOST:
                return "lost"
        else:
            idle_since = None
        best = max(best, landed)
        if time.time() > deadline:
            return "timeout"
        await asyncio.sleep(1.0)


def stuck_workers(stack: Stack) -> list[ManagedProcess]:
    """Worker processes whose agents crash on faust's start-up race (a table's changelog topic
    created, but not yet in the worker's metadata: PartitionsMismatch, forever)."""
    return [
        app
        for app in stack.apps
        if app.name.startswith(WORKER_ROLES) and STARTUP_RACE in app.log_tail(200)
    ]


async def warm(
    conn: asyncpg.Connection[Any], door: Door, tenants: list[str], progress: Progress
) -> int:
    """Run the warm-up through ``door``; how many of its requests got their end row (waiting
    until all did, or nothing new landed for 30 s, or 180 s)."""
    gen = Generator(door, 10_000)
    progress.phase(f"warm-up via {door.name}: {WARM.describe()}", WARM.requests)
    ticking = asyncio.create_task(ticker(gen, None, progress))
    try:
        await gen.run(schedule(WARM), kinds({"verify": 0.5, "send": 0.5}))
        await gen.settle()
    finally:
        ticking.cancel()
    if gen.errors:
        raise BenchError(f"{gen.errors} of {WARM.requests} warm-up requests via {door.name} failed")
    began = time.monotonic()
    best, rising = -1, began
    # only rows that ended well: a worker caught by the race dead-letters what it touches
    while (landed := await count_end_rows(conn, tenants, failures=False)) < WARM.requests:
        now = time.monotonic()
        if landed > best:
            best, rising = landed, now
        elif now - rising > 30 or now - began > 180:
            break
        await asyncio.sleep(0.5)
    return landed


async def restart(apps: list[ManagedProcess]) -> None:
    for app in apps:
        await asyncio.to_thread(app.stop)
        pid = app.start(detach=False)
        # the child inherited the generator's raised priority: give it the usual one
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, NORMAL_PRIORITY)


async def warm_up(
    name: str,
    stack: Stack,
    conn: asyncpg.Connection[Any],
    tenants: int,
    make_door: Callable[[list[tuple[str, Credentials]]], Door],
    progress: Progress,
    notes: list[str],
) -> None:
    """Warm the door up on tenants of its own. Workers hit by faust's start-up race are
    restarted once and the warm-up repeated; the requests the race cost are in the notes."""
    settings = stack.settings
    for attempt in (1, 2):
        keys = await make_tenants(conn, f"warm{attempt}-{name}", tenants, settings.secret)
        await asyncio.sleep(settings.directory_refresh + 1)  # every process knows the keys
        door = make_door(keys)
        await door.start()
        try:
            landed = await warm(conn, door, [t for t, _ in keys], progress)
        finally:
            await door.stop()
        missing = WARM.requests - landed
        if not missing:
            return
        stuck = stuck_workers(stack)
        if attempt == 1 and stuck:
            names = ", ".join(app.name for app in stuck)
            note = (
                f"{names} hit {STARTUP_RACE} at first start (a faust start-up race) and "
                f"{missing} of {WARM.requests} warm-up requests never got their end row; "
                "restarted and warmed up again"
            )
            progress.note(note)
            notes.append(note)
            await restart(stuck)
            continue
        if landed >= 0.95 * WARM.requests:
            note = f"warm-up via {name}: {missing} of {WARM.requests} requests never landed"
            progress.note(note)
            notes.append(note)
            return
        raise BenchError(
            f"the warm-up via {name}: only {landed} of {WARM.requests} end rows landed; "
            f"logs in {settings.data_dir}/logs"
        )
