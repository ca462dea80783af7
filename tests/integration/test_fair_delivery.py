"""Fair delivery between tenants, counted at the receiving MX: tenant B's few messages behind
tenant A's backlog to the same site arrive before A's backlog is done, and a bulk worker killed
mid-backlog sends every message, none twice beyond the SMTP transactions it had in flight."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from collections import Counter

import pytest

from streams.bench.fairness import on_lanes
from streams.contract.codec import Codec
from streams.settings import Settings
from streams.stack.stack import Stack
from tests.integration.helpers import eventually, new_tenant
from tests.integration.test_deliver_pipeline import _send, send_request
from tests.peers.world import World

pytestmark = pytest.mark.integration

SITE = "inbox.example"  # accepts every recipient; the suite's default limit: 50 msg/s
_MESSAGE_ID = re.compile(rb"^Message-ID:\s*(\S+)", re.IGNORECASE | re.MULTILINE)


async def _backlog(stack: Settings, codec: Codec, tag: str, n: int) -> tuple[str, str]:
    """Tenant A's ``n`` bulk messages to the site, all on the bulk lane before this returns
    (verified and fanned out: B's come after every one of them)."""
    tenant, key = await new_tenant(stack, "fair-a")
    for i in range(0, n, 100):
        rcpts = [f"{tag}-a{j}@{SITE}" for j in range(i, min(i + 100, n))]
        await _send(stack, codec, key, send_request(tenant, rcpts, priority="bulk"))
    on_lane = await eventually(lambda: on_lanes(stack, f"{tag}-a"), lambda c: len(c) >= n)
    assert len(on_lane) >= n
    return tenant, key


def _arrivals(world: World, tag: str) -> list[str]:
    """The site's recipients of this test, in the order the receiver took them."""
    return [
        rcpt
        for rcpts, _ in world.mx["inbox"].received_snapshot()
        for rcpt in rcpts
        if rcpt.startswith(f"{tag}-")
    ]


async def test_a_small_tenant_is_not_stuck_behind_a_backlog_to_the_same_site(
    stack: Settings, codec: Codec, world: World
) -> None:
    tag = f"f{uuid.uuid4().hex[:6]}"
    backlog = 400  # 8 s at the site's 50 msg/s
    await _backlog(stack, codec, tag, backlog)
    tenant_b, key_b = await new_tenant(stack, "fair-b")
    mine = [f"{tag}-b{j}@{SITE}" for j in range(5)]
    await _send(stack, codec, key_b, send_request(tenant_b, mine, priority="bulk"))

    def b_arrived(arrived: list[str]) -> bool:
        return all(r in arrived for r in mine)

    arrived = await eventually(lambda: _a(world, tag), b_arrived, timeout=60)
    assert b_arrived(arrived), f"B's mail did not all arrive: {arrived[-10:]}"
    last_b = max(arrived.index(r) for r in mine)
    a_before = sum(1 for r in arrived[:last_b] if r.startswith(f"{tag}-a"))
    # in partition order all 400 of A's would come first; fairly, about as many as B's
    assert a_before < backlog // 2, f"{a_before} of A's {backlog} went before B's last"
    done = await eventually(lambda: _a(world, tag), lambda a: len(a) >= backlog + 5, 60)
    assert Counter(done) == Counter([*(f"{tag}-a{j}@{SITE}" for j in range(backlog)), *mine])


async def _a(world: World, tag: str) -> list[str]:
    return _arrivals(world, tag)


def _message_ids(world: World, tag: str) -> Counter[bytes]:
    found: Counter[bytes] = Counter()
    for rcpts, data in world.mx["inbox"].received_snapshot():
        if any(r.startswith(f"{tag}-") for r in rcpts):
            match = _MESSAGE_ID.search(data)
            assert match is not None
            found[match.group(1)] += 1
    return found


async def test_a_bulk_worker_killed_mid_backlog_sends_everything_once(
    pipeline: Stack, codec: Codec, world: World
) -> None:
    stack = pipeline.settings
    tag = f"k{uuid.uuid4().hex[:6]}"
    backlog = 400
    await _backlog(stack, codec, tag, backlog)
    await eventually(lambda: _a(world, tag), lambda a: len(a) >= 60, timeout=60)
    bulk = next(p for p in pipeline.apps if p.name == "bulk")
    assert bulk.pid is not None
    os.kill(bulk.pid, signal.SIGKILL)  # no drain, no last commit
    if bulk.popen is not None:
        bulk.popen.wait(timeout=10)
    sent_before = len(_arrivals(world, tag))
    assert sent_before < backlog, "the backlog was done before the kill: not a test"
    bulk.start(detach=False)
    arrived = await eventually(
        lambda: _a(world, tag), lambda a: len(set(a)) >= backlog, timeout=120
    )
    assert set(arrived) == {f"{tag}-a{j}@{SITE}" for j in range(backlog)}
    await asyncio.sleep(2.0)  # anything sent twice would be here by now
    ids = _message_ids(world, tag)
    assert len(ids) == backlog
    twice = sum(n - 1 for n in ids.values())
    # only the transactions in flight at the kill can be sent again
    assert twice <= stack.deliver_concurrency, f"{twice} messages sent twice"
