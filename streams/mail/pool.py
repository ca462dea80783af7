"""The SMTP connection pool: sessions kept between messages, per destination (the relay, or one
MX host and port).

Opening a connection costs a TCP handshake, a greeting, EHLO and often STARTTLS and AUTH: far
more than the message itself. So sessions are kept open and reused for up to
``max_messages`` messages, and closed once idle longer than ``idle_timeout``.

Connection slots come from a ``ConnectionBudget``, per group (for delivery the destination site:
every MX host of a provider is one group): in process (``LocalSlots``) or shared by every worker
process through PostgreSQL (``streams/db/slots.py``), so a group's concurrency limit is one budget
shared with everything else that counts against it. A slot the budget no longer vouches for (its
``held`` is False: the shared budget lost its database session) ends its session as soon as it is
idle. When a group is at its limit a sender waits, first in line, and is handed the next
connection released for its destination, so a steady stream of new senders cannot starve it;
after ``wait`` seconds it gives up (``acquire`` returns None) and the caller defers the message.

A connection here only holds its session state; opening and speaking SMTP is the transport's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiosmtplib

from streams.mail.wire import Wire

__all__ = ["Connection", "ConnectionBudget", "LocalSlots", "Pool", "Slot"]

# Other users of the throttle (another lane's pool) free slots without telling this pool, so a
# waiter also looks again this often.
_POLL = 0.25


class Slot:
    """One session's place in its group's budget: ``number`` in 0..N-1 of a group limited to N.
    ``held`` turns False when the budget can no longer vouch for it (a shared budget that lost
    its database session): the session is then closed as soon as it is not in use."""

    __slots__ = ("group", "held", "number")

    def __init__(self, group: str, number: int) -> None:
        self.group = group
        self.number = number
        self.held = True

    def __repr__(self) -> str:
        return f"Slot({self.group!r}, {self.number}, held={self.held})"


class ConnectionBudget(Protocol):
    """Who says how many sessions a group may have open. Taking a slot may ask another process
    (the shared budget asks PostgreSQL), so it is async; giving one back never waits."""

    async def open_connection(self, group: str) -> Slot | None:
        """A slot for one more session of ``group``, or None at its limit."""
        ...

    def close_connection(self, slot: Slot) -> None: ...

    def on_lost(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` when slots stop being held (the pool then closes idle sessions)."""
        ...


class LocalSlots:
    """The in-process budget: at most ``limit(group)`` slots of a group taken at once in this
    process (the verifier's probe, tests and benches, and delivery without shared limits)."""

    shared = False

    def __init__(self, limit: Callable[[str], int]) -> None:
        self._limit = limit
        self._taken: dict[str, set[int]] = {}

    async def open_connection(self, group: str) -> Slot | None:
        return self.take(group)

    def take(self, group: str) -> Slot | None:
        taken = self._taken.setdefault(group, set())
        limit = self._limit(group)
        number = next((n for n in range(limit) if n not in taken), None)
        if number is None:
            if not taken:
                del self._taken[group]
            return None
        taken.add(number)
        return Slot(group, number)

    def close_connection(self, slot: Slot) -> None:
        taken = self._taken.get(slot.group)
        if taken is None or slot.number not in taken:
            # giving back what was never taken is a bookkeeping bug that would hand out extra
            # slots
            raise ValueError(f"no open connection in {slot.group!r} holds slot {slot.number}")
        taken.discard(slot.number)
        if not taken:
            del self._taken[slot.group]

    def held(self, group: str) -> int:
        return len(self._taken.get(group, ()))

    def status(self) -> dict[str, Any]:
        """For the worker's health page."""
        held = sum(len(taken) for taken in self._taken.values())
        return {"shared": False, "held": held, "sites": len(self._taken)}

    def on_lost(self, callback: Callable[[], object]) -> None:
        return None  # nothing here is ever lost

    async def close(self) -> None:
        return None


class Connection:
    """One SMTP session slot. ``client`` is None until the transport has opened it."""

    __slots__ = (
        "address",
        "chunking",
        "client",
        "group",
        "host",
        "key",
        "last_used",
        "max_messages",
        "pipelining",
        "sent",
        "size_limit",
        "slot",
        "smtputf8",
        "tls",
        "wire",
    )

    def __init__(self, key: str, host: str, slot: Slot) -> None:
        self.key = key  # the pool's destination: "host:port"
        self.host = host  # the name TLS verifies
        self.slot = slot  # its place in the budget of its group
        self.group = slot.group  # the budget's group (the site): shared by its hosts
        self.client: aiosmtplib.SMTP | None = None
        self.address = ""  # what was actually connected to
        self.sent = 0  # transactions started on this session
        self.max_messages = 0  # transactions it may carry before it is closed (set by the pool)
        self.last_used = 0.0
        self.tls = False
        self.smtputf8 = False
        self.size_limit = False  # the server announced SIZE, so MAIL FROM carries the size
        self.pipelining = False  # the server announced PIPELINING (RFC 2920)
        self.chunking = False  # the server announced CHUNKING (RFC 3030 BDAT)
        self.wire: Wire | None = None  # reads the transaction's replies (wire.py)

    @property
    def is_open(self) -> bool:
        return self.client is not None and self.client.is_connected


@dataclass(eq=False)
class _Waiter:
    key: str
    future: asyncio.Future[Connection | None]


