"""Group commit for rows a handler must see stored before it answers: the rows of every
handler waiting at that moment go to the database in one transaction, so the answer rate is
not bounded by one commit (a WAL flush) per request."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["GroupCommit"]

T = TypeVar("T")


class GroupCommit(Generic[T]):
    """``await add(row)`` returns once ``write`` stored a batch holding the row, or raises what
    that write raised. A row arriving while nothing is being written goes at once (no linger:
    at low load each row is its own batch); rows arriving while ``writers`` batches are in
    flight wait for the next one."""

    def __init__(
        self,
        write: Callable[[Sequence[T]], Awaitable[None]],
        *,
        max_batch: int = 500,
        writers: int = 2,
    ) -> None:
        if max_batch < 1 or writers < 1:
            raise ValueError("max_batch and writers must be at least 1")
        self._write = write
        self._max_batch = max_batch
        self._writers = writers
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._active: set[asyncio.Task[None]] = set()

    @property
    def waiting(self) -> int:
        return len(self._pending)

    async def add(self, row: T) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._pending.append((row, future))
        if len(self._active) < self._writers:
            task = asyncio.create_task(self._drain())
            self._active.add(task)
            task.add_done_callback(self._active.discard)
        # a handler that gives up still gets its row written: the write is idempotent
        await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                await self._write([row for row, _ in batch])
            except asyncio.CancelledError:
                _settle(batch, asyncio.CancelledError())
                raise
            except Exception as exc:  # noqa: BLE001 - every waiter of the batch gets its cause
                _settle(batch, exc)
            else:
                _settle(batch, None)

    async def close(self) -> None:
        """Wait for the batches in flight (and the rows queued behind them)."""
        while self._active:
            await asyncio.gather(*self._active, return_exceptions=True)


def _retrieve(future: asyncio.Future[None]) -> None:
    # marks the exception as seen when the handler that waited for it is gone
    if not future.cancelled():
        future.exception()


def _settle(
    batch: Sequence[tuple[object, asyncio.Future[None]]], exc: BaseException | None
) -> None:
    for _, future in batch:
        if future.done():
            continue
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)
