"""How `postwire bench load` prints its result: rich tables for people, JSON for machines, and
the rich progress bar it shows while it runs."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from streams.bench.load import LoadResult
from streams.bench.load_profile import Quantiles, format_ms
from streams.bench.load_report import END_ROWS, Check, DoorReport, ProcMemory

__all__ = ["BarProgress", "QuietProgress", "render", "to_json"]


class QuietProgress:
    def note(self, message: str) -> None:
        pass

    def phase(self, description: str, total: int | None) -> None:
        pass

    def update(self, completed: int, status: str) -> None:
        pass


class BarProgress:
    """One bar per phase (warm-up, load, drain) on stderr; notes above it."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
        )
        self.task: Any = None
        self.description = ""

    def __enter__(self) -> BarProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def note(self, message: str) -> None:
        self.console.print(f"[dim]{message}[/]")

    def phase(self, description: str, total: int | None) -> None:
        if description == self.description and self.task is not None:
            self.bar.update(self.task, total=total)
            return
        if self.task is not None:
            self.bar.stop_task(self.task)
        self.description = description
        self.task = self.bar.add_task(description, total=total, status="")

    def update(self, completed: int, status: str) -> None:
        if self.task is not None:
            self.bar.update(self.task, completed=completed, status=status)


def _finite(value: Any) -> Any:
    """JSON has no infinity: a latency of requests that never landed becomes null."""
    if isinstance(value, float) and (math.isinf(value) or math.isnan(value)):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def to_json(result: LoadResult) -> dict[str, Any]:
    figures = dataclasses.asdict(result)
    figures["end_rows"] = END_ROWS
    return dict(_finite(figures))


def _q(q: Quantiles | None) -> str:
    return "-" if q is None else f"{q.text()}  (max {format_ms(q.max)}, n={q.count:,})"


def _mark(check: Check) -> str:
    if check.passed is None:
        return "[yellow]?[/]"
    return "[green]✓[/]" if check.passed else "[red]✗[/]"


def _door_table(r: DoorReport, backlog_start: int | None) -> Table:
    grid = Table("measure", "value", title=f"{r.scenario} via {r.door}: {r.profile}")
    grid.add_row(
        "requests",
        f"scheduled {r.scheduled:,}, sent {r.sent:,}, acknowledged {r.acknowledged:,}, "
        f"end row landed {r.landed:,}",
    )
    grid.add_row(
        "rate",
        f"target {r.target_rate:,.0f}/s, sent {r.send_rate:,.0f}/s, "
        f"acknowledged {r.ack_rate:,.0f}/s, end rows {r.row_rate:,.0f}/s",
    )
    grid.add_row("schedule lag p50 / p95 / p99", _q(r.lag_ms))
    answer = "HTTP 200/202" if r.door == "http" else "Kafka ack"
    for kind, q in r.response_ms.items():
        grid.add_row(f"{kind}: until the {answer}", _q(q))
    grid.add_row("request-to-row, all", _q(r.row_ms))
    for kind, q in r.row_ms_by_kind.items():
        grid.add_row(f"  {kind} (to its {END_ROWS.get(kind, '?')})", _q(q))
    grid.add_row("  sent in the last 5 s of load", _q(r.last_seconds_ms))
    start = "-" if backlog_start is None else f"{backlog_start:,}"
    peak = "-" if r.backlog_peak is None else f"{r.backlog_peak:,}"
    grid.add_row("backlog (records behind, all groups)", f"{start} at the start, peak {peak}")
    if r.drain == "drained" and r.drain_s is not None:
        drain = f"drained {r.drain_s:,.1f} s after the load stopped"
    elif r.drain == "lost":
        drain = f"pipeline idle with {r.lost:,} end rows missing: lost"
    else:
        drain = f"timed out with {r.unlanded:,} end rows still missing (backlog left)"
    grid.add_row("drain", drain)
    grid.add_row("lost (acknowledged, no end row)", f"{r.lost:,}")
    recovered = (
        "latency never back under 250 ms"
        if r.recovered_after_s is None
        else f"< 250 ms from {r.recovered_after_s:,.1f} s after the load stopped"
    )
    failed = f", {r.probes_failed:,} failed" if r.probes_failed else ""
    grid.add_row(f"probes ({r.probes:,}, one per 0.5 s{failed})", f"{_q(r.probe_ms)}; {recovered}")
    errors = ", ".join(f"{k} {v:,}" for k, v in r.errors.items()) or "none"
    grid.add_row("errors", f"{errors} ({r.error_rate:.2%} of scheduled)")
    return grid