class Pool:
    def __init__(
        self,
        throttle: ConnectionBudget,
        *,
        max_messages: int,
        idle_timeout: float,
        wait: float,
        quit_timeout: float = 5.0,
    ) -> None:
        self._throttle = throttle
        self._max_messages = max_messages
        self._idle_timeout = idle_timeout
        self._wait = wait
        self._quit_timeout = quit_timeout
        self._idle: dict[str, list[Connection]] = {}
        self._waiters: dict[str, deque[_Waiter]] = {}  # by budget group
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False
        self.opened = 0  # slots handed out for new sessions, for tests and metrics
        # a budget that loses its slots says so: close what is idle now, not at the next prune
        throttle.on_lost(self.prune)

    def _usable(self, conn: Connection, now: float) -> bool:
        return (
            conn.is_open
            and conn.slot.held
            and now - conn.last_used <= self._idle_timeout
            and conn.sent < conn.max_messages
        )

    def _take_idle(self, key: str) -> Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            # the most recently used first: the others are then the ones that go idle and close
            conn = idle.pop()
            if self._usable(conn, now):
                return conn
            self._retire(conn, polite=conn.is_open)
        return None

    async def acquire(
        self, key: str, host: str, group: str, max_messages: int | None = None
    ) -> Connection | None:
        """A pooled session to ``key`` (``host``, of the budget group ``group``), or a fresh slot
        (``client`` None) for the caller to open, or None if none came free within the pool's
        wait. ``max_messages``: what a new session may carry, if less than the pool's own."""
        if self._closed:
            return None
        conn = self._take_idle(key)
        if conn is not None:
            return conn
        deadline: float | None = None
        while True:
            slot = await self._throttle.open_connection(group)
            if slot is not None:
                if self._closed:
                    self._throttle.close_connection(slot)
                    return None
                self.opened += 1
                conn = Connection(key, host, slot)
                conn.max_messages = min(max_messages or self._max_messages, self._max_messages)
                return conn
            self._evict_idle(group, key)
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self._wait
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            conn = await self._wait_turn(key, group, min(remaining, _POLL))
            if conn is not None:
                return conn
            if self._closed:
                return None
            conn = self._take_idle(key)
            if conn is not None:
                return conn

    async def _wait_turn(self, key: str, group: str, timeout: float) -> Connection | None:
        loop = asyncio.get_running_loop()
        waiter = _Waiter(key, loop.create_future())
        queue = self._waiters.setdefault(group, deque())
        queue.append(waiter)
        # a timer rather than wait_for: a connection handed over as the timeout fires must not
        # be dropped on the floor
        timer = loop.call_later(timeout, _settle, waiter.future)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            future = waiter.future
            if future.done() and not future.cancelled() and future.result() is not None:
                conn = future.result()
                assert conn is not None
                self.release(conn, reusable=True)
            raise
        finally:
            timer.cancel()
            with contextlib.suppress(ValueError):
                queue.remove(waiter)
            if not queue:
                self._waiters.pop(group, None)

    def _evict_idle(self, group: str, key: str) -> None:
        """Close one idle session to another host of ``group``: its slot is worth more to a
        sender waiting here than to nobody there."""
        for other, idle in self._idle.items():
            if other != key and idle and idle[0].group == group:
                self._retire(idle.pop(0), polite=True)
                return

    def release(self, conn: Connection, *, reusable: bool) -> None:
        """Give back what ``acquire`` returned; ``reusable`` False closes it at once (its session
        state is unknown after an error)."""
        if (
            not reusable
            or self._closed
            or not conn.is_open
            or not conn.slot.held
            or conn.sent >= conn.max_messages
        ):
            self._retire(conn, polite=reusable and conn.is_open)
            return
        conn.last_used = time.monotonic()
        queue = self._waiters.get(conn.group)
        if queue:
            for waiter in queue:
                if waiter.key == conn.key and not waiter.future.done():
                    waiter.future.set_result(conn)
                    return
        self._idle.setdefault(conn.key, []).append(conn)

    def _retire(self, conn: Connection, *, polite: bool) -> None:
        client, conn.client = conn.client, None
        conn.wire = None
        if client is None or not polite:
            if client is not None:
                client.close()
            self._free(conn)
            return
        task = asyncio.get_running_loop().create_task(self._quit(conn, client))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _quit(self, conn: Connection, client: aiosmtplib.SMTP) -> None:
        try:
            # the slot stays taken until the server has seen us go, so the server never counts
            # more sessions from us than the limit
            await client.quit(timeout=self._quit_timeout)
        except (aiosmtplib.SMTPException, OSError):
            pass  # the session is over either way
        finally:
            client.close()
            self._free(conn)

    def _free(self, conn: Connection) -> None:
        self._throttle.close_connection(conn.slot)
        queue = self._waiters.get(conn.group)
        if queue:
            for waiter in queue:
                if not waiter.future.done():
                    waiter.future.set_result(None)  # look again: a slot is free
                    return

    def prune(self) -> int:
        """Close the sessions idle longer than the idle timeout; returns how many."""
        now = time.monotonic()
        closed = 0
        for key in list(self._idle):
            idle = self._idle[key]
            keep = [conn for conn in idle if self._usable(conn, now)]
            for conn in idle:
                if conn not in keep:
                    self._retire(conn, polite=conn.is_open)
                    closed += 1
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        return closed

    def idle(self, key: str) -> int:
        return len(self._idle.get(key, ()))

    async def close(self) -> None:
        """QUIT every idle session; sessions in use are closed as they are released."""
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                self._retire(conn, polite=conn.is_open)
        self._idle.clear()
        for queue in self._waiters.values():
            for waiter in queue:
                _settle(waiter.future)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


def _settle(future: asyncio.Future[Connection | None]) -> None:
    if not future.done():
        future.set_result(None)
