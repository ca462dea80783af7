"""The `postwire` command line (typer + rich)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from streams.errors import PostwireError
from streams.settings import Settings

__all__ = ["app", "main"]

app = typer.Typer(
    help="postwire: a Kafka-native email pipeline.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database commands.", no_args_is_help=True)
schemas_app = typer.Typer(help="Avro contract commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(schemas_app, name="schemas")

out = Console()
err = Console(stderr=True)
T = TypeVar("T")


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except PostwireError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None


def _settings() -> Settings:
    return Settings()


@app.command()
def up(
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Start in the background and return.")
    ] = False,
    workers: Annotated[
        bool, typer.Option(help="Also start the faust worker and the sinks.")
    ] = True,
) -> None:
    """Start Kafka, PostgreSQL, topics, migrations, the worker and the sinks; run until Ctrl-C."""
    from streams.stack.stack import Stack

    stack = Stack(_settings(), workers=workers)
    raise typer.Exit(_run(_up(stack, detach=detach)))


async def _up(stack: Any, *, detach: bool) -> int:
    stop = asyncio.Event()
    if not detach:
        # installed before anything starts: a Ctrl-C at any moment goes through the orderly stop
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
    info = await stack.start(detach=detach)
    out.print(f"[bold green]postwire is up[/] in {info.started_in:.1f}s")
    out.print(f"  kafka bootstrap : {info.bootstrap}")
    out.print(f"  database url    : {info.database_url}")
    out.print(f"  data dir        : {info.data_dir}")
    for name, pid in info.pids.items():
        out.print(f"  {name:<16}: pid {pid}")
    if detach:
        out.print("stop it with `postwire down`")
        return 0
    out.print("press Ctrl-C to stop")
    code = 0
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.5)
            dead = stack.dead_child()
            if dead is not None and not stop.is_set():
                err.print(
                    f"[bold red]error:[/] {dead.name} exited; its log ({dead.log_path}) ends:"
                )
                err.print(dead.log_tail(), markup=False, highlight=False)
                code = 1
                break
    finally:
        out.print("stopping...")
        await asyncio.to_thread(stack.stop)
        out.print("stopped")
    return code


@app.command()
def down() -> None:
    """Stop a stack started with `postwire up --detach`."""
    from streams.stack.stack import stop_detached

    stopped = stop_detached(_settings())
    if not stopped:
        out.print("nothing was running")
    for name, pid in stopped.items():
        out.print(f"stopped {name} (pid {pid})")


@app.command()
def worker(
    stage: Annotated[list[str] | None, typer.Option(help="Stage(s) to run; default all.")] = None,
) -> None:
    """Run the faust worker (all stages, or those named) against the configured cluster."""
    from streams.worker import STAGES, run_worker

    run_worker(_settings(), tuple(stage) if stage else STAGES)


@app.command()
def sink(
    table: Annotated[list[str] | None, typer.Option(help="Table(s) to sink; default all.")] = None,
) -> None:
    """Run the Kafka -> PostgreSQL sinks until SIGINT/SIGTERM."""
    from sinks.runner import run_sinks

    settings = _settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_sinks(settings, tuple(table) if table else None, stop)

    _run(main())


@app.command()
def topics() -> None:
    """Create any missing postwire topics and list them."""
    from streams.topics import ensure_topics, topic_specs

    settings = _settings()
    created = set(_run(ensure_topics(settings)))
    grid = Table("topic", "partitions", "cleanup", "purpose", "")
    for spec in topic_specs(settings):
        grid.add_row(
            spec.name,
            str(spec.partitions),
            "compact" if spec.compacted else "delete",
            spec.purpose,
            "created" if spec.name in created else "",
        )
    out.print(grid)


@db_app.command("migrate")
def db_migrate() -> None:
    """Apply pending SQL migrations."""
    from sinks.migrate import apply_migrations

    applied = _run(apply_migrations(_settings().dsn))
    if not applied:
        out.print("database is up to date")
    for m in applied:
        out.print(f"applied {m.version:04d}_{m.name}")


@schemas_app.command("snapshot")
def schemas_snapshot() -> None:
    """Record changed schemas as new versions under schemas/history (run before a release)."""
    from streams.schema_registry import snapshot_history

    written = snapshot_history()
    for path in written:
        out.print(f"wrote {path}")
    if not written:
        out.print("every schema matches its latest released version")


def main() -> None:
    app()
