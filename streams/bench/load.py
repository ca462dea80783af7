"""`postwire bench load`: the whole pipeline on a throwaway stack (loopback DNS, an SMTP sink on
loopback in relay mode), driven at a scenario's fixed arrival rate through the HTTP API and,
separately, through the raw Kafka door; then the same-run raw baselines.

Per door: warm-up, the scenario, then the drain: probes (one verify request every 0.5 s) go out
from the moment the load stops until 5 s after the last end row landed, so the report shows how
long the backlog took and when latency was back under 250 ms.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from streams.bench.baselines import aiokafka_passthrough_rate, copy_rate
from streams.bench.dns_server import ZoneServer, bench_zone
from streams.bench.load_doors import DOMAINS, Door, Generator, HttpDoor, KafkaDoor
from streams.bench.load_phases import (
    NORMAL_PRIORITY,
    Progress,
    acked,
    drain,
    probes,
    ticker,
    warm_up,
)
from streams.bench.load_profile import Scenario, kinds, schedule
from streams.bench.load_report import (
    Check,
    DoorReport,
    ProcMemory,
    memory_checks,
    summarize,
)
from streams.bench.load_stack import (
    SmtpTarget,
    make_tenants,
    raw_producer,
    stack_settings,
    start_sink,
    wait_healthy,
)
from streams.bench.load_watch import (
    BacklogWatch,
    MemorySampler,
    count_end_rows,
    dead_letters,
    end_rows,
    scrape_state,
    table_sizes,
)
from streams.bench.stacks import Credentials
from streams.settings import Settings
from streams.stack.stack import Stack

__all__ = ["LoadOptions", "LoadResult", "run_load_bench"]

PROBE_AFTER_DRAIN = 5.0


@dataclass(frozen=True)
class LoadOptions:
    scenario: Scenario
    mix: Mapping[str, float]
    doors: tuple[str, ...] = ("http", "kafka")
    workers: int = 1
    partitions: int = 4
    tenants: int = 4
    max_in_flight: int = 10_000
    connections: int = 1000
    timeout: float = 30.0
    drain_timeout: float = 600.0
    baselines: bool = True
    nice: int = -15  # the generator's scheduling priority while it drives the load (0: as is)


@dataclass
class LoadResult:
    options: dict[str, Any]
    doors: list[DoorReport] = field(default_factory=list)
    memory: dict[str, list[ProcMemory]] = field(default_factory=dict)
    memory_checks: dict[str, list[Check]] = field(default_factory=dict)
    backlog_start: dict[str, int | None] = field(default_factory=dict)
    state: dict[str, dict[str, float] | None] = field(default_factory=dict)
    tables: dict[str, tuple[int, int]] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the harness had to do, for the record


def _door(
    name: str, settings: Settings, tenants: list[tuple[str, Credentials]], opts: LoadOptions
) -> Door:
    run = uuid.uuid4().hex[:6]
    if name == "http":
        return HttpDoor(settings, tenants, run, timeout=opts.timeout, connections=opts.connections)
    return KafkaDoor(settings, tenants, run, timeout=opts.timeout)


async def _door_run(
    door: Door,
    opts: LoadOptions,
    conn: asyncpg.Connection[Any],
    tenants: list[str],
    pids: dict[str, int],
    backlog: BacklogWatch,
    progress: Progress,
) -> tuple[DoorReport, list[ProcMemory]]:
    scenario = opts.scenario
    gen = Generator(door, opts.max_in_flight)
    sampler = MemorySampler(pids)
    watch = [asyncio.create_task(sampler.run())]
    progress.phase(f"{scenario.name} via {door.name}: {scenario.describe()}", scenario.requests)
    watch.append(asyncio.create_task(ticker(gen, backlog, progress)))
    try:
        await gen.run(schedule(scenario), kinds(opts.mix))
        watch.pop().cancel()
        stop = asyncio.Event()
        probing = asyncio.create_task(probes(gen, stop))
        deadline = gen.load_end + opts.drain_timeout
        outcome = await drain(conn, tenants, gen, backlog, deadline, progress)
        if outcome == "drained":
            await asyncio.sleep(PROBE_AFTER_DRAIN)
        stop.set()
        await probing
        await gen.settle()
        # the last probes' rows: a few seconds when drained, none to wait for otherwise
        for _ in range(30 if outcome == "drained" else 0):
            if await count_end_rows(conn, tenants) >= acked(gen):
                break
            await asyncio.sleep(0.5)
        rows = await end_rows(conn, tenants)
        dead = await dead_letters(conn, tenants)
    finally:
        for task in watch:
            task.cancel()
    memory = sampler.finish()
    report = summarize(
        door.name,
        scenario,
        gen.sent,
        gen.probes,
        rows,
        start=gen.start_wall,
        load_end=gen.load_end,
        drain=outcome,
        backlog_peak=backlog.peak(gen.start_wall),
        dead=dead,
    )
    return report, memory


def _pids(stack: Stack, extra: dict[str, int]) -> dict[str, int]:
    """Every process of the stack by name, as of now (a restarted worker has a new pid)."""
    return {
        **stack.info.pids,
        **{app.name: app.pid for app in stack.apps if app.pid is not None},
        "generator": os.getpid(),
        **extra,
    }


async def _one_door(
    name: str,
    stack: Stack,
    opts: LoadOptions,
    conn: asyncpg.Connection[Any],
    backlog: BacklogWatch,
    progress: Progress,
    result: LoadResult,
) -> None:
    """Warm the door up on tenants of its own, then run the scenario through it."""
    settings = stack.settings
    tenants = await make_tenants(conn, f"load-{name}", opts.tenants, settings.secret)
    await warm_up(
        name,
        stack,
        conn,
        opts.tenants,
        lambda warm: _door(name, settings, warm, opts),
        progress,
        result.notes,
    )
    result.backlog_start[name] = await backlog.measure()
    pids = _pids(stack, result.options["pids"])
    result.options["pids"] = pids
    door = _door(name, settings, tenants, opts)
    await door.start()
    try:
        ids = [t for t, _ in tenants]
        report, memory = await _door_run(door, opts, conn, ids, pids, backlog, progress)
    finally:
        await door.stop()
    result.doors.append(report)
    result.memory[name] = memory
    result.memory_checks[name] = memory_checks(memory, opts.scenario.seconds)


async def _measure(stack: Stack, opts: LoadOptions, progress: Progress, result: LoadResult) -> None:
    settings = stack.settings
    conn = await asyncpg.connect(settings.dsn)
    backlog = BacklogWatch(settings)
    watching = asyncio.create_task(backlog.run())
    try:
        await wait_healthy(settings.api_base)
        for name in opts.doors:
            await _one_door(name, stack, opts, conn, backlog, progress, result)
        progress.note("reading state-store sizes and table sizes")
        result.state = await scrape_state(settings)
        result.tables = await table_sizes(conn)
    finally:
        watching.cancel()
        await backlog.close()
        await conn.close()


def _prioritize(nice: int, notes: list[str]) -> None:
    """Give the generator (this process only) scheduling priority ``nice``: on a box it shares
    with the stack, a starved generator would send late and so offer less load than scheduled.
    Its CPU time is in the report either way."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as exc:
        notes.append(f"the generator could not take priority {nice} ({exc}); it ran at the default")


