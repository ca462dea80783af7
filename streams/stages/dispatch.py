"""The scheduler's I/O shell: hands out the send turns ``Scheduler.grant`` decides, starts each
send as a task of its own, and looks again when a send finishes, a task arrives or the earliest
site's rate allows the next message."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from streams.deliver.schedule import Capacity, Scheduler, Turn

__all__ = ["Dispatcher"]

log = logging.getLogger("postwire.deliver")
T = TypeVar("T")
_MIN_SLEEP = 0.0005  # a rate's next token a hair away: no busy loop


class Dispatcher(Generic[T]):
    """``send(item)`` runs in a task per granted turn and must settle the item itself;
    ``postpone(item, until)`` parks an item the scheduler handed back (a long wait). A turn
    frees its site's connection when its send ends, and its slot of the lane's concurrency only
    at ``settled``, which the lane calls once the outcome is acknowledged: the sends a crash can
    repeat (in flight, or finished and not yet in the ledger's changelog) never number more
    than the scheduler's concurrency."""

    def __init__(
        self,
        scheduler: Scheduler[T],
        capacity: Capacity,
        send: Callable[[T], Awaitable[None]],
        postpone: Callable[[T, float], Awaitable[None]],
        now: Callable[[], float],
    ) -> None:
        self.scheduler = scheduler
        self.capacity = capacity
        self._send = send
        self._postpone = postpone
        self._now = now
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    def push(self, site: str, tenant: str, item: T) -> None:
        self.scheduler.push(site, tenant, item)
        self._wake.set()
        if self._loop is None or self._loop.done():
            if self._loop is not None and not self._loop.cancelled() and self._loop.exception():
                log.error("deliver: the dispatcher had stopped", exc_info=self._loop.exception())
            self._loop = asyncio.get_running_loop().create_task(self._dispatch())

    def release(self) -> list[T]:
        """Every item still waiting for a turn, taken out; started sends go on."""
        return list(self.scheduler.drain())

    async def _dispatch(self) -> None:
        while True:
            self._wake.clear()
            grants = self.scheduler.grant(self._now(), self.capacity)
            for turn in grants.turns:
                task = asyncio.get_running_loop().create_task(self._turn(turn))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            for item, until in grants.postponed:
                await self._postpone(item, until)
            if self._wake.is_set():
                continue
            timeout = None
            if grants.wake_at is not None:
                timeout = max(grants.wake_at - self._now(), _MIN_SLEEP)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _turn(self, turn: Turn[T]) -> None:
        try:
            await self._send(turn.item)
        finally:
            self.scheduler.sent(turn.site)  # its connection may carry the next send
            self._wake.set()

    def settled(self, n: int) -> None:
        """``n`` finished sends' outcomes (the ledger among them) are acknowledged: their slots
        of the lane's concurrency may carry the next sends."""
        if n:
            self.scheduler.settled(n)
            self._wake.set()

    async def close(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None
