"""Connection slots shared through PostgreSQL advisory locks (streams/db/slots.py), against the
embedded server: two holders, each on a session of its own as two worker processes would be,
never hold more than a site's N slots together, and a holder whose session is killed frees its
slots for the other."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest

from streams.db.slots import PgSlots, group_key
from streams.deliver.throttle import DestinationLimits, DestinationThrottle, Limit
from streams.deliver.transport import Transport, TransportConfig
from streams.mail.pool import Slot
from streams.mail.replies import Disposition
from streams.settings import Settings
from streams.stack.postgres import EmbeddedPostgres
from tests.conftest import stack_settings
from tests.peers.smtp_behaviours import Behaviour, SinkServer

pytestmark = pytest.mark.integration

SITE = "mx1.site.example,mx2.site.example"
SENDER = "sender@acme.example"
MESSAGE = b"From: sender@acme.example\r\nSubject: hi\r\n\r\nHello.\r\n"
N = 3


@pytest.fixture(scope="module")
async def database(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Settings]:
    settings = stack_settings(Path(tmp_path_factory.mktemp("slots")) / "data")
    server = EmbeddedPostgres(settings)
    server.start(detach=False)
    try:
        await server.wait_ready()
        yield settings
    finally:
        server.stop()


@pytest.fixture
async def holders(database: Settings) -> AsyncIterator[list[PgSlots]]:
    namespace = f"test-{random.randrange(1 << 30)}"
    made = [
        PgSlots(database.dsn, namespace, lambda _site: N, heartbeat=0.2, timeout=2.0)
        for _ in range(2)
    ]
    yield made
    for holder in made:
        await holder.close()


async def _locks_held(database: Settings, holder: PgSlots) -> int:
    """The slot locks of ``holder``'s site that PostgreSQL counts, whoever holds them."""
    conn = await asyncpg.connect(database.dsn)
    try:
        key = group_key(holder._namespace, SITE)
        count = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND objsubid = 2 AND classid::int8 = ($1::int8 + 4294967296) % 4294967296",
            key,
        )
        return int(count)
    finally:
        await conn.close()


async def _take_all(holder: PgSlots) -> list[Slot]:
    taken = []
    while (slot := await holder.open_connection(SITE)) is not None:
        taken.append(slot)
    return taken


async def test_two_holders_never_hold_more_than_n_slots(
    database: Settings, holders: list[PgSlots]
) -> None:
    a, b = holders
    mine = await _take_all(a)
    assert len(mine) == N
    assert sorted(s.number for s in mine) == list(range(N))
    assert await b.open_connection(SITE) is None  # all N are a's
    assert await _locks_held(database, a) == N
    a.close_connection(mine.pop())
    slot = await eventually_slot(b)
    assert slot.held
    assert await a.open_connection(SITE) is None
    assert (a.held(SITE), b.held(SITE)) == (N - 1, 1)


