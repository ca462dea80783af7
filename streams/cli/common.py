"""What every `postwire` command module shares: consoles, settings, the async runner."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import typer
from rich.console import Console

from streams.errors import ConfigError, PostwireError
from streams.settings import Settings

__all__ = ["err", "fail", "out", "run", "settings", "with_db"]

# soft wrap: a long URL or path stays on one line, so it can be copied (and grepped) whole
out = Console(soft_wrap=True)
err = Console(stderr=True)
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; a PostwireError becomes one red sentence and exit code 1."""
    try:
        return asyncio.run(coro)
    except PostwireError as exc:
        err.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from None


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def settings() -> Settings:
    """The settings; a knob that cannot work (ConfigError) is one red sentence and exit 2."""
    try:
        return Settings()
    except ConfigError as exc:
        raise fail(str(exc), 2) from None


async def with_db(work: Callable[[Any], Awaitable[T]]) -> T:
    import asyncpg

    conn = await asyncpg.connect(settings().dsn)
    try:
        return await work(conn)
    finally:
        await conn.close()