def _checks(title: str, checks: list[Check], console: Console) -> None:
    console.print(f"[bold]{title}[/]")
    for c in checks:
        label = {"target": "target ", "harness": "harness "}.get(c.kind, "")
        console.print(f"  {_mark(c)} {label}{c.name:<44} {c.value}")


def _mb(kb: int | None) -> str:
    return "-" if kb is None else f"{kb / 1024:,.0f} MB"


def _memory_table(door: str, procs: list[ProcMemory]) -> Table:
    grid = Table(
        "process",
        "pid",
        "peak VmHWM",
        "RSS at 1 min",
        "RSS max sampled",
        "RSS at end",
        "CPU",
        title=f"processes during the {door} run (VmRSS sampled every second, CPU until drained)",
    )
    for p in procs:
        cpu = "-" if p.cpu_s is None else f"{p.cpu_s:,.1f} s"
        grid.add_row(
            p.name,
            str(p.pid),
            _mb(p.hwm_kb),
            _mb(p.rss_at(60.0)),
            _mb(p.max_kb),
            _mb(p.end_kb),
            cpu,
        )
    return grid


def render(result: LoadResult, console: Console) -> None:
    o = result.options
    mix = ", ".join(f"{k} {v:.0%}" for k, v in o["mix"].items())
    console.print(
        f"[bold]bench load {o['scenario']}[/]: {o['profile']}; mix {mix}; "
        f"{o['workers']} worker slot(s), {o['partitions']} partitions, {o['tenants']} tenants; "
        f"SMTP to {o['sink']}; generator at nice {o['generator_nice']}, "
        f"up to {o['max_in_flight']:,} in flight over {o['connections']:,} HTTP connections"
    )
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    for report in result.doors:
        console.print(_door_table(report, result.backlog_start.get(report.door)))
        _checks(f"thresholds, {report.scenario} via {report.door}", report.checks, console)
        procs = result.memory.get(report.door, [])
        console.print(_memory_table(report.door, procs))
        _checks(f"memory, {report.door} run", result.memory_checks.get(report.door, []), console)
    state = Table("worker process", "postwire_state_entries by store", title="state at the end")
    for name, stores in result.state.items():
        if stores is None:
            text = "n/a (/metrics not reachable)"
        elif not stores:
            text = "n/a (gauge absent)"
        else:
            text = ", ".join(f"{k}={v:,.0f}" for k, v in sorted(stores.items()))
        state.add_row(name, text)
    console.print(state)
    tables = Table("table", "rows", "size", title="tables at the end")
    for name, (rows, size) in result.tables.items():
        tables.add_row(name, f"{rows:,}", f"{size / 1024 / 1024:,.1f} MB")
    console.print(tables)
    if result.baselines:
        b = result.baselines
        base = Table("same-run baseline", "value")
        base.add_row(
            "raw aiokafka producer (acks=all, idempotent, 32 in flight)",
            f"{b['raw_producer_per_s']:,.0f} records/s, p50 {b['raw_producer_p50_ms']:.1f} ms, "
            f"p99 {b['raw_producer_p99_ms']:.1f} ms",
        )
        base.add_row(
            "aiokafka pass-through (consume + produce)", f"{b['passthrough_per_s']:,.0f} msg/s"
        )
        base.add_row("asyncpg COPY", f"{b['copy_per_s']:,.0f} rows/s")
        console.print(base)
