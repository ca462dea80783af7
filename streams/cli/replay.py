"""`postwire replay`: re-read a time range of a topic into the sinks, or through the verify stage
(the work is in streams/replay/)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from streams.cli.common import err, fail, out, settings
from streams.errors import PostwireError, ReplayError
from streams.settings import Settings

if TYPE_CHECKING:
    from streams.replay.plan import ReplaySummary

__all__ = ["replay"]

TIME_HELP = (
    "ISO 8601 (2025-05-01T12:00:00; without a UTC offset it is taken as UTC) or relative to now"
    " (-30s, -15m, -2h, -1d, -1w)."
)


def replay(
    from_: Annotated[str, typer.Option("--from", help=f"Start of the range: {TIME_HELP}")],
    to: Annotated[
        str | None,
        typer.Option("--to", help=f"End of the range (exclusive), default now: {TIME_HELP}"),
    ] = None,
    topic: Annotated[
        str | None,
        typer.Option(
            help="Topic to re-read, with or without the prefix (accepted, events, verifications,"
            " suppressions, rejections); with --stage, default the stage's input."
        ),
    ] = None,
    into_sinks: Annotated[
        bool,
        typer.Option(
            "--into-sinks",
            help="Re-apply the range to PostgreSQL with the sinks' mapping and idempotent writer.",
        ),
    ] = False,
    stage: Annotated[
        str | None,
        typer.Option(
            help="Re-run this stage over the range under a new consumer group (only verify:"
            " the gate and deliver are refused, see the README)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only a JSON summary.")] = False,
) -> None:
    """Re-read a time range of a topic (offsets found with the broker's time index, up to the
    end offsets at the start) and re-apply it: --into-sinks writes it to PostgreSQL again (rows
    already there stay as they are, missing ones come back), --stage verify verifies it again.
    Prints a progress bar, then a summary."""
    from streams.replay.plan import stage_input, time_window

    if into_sinks == (stage is not None):
        raise fail("give exactly one of --into-sinks and --stage NAME", 2)
    s = settings()
    try:
        start, end = time_window(from_, to, datetime.now(UTC))
        if stage is not None:
            wanted = stage_input(stage, s.topics)
            if topic is not None and topic not in (
                wanted,
                wanted.removeprefix(f"{s.topic_prefix}."),
            ):
                raise fail(f"--stage {stage} reads {wanted}, not {topic}", 2)
            topic = wanted
        elif topic is None:
            raise fail("--into-sinks needs --topic", 2)
        summary = _replay(s, topic, stage, start, end, show=not as_json)
    except ReplayError as exc:
        # the invocation is at fault (time, topic, stage): a usage error
        raise fail(str(exc), 2) from None
    except PostwireError as exc:
        raise fail(str(exc), 1) from None
    if as_json:
        out.print_json(orjson.dumps(summary.to_json()).decode())
    else:
        _print(summary)


def _replay(
    s: Settings, topic: str, stage: str | None, start: datetime, end: datetime, *, show: bool
) -> ReplaySummary:
    from streams.replay.into_sinks import replay_into_sinks
    from streams.replay.stage import replay_stage

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("offsets"),
        TimeElapsedColumn(),
        console=err,
        disable=not show,
    )
    task = bar.add_task(f"replaying {topic}", total=None)

    def progress(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    work: Coroutine[Any, Any, ReplaySummary] = (
        replay_into_sinks(s, topic, start, end, progress)
        if stage is None
        else replay_stage(s, stage, start, end, progress)
    )
    with bar:
        return asyncio.run(work)


def _print(summary: ReplaySummary) -> None:
    grid = Table("measure", "value")
    grid.add_row("topic", summary.topic)
    grid.add_row(
        "range (UTC)", f"{summary.start:%Y-%m-%d %H:%M:%S} .. {summary.end:%Y-%m-%d %H:%M:%S}"
    )
    grid.add_row(
        "offsets",
        ", ".join(f"p{r.partition} {r.start}..{r.end}" for r in summary.ranges) or "-",
    )
    grid.add_row("records read", f"{summary.records:,}")
    if summary.group is not None:
        grid.add_row("stage / consumer group", f"{summary.stage} / {summary.group}")
    for name, count in sorted(summary.produced.items()):
        grid.add_row(f"produced to {name}", f"{count:,}")
    for table in summary.before:
        grid.add_row(
            f"{table}: rows upserted / changed",
            f"{summary.rows.get(table, 0):,} / {summary.changed.get(table, 0):,}",
        )
        grid.add_row(
            f"{table}: rows before -> after",
            f"{summary.before[table]:,} -> {summary.after.get(table, 0):,}",
        )
    grid.add_row("dead-lettered", f"{summary.dead_lettered:,}")
    grid.add_row("took", f"{summary.seconds:,.1f} s ({summary.per_second:,.0f} records/s)")
    out.print(grid)
