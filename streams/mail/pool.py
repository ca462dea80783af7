"""The SMTP connection pool: sessions kept between messages, per destination (the relay, or one
MX host and port).

Opening a connection costs a TCP handshake, a greeting, EHLO and often STARTTLS and AUTH: far
more than the message itself. So sessions are kept open and reused for up to
``max_messages`` messages, and closed once idle longer than ``idle_timeout``.

Connection slots come from a ``ConnectionBudget`` (the stage's ``DestinationThrottle``), so a
destination's concurrency limit is one budget shared with everything else that counts against it.
When a destination is at its limit a sender waits, first in line, and is handed the next connection
released for its destination, so a steady stream of new senders cannot starve it; after ``wait``
seconds it gives up (``acquire`` returns None) and the caller defers the message.

A connection here only holds its session state; opening and speaking SMTP is the transport's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import aiosmtplib

from streams.mail.wire import Wire

__all__ = ["Connection", "ConnectionBudget", "PerHostLimit", "Pool"]

# Other users of the throttle (another lane's pool) free slots without telling this pool, so a
# waiter also looks again this often.
_POLL = 0.25


class ConnectionBudget(Protocol):
    """Who says how many sessions a destination may have open (the delivery stage's
    ``DestinationThrottle``): ``key`` names the group a host's budget is shared across."""

    def key(self, destination: str) -> str: ...

    def open_connection(self, destination: str) -> bool: ...

    def close_connection(self, destination: str) -> None: ...


class PerHostLimit:
    """The simplest budget: at most ``limit`` open sessions per host (the verifier's probe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def key(self, destination: str) -> str:
        return destination

    def open_connection(self, destination: str) -> bool:
        if self._open.get(destination, 0) >= self.limit:
            return False
        self._open[destination] = self._open.get(destination, 0) + 1
        return True

    def close_connection(self, destination: str) -> None:
        left = self._open.get(destination, 0) - 1
        if left > 0:
            self._open[destination] = left
        else:
            self._open.pop(destination, None)


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
        "pipelining",
        "sent",
        "size_limit",
        "smtputf8",
        "tls",
        "wire",
    )

    def __init__(self, key: str, host: str, group: str) -> None:
        self.key = key  # the pool's destination: "host:port"
        self.host = host  # the name the throttle counts and TLS verifies
        self.group = group  # the throttle's key for host: its budget is shared across the group
        self.client: aiosmtplib.SMTP | None = None
        self.address = ""  # what was actually connected to
        self.sent = 0  # transactions started on this session
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
        self._waiters: dict[str, deque[_Waiter]] = {}  # by throttle group
        self._groups: dict[str, str] = {}  # host -> throttle group, as the budget's key is a walk
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False
        self.opened = 0  # slots handed out for new sessions, for tests and metrics

    def _group(self, host: str) -> str:
        group = self._groups.get(host)
        if group is None:
            if len(self._groups) >= 10_000:
                self._groups.clear()
            group = self._groups[host] = self._throttle.key(host)
        return group

    def _usable(self, conn: Connection, now: float) -> bool:
        return (
            conn.is_open
            and now - conn.last_used <= self._idle_timeout
            and conn.sent < self._max_messages
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

    async def acquire(self, key: str, host: str) -> Connection | None:
        """A pooled session to ``key``, or a fresh slot (``client`` None) for the caller to open,
        or None if none came free within the pool's wait."""
        if self._closed:
            return None
        conn = self._take_idle(key)
        if conn is not None:
            return conn
        group = self._group(host)
        deadline: float | None = None
        while True:
            if self._throttle.open_connection(host):
                self.opened += 1
                return Connection(key, host, group)
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
        if not reusable or self._closed or not conn.is_open or conn.sent >= self._max_messages:
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
        self._throttle.close_connection(conn.host)
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
