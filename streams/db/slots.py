"""Connection slots shared by every worker process: PostgreSQL session-level advisory locks.

A group (a destination site) limited to N connections has slots 0..N-1; a process opening an SMTP
session first takes a free one with ``pg_try_advisory_lock(<group key>, <slot>)`` on a connection
of its own, and closing the session unlocks it. The locks live as long as that database session,
so a process that dies frees its slots with it: there is no lease to expire and nothing to clean
up. The group key is a 32-bit hash of the namespace (the topic prefix: every worker of one
pipeline, the lanes' included) and the group name; two groups that collide share one set of
slots, which is stricter, never looser.

When the session is lost (PostgreSQL restarted, the backend terminated, a query timed out) the
locks are gone with it and other processes may take them: every slot this process held is marked
not held (the pool closes those sessions as soon as they are idle, and opens no others) until the
session is back. Then the slots of the SMTP sessions still open are taken again, each its old
number or another free one; a session whose slot another process took meanwhile stays not held
and closes when it is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from streams.mail.pool import Slot

__all__ = ["PgSlots", "group_key"]

log = logging.getLogger("postwire.slots")
_TRY = "SELECT pg_try_advisory_lock($1, $2)"
_UNLOCK = "SELECT pg_advisory_unlock($1, $2)"
# anything a query or a connect raises means the session cannot be counted on (asyncpg's own
# InternalClientError included): the slots are given up, never a delivery crashed
_FAILURES = (Exception,)
# a group found full is not asked about again for this long: every sender waiting for it polls
# (the pool looks again every 0.25 s), and each look costs up to N queries
_FULL_FOR = 0.1

Connect = Callable[[str], Awaitable[Any]]


def group_key(namespace: str, group: str) -> int:
    """The first int4 of a group's advisory lock keys (the slot number is the second)."""
    digest = hashlib.blake2b(f"{namespace}\0{group}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


async def _connect(dsn: str) -> Any:
    return await asyncpg.connect(dsn)


class PgSlots:
    """The slots of this process, taken on one dedicated database session.

    ``limit(group)``: a group's connection limit. ``timeout``: for connecting and for each query
    (a server that stops answering counts as lost). ``heartbeat``: how often an idle session is
    checked, and a lost one reconnected."""

    shared = True

    def __init__(
        self,
        dsn: str,
        namespace: str,
        limit: Callable[[str], int],
        *,
        timeout: float = 5.0,
        heartbeat: float = 1.0,
        connect: Connect = _connect,
    ) -> None:
        self._dsn = dsn
        self._namespace = namespace
        self._limit = limit
        self._timeout = timeout
        self._heartbeat = heartbeat
        self._connect_fn = connect
        self._conn: Any = None
        self._lock = asyncio.Lock()  # one query at a time on the session
        self._held: dict[str, dict[int, Slot]] = {}  # slots locked on the current session
        self._unlocking: dict[str, set[int]] = {}  # closed here, unlock not yet done
        # lost with a session, their SMTP sessions not closed yet: taken again on the next one
        self._orphans: dict[Slot, None] = {}
        self._keys: dict[str, int] = {}
        self._full: dict[str, float] = {}  # group -> monotonic time it was last found full
        self._listeners: list[Callable[[], object]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._watch: asyncio.Task[None] | None = None
        self._next_connect = 0.0
        self._failing = False  # the last connect failed (and said so)
        self._closed = False
        self.sessions = 0  # database sessions opened, for tests
        self.losses = 0  # sessions lost, for tests and logs

    # -- the budget ---------------------------------------------------------------------------

    def held(self, group: str) -> int:
        return len(self._held.get(group, ()))

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    def on_lost(self, callback: Callable[[], object]) -> None:
        self._listeners.append(callback)

    def status(self) -> dict[str, Any]:
        """For the worker's health page."""
        return {
            "shared": True,
            "connected": self.connected,
            "held": sum(len(held) for held in self._held.values()),
            "sites": len(self._held),
            "sessions_lost": self.losses,
        }

    async def open_connection(self, group: str) -> Slot | None:
        if self._closed:
            return None
        self._start_watch()
        full = self._full.get(group)
        if full is not None:
            if time.monotonic() - full < _FULL_FOR:
                return None
            del self._full[group]
        async with self._lock:
            conn = await self._session()
            if conn is None:
                return None
            key = self._key(group)
            busy = set(self._held.get(group, ())) | self._unlocking.get(group, set())
            free = [n for n in range(self._limit(group)) if n not in busy]
            # from a random one on: processes starting together do not all queue on slot 0
            turn = random.randrange(len(free)) if free else 0  # noqa: S311 (no secret)
            for number in free[turn:] + free[:turn]:
                try:
                    taken = await conn.fetchval(_TRY, key, number, timeout=self._timeout)
                except _FAILURES as exc:
                    self._lose(conn, exc)
                    return None
                if taken:
                    slot = Slot(group, number)
                    self._held.setdefault(group, {})[number] = slot
                    return slot
            if len(self._full) >= 10_000:
                self._full.clear()
            self._full[group] = time.monotonic()
            return None

    def close_connection(self, slot: Slot) -> None:
        self._orphans.pop(slot, None)
        held = self._held.get(slot.group)
        if held is None or held.get(slot.number) is not slot:
            if slot.held:
                raise ValueError(f"no open connection in {slot.group!r} holds slot {slot.number}")
            return  # lost with its session: nothing left to unlock
        del held[slot.number]
        if not held:
            del self._held[slot.group]
        slot.held = False
        self._unlocking.setdefault(slot.group, set()).add(slot.number)
        task = asyncio.get_running_loop().create_task(self._unlock(self._conn, slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Give every slot back (by ending the session) and stop watching."""
        self._closed = True
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        conn, self._conn = self._conn, None
        self._drop_all()
        self._orphans.clear()
        if conn is not None and not conn.is_closed():
            try:
                await conn.close(timeout=self._timeout)
            except _FAILURES:
                conn.terminate()

    # -- the session --------------------------------------------------------------------------

    def _key(self, group: str) -> int:
        key = self._keys.get(group)
        if key is None:
            if len(self._keys) >= 10_000:
                self._keys.clear()
            key = self._keys[group] = group_key(self._namespace, group)
        return key

    async def _session(self) -> Any:
        """The live session, connecting if there is none (at most once a heartbeat)."""
        if self.connected:
            return self._conn
        now = time.monotonic()
        if now < self._next_connect:
            return None
        self._next_connect = now + self._heartbeat
        try:
            conn = await asyncio.wait_for(self._connect_fn(self._dsn), self._timeout)
        except _FAILURES as exc:
            # once per outage, not once a second for as long as it lasts
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "connection slots: no database session (%s); opening none", exc)
            self._failing = True
            return None
        self._failing = False
        conn.add_termination_listener(self._terminated)
        self._conn = conn
        self.sessions += 1
        if self.sessions > 1:
            kept, lost = await self._retake(conn)
            log.info(
                "connection slots: database session back; %d open session(s) kept their slot,"
                " %d close when released",
                kept,
                lost,
            )
        return conn

    async def _retake(self, conn: Any) -> tuple[int, int]:
        """Take again the slots of the SMTP sessions still open, on the new session."""
        kept = 0
        for slot in list(self._orphans):
            held = self._held.setdefault(slot.group, {})
            busy = set(held) | self._unlocking.get(slot.group, set())
            free = [n for n in range(self._limit(slot.group)) if n not in busy]
            # its old number first: nothing moves if nobody took it meanwhile
            free.sort(key=lambda n: n != slot.number)
            for number in free:
                try:
                    taken = await conn.fetchval(
                        _TRY, self._key(slot.group), number, timeout=self._timeout
                    )
                except _FAILURES as exc:
                    self._lose(conn, exc)
                    return kept, len(self._orphans)
                if taken:
                    slot.number, slot.held = number, True
                    held[number] = slot
                    del self._orphans[slot]
                    kept += 1
                    break
            if not held:
                del self._held[slot.group]
        return kept, len(self._orphans)

    def _terminated(self, conn: Any) -> None:
        if conn is self._conn:
            self._lose(conn, ConnectionError("the database session ended"))

    def _lose(self, conn: Any, reason: BaseException) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        self.losses += 1
        with contextlib.suppress(Exception):
            conn.terminate()
        count = sum(len(held) for held in self._held.values())
        log.warning(
            "connection slots: database session lost (%s: %s); %d slot(s) given up: no SMTP"
            " session opens, idle ones close, the ones in use take their slot again if it is"
            " still free when the database session is back",
            type(reason).__name__,
            reason,
            count,
        )
        self._drop_all()
        for listener in self._listeners:
            listener()

    def _drop_all(self) -> None:
        for held in self._held.values():
            for slot in held.values():
                slot.held = False
                self._orphans[slot] = None
        self._held.clear()
        self._unlocking.clear()

    async def _unlock(self, conn: Any, slot: Slot) -> None:
        try:
            async with self._lock:
                if conn is None or conn is not self._conn:
                    return  # that session is gone, and the lock with it
                try:
                    await conn.fetchval(
                        _UNLOCK, self._key(slot.group), slot.number, timeout=self._timeout
                    )
                except _FAILURES as exc:
                    self._lose(conn, exc)
        finally:
            self._full.pop(slot.group, None)  # one is free now, if nobody else takes it first
            unlocking = self._unlocking.get(slot.group)
            if unlocking is not None:
                unlocking.discard(slot.number)
                if not unlocking:
                    del self._unlocking[slot.group]

    def _start_watch(self) -> None:
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_session())

    async def _watch_session(self) -> None:
        """A session that died quietly is noticed within a heartbeat, not at the next open."""
        while True:
            await asyncio.sleep(self._heartbeat)
            async with self._lock:
                conn = self._conn
                if conn is None:
                    await self._session()
                    continue
                try:
                    await conn.fetchval("SELECT 1", timeout=self._timeout)
                except _FAILURES as exc:
                    self._lose(conn, exc)