async def eventually_slot(holder: PgSlots, timeout: float = 5.0) -> Slot:
    """A slot as soon as one is free (an unlock runs in a task of its own)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        slot = await holder.open_connection(SITE)
        if slot is not None:
            return slot
        assert asyncio.get_running_loop().time() < deadline, "no slot came free"
        await asyncio.sleep(0.02)


async def test_churn_from_both_holders_stays_within_n(
    database: Settings, holders: list[PgSlots]
) -> None:
    taken: dict[int, list[Slot]] = {0: [], 1: []}
    most = 0
    rng = random.Random(15)
    for _ in range(300):
        i = rng.randrange(2)
        holder = holders[i]
        if taken[i] and rng.random() < 0.45:
            holder.close_connection(taken[i].pop(rng.randrange(len(taken[i]))))
        else:
            slot = await holder.open_connection(SITE)
            if slot is not None:
                taken[i].append(slot)
        together = len(taken[0]) + len(taken[1])
        most = max(most, together)
        assert together <= N
        # the numbers held are distinct: no slot is held twice
        numbers = [s.number for s in (*taken[0], *taken[1])]
        assert len(set(numbers)) == len(numbers)
        await asyncio.sleep(0)
    assert most == N  # the churn did reach the limit
    assert await _locks_held(database, holders[0]) <= N


async def test_a_killed_session_frees_its_slots_for_the_other(
    database: Settings, holders: list[PgSlots]
) -> None:
    a, b = holders
    lost: list[bool] = []
    a.on_lost(lambda: lost.append(True))
    mine = await _take_all(a)
    assert len(mine) == N
    assert await b.open_connection(SITE) is None
    pid = a._conn.get_server_pid()
    admin = await asyncpg.connect(database.dsn)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    # a notices (the session's end, or the heartbeat) and stops counting on its slots
    await _until(lambda: bool(lost))
    assert not any(slot.held for slot in mine)
    assert a.held(SITE) == 0
    for slot in mine:
        a.close_connection(slot)  # closing a session of a lost slot unlocks nothing, and is fine
    theirs = [await eventually_slot(b) for _ in range(N)]
    assert len(theirs) == N
    assert await b.open_connection(SITE) is None
    # a has a new session by now or soon, and finds every slot taken
    await _until(lambda: a.connected)
    assert a.sessions == 2
    assert await a.open_connection(SITE) is None
    b.close_connection(theirs[0])
    assert (await eventually_slot(a)).held


async def test_no_database_means_no_slots(database: Settings) -> None:
    dsn = database.dsn.replace(f":{database.postgres_port}/", ":1/")
    holder = PgSlots(dsn, "nowhere", lambda _site: N, timeout=1.0, heartbeat=0.2)
    try:
        assert await holder.open_connection(SITE) is None
        assert holder.held(SITE) == 0
    finally:
        await holder.close()


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "it never happened"
        await asyncio.sleep(0.02)


async def test_two_workers_together_keep_to_the_site_rate_and_connections(
    database: Settings,
) -> None:
    """Two transports, each with slots of its own session (two workers as far as PostgreSQL can
    tell), send to one relay site of 2 connections and 20 messages/s: the receiver never sees
    more than 2 sessions, and the 60 messages take as long as 20/s allows, not half that."""
    server = SinkServer("127.0.0.1", Behaviour()).start()
    limits = DestinationLimits(default=Limit(connections=2, rate=20.0, burst=2), overrides={})
    namespace = f"rate-{random.randrange(1 << 30)}"
    config = TransportConfig(
        mode="relay",
        relay_host=server.host,
        relay_port=server.port,
        tls="none",
        pool_wait=0.5,
        pace_max_wait=0.5,
        # sessions end often, so the slots move between the two
        max_messages_per_connection=4,
        idle_timeout=0.1,
    )
    transports = [
        Transport(
            config,
            DestinationThrottle(
                limits,
                PgSlots(database.dsn, namespace, lambda _s: 2, heartbeat=0.2, timeout=2.0),
            ),
            None,
        )
        for _ in range(2)
    ]

    async def deliver(transport: Transport, n: int) -> None:
        while True:
            delivery = await transport.send("dest.test", SENDER, f"r{n}@dest.test", MESSAGE)
            if delivery.retry_after is None:
                assert delivery.outcome.disposition is Disposition.DELIVERED, delivery
                return
            await asyncio.sleep(min(delivery.retry_after, 0.5))

    began = time.monotonic()
    try:
        await asyncio.gather(*(deliver(transports[n % 2], n) for n in range(60)))
        took = time.monotonic() - began
    finally:
        for transport in transports:
            await transport.close()
            await transport.throttle.slots.close()
        server.stop()
    assert len(server.received) == 60
    assert server.max_open <= 2
    # 60 messages at 20/s, less the bursts the two started with (2 each): at least 2.8 s
    assert took >= 2.6, f"60 messages in {took:.2f}s: faster than the site's 20/s"


async def test_sessions_still_open_take_their_slots_again_on_the_new_session(
    database: Settings, holders: list[PgSlots]
) -> None:
    """Slots whose SMTP sessions are still open (in use: nobody closed them) when the database
    session is lost are taken again on the next one, while there are free slots; the rest stay
    not held, for their sessions to close when released."""
    _, b = holders
    # a reconnects only when the gate is open, so b surely takes its slots first
    gate = asyncio.Event()
    gate.set()

    async def connect(dsn: str) -> object:
        await gate.wait()
        return await asyncpg.connect(dsn)

    a = PgSlots(
        database.dsn, b._namespace, lambda _site: N, heartbeat=0.2, timeout=2.0, connect=connect
    )
    holders.append(a)  # closed by the fixture
    in_use = [await a.open_connection(SITE) for _ in range(2)]
    assert all(slot is not None for slot in in_use)
    gate.clear()
    admin = await asyncpg.connect(database.dsn)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", a._conn.get_server_pid())
    finally:
        await admin.close()
    await _until(lambda: a.losses == 1)
    assert not any(slot is not None and slot.held for slot in in_use)
    # meanwhile b takes two of the three slots: one is left for a's two open sessions
    theirs = [await eventually_slot(b) for _ in range(2)]
    gate.set()
    await _until(lambda: a.sessions == 2)
    await _until(lambda: a.held(SITE) == 1)
    kept = [slot for slot in in_use if slot is not None and slot.held]
    assert len(kept) == 1
    assert {kept[0].number} | {slot.number for slot in theirs} == set(range(N))
    assert await _locks_held(database, a) == N
    # the one left out closes without unlocking anything; the kept one unlocks its slot
    for slot in in_use:
        assert slot is not None
        a.close_connection(slot)
    assert (await eventually_slot(b)).number == kept[0].number
