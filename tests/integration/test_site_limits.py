"""The target of sites and shared limits: a stack with two worker slots (two tx and two bulk lane
processes, four processes that deliver) and a destination site limited to N=2 connections. The
receiving server counts its concurrent sessions: never more than N while a few hundred messages
arrive, all of them, none twice (by Message-ID). The domains of the run are spread over two MX
hosts' site, so the limit is the site's, not a domain's or a host's."""

from __future__ import annotations

import asyncio
import email
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from streams.contract.codec import Codec
from streams.stack.stack import Stack, worker_port
from tests.chaos.harness import Workload, run_workload, wait_healthy
from tests.conftest import pipeline_overrides, stack_settings
from tests.integration.helpers import eventually, new_tenant
from tests.peers.smtp_behaviours import Behaviour, SinkServer
from tests.peers.world import World

pytestmark = pytest.mark.integration

N = 2
MESSAGES = 300
RECEIVER = "127.0.0.21"  # an address of its own: the world's servers are elsewhere


@pytest.fixture
async def receiver(world: World) -> AsyncIterator[SinkServer]:
    """Accepts everything, slowly enough (20 ms a message) that sessions overlap."""
    server = SinkServer(RECEIVER, Behaviour(data_delay=0.02), port=world.smtp_port).start()
    try:
        yield server
    finally:
        server.stop()


def _site_domains(world: World) -> list[str]:
    """Domains whose mail goes to one site of two MX hosts, both served by the receiver."""
    names = [f"s{n}.sites.example" for n in range(8)]
    for name in names:
        world.dns.zone.mx[name] = [(10, "mx1.sites.example"), (20, "mx2.sites.example")]
    world.dns.zone.a["mx1.sites.example"] = RECEIVER
    world.dns.zone.a["mx2.sites.example"] = RECEIVER
    return names


@pytest.fixture
async def two_slot_stack(tmp_path: Path, world: World) -> AsyncIterator[Stack]:
    overrides = pipeline_overrides(world)
    overrides.update(
        worker_processes=2,
        partitions=4,
        dest_connections=N,
        dest_rate=500.0,
        dest_burst=50,
        # sessions end often, so slots change hands between the processes all the time
        smtp_max_messages_per_connection=10,
        smtp_idle_timeout=1.0,
        delivery_shared_limits=True,
    )
    running = Stack(stack_settings(tmp_path / "stack", **overrides), workers=True)
    await running.start(detach=False)
    try:
        yield running
    finally:
        running.stop()


async def test_two_worker_slots_never_open_more_than_the_site_limit(
    two_slot_stack: Stack, receiver: SinkServer, world: World, codec: Codec
) -> None:
    settings = two_slot_stack.settings
    assert settings.worker_processes == 2
    domains = _site_domains(world)
    tenant, key = await new_tenant(settings, "sites", settle=True)
    await wait_healthy(two_slot_stack)
    # half of them high priority (the tx lane processes), half normal (the bulk ones)
    work = Workload(sends=MESSAGES, verifies=0, seconds=3.0)
    began = time.monotonic()
    await run_workload(settings, codec, tenant, key, work, domains)
    assert len(work.acked_sends) == MESSAGES

    def mine() -> list[tuple[str, tuple[str, ...]]]:
        return [
            (str(email.message_from_bytes(r.data).get("Message-ID", "")), r.rcpt_tos)
            for r in receiver.received
            if any(f"-{work.run}@" in rcpt for rcpt in r.rcpt_tos)
        ]

    async def so_far() -> int:
        return len(mine())

    await eventually(so_far, lambda n: n >= MESSAGES, timeout=180.0)
    await asyncio.sleep(3.0)  # a late second copy would be counted too
    received = mine()
    took = time.monotonic() - began
    ids = Counter(message_id for message_id, _ in received)
    recipients = {rcpt for _, rcpts in received for rcpt in rcpts}
    print(
        f"site limit {N}: {len(received)} received in {took:.1f}s, at most {receiver.max_open}"
        f" sessions at once, {receiver.connections} sessions in all"
    )
    assert receiver.max_open <= N, f"the receiver saw {receiver.max_open} sessions at once"
    assert len(received) == MESSAGES
    assert all(n == 1 for n in ids.values()), [i for i, n in ids.items() if n > 1]
    assert recipients == work.acked_sends
    # the limit was reached (so the test could fail), by sessions that came and went
    assert receiver.max_open == N
    assert receiver.connections >= MESSAGES // 10
    # the lane processes' health pages show their slots: shared, and taken on a database
    # session by more than one of them (a process connects when it first delivers), so the
    # limit held between processes that competed for it
    statuses = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        for role in ("tx", "bulk"):
            for slot in range(settings.worker_processes):
                url = f"http://{settings.web_host}:{worker_port(settings, role, slot)}/healthz"
                async with session.get(url) as response:
                    statuses[f"{role}{slot}"] = (await response.json())["connection_slots"]
    print(statuses)
    assert all(status["shared"] is True for status in statuses.values()), statuses
    assert sum(status["connected"] is True for status in statuses.values()) >= 2, statuses