def _options(opts: LoadOptions, sink: SmtpTarget) -> dict[str, Any]:
    return {
        "scenario": opts.scenario.name,
        "profile": opts.scenario.describe(),
        "mix": dict(opts.mix),
        "doors": list(opts.doors),
        "workers": opts.workers,
        "partitions": opts.partitions,
        "tenants": opts.tenants,
        "max_in_flight": opts.max_in_flight,
        "timeout": opts.timeout,
        "drain_timeout": opts.drain_timeout,
        "connections": opts.connections,
        "generator_nice": opts.nice,
        "sink": sink.kind,
        "pids": {"smtp sink": sink.pid} if sink.pid is not None else {},
    }


async def run_load_bench(opts: LoadOptions, progress: Progress) -> LoadResult:
    data_dir = Path(tempfile.mkdtemp(prefix="postwire-bench-load-"))
    dns = ZoneServer(bench_zone(DOMAINS), host="127.0.0.1")
    dns.start()
    sink = await asyncio.to_thread(start_sink, data_dir)
    stack = Stack(stack_settings(data_dir, opts.workers, opts.partitions, dns, sink), workers=True)
    result = LoadResult(options=_options(opts, sink))
    finished = False
    try:
        progress.note(f"starting a throwaway stack in {data_dir}")
        await stack.start(detach=False)  # the children keep the usual priority
        _prioritize(opts.nice, result.notes)
        try:
            await _measure(stack, opts, progress, result)
        finally:
            _prioritize(NORMAL_PRIORITY, [])
        if opts.baselines:
            progress.note("baselines: raw producer, aiokafka pass-through, asyncpg COPY")
            if any(r.drain == "timeout" for r in result.doors):
                result.notes.append(
                    "the baselines ran while the pipeline was still working off the backlog "
                    "of a drain that timed out: they shared the cores with it"
                )
            dsn = stack.settings.dsn
            result.baselines = await raw_producer(stack.settings, 5000, 32)
            result.baselines["passthrough_per_s"] = await aiokafka_passthrough_rate(
                stack.settings.kafka, 20000
            )
            result.baselines["copy_per_s"] = await copy_rate(dsn, 20000)
        finished = True
    finally:
        await asyncio.to_thread(stack.stop)
        dns.stop()
        sink.stop()
        if finished:
            await asyncio.to_thread(shutil.rmtree, data_dir, True)
        else:
            progress.note(f"kept {data_dir} (logs/) for a look at what went wrong")
    return result
