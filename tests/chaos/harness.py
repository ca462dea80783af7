"""What every chaos case does: a stack of its own, a steady stream of send and verify requests,
one fault in the middle of it, and then the count of what came out (PostgreSQL rows, and the
messages the receiving SMTP server got, by Message-ID).

Each send request has one recipient of its own (``c<i>-<run>@d<n>.chaos.example``), so a row, an
event and a received message all say which request they belong to, whichever door it came in
through and whatever message id the gate gave it."""

from __future__ import annotations

import asyncio
import contextlib
import email
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.contract.codec import Codec
from streams.kafka.config import client_options
from streams.settings import Settings
from streams.stack.process import ManagedProcess
from streams.stack.stack import WORKER_ROLES, Stack, webhooks_port, worker_port
from streams.stack.supervisor import Supervisor, SupervisorLog, restart_policy
from tests.conftest import SENDER_DOMAIN
from tests.integration.helpers import signer
from tests.peers.world import HOSTS, World

DOMAINS = 8  # recipient domains, so the tasks spread over the lane partitions
TERMINAL = ("delivered", "bounced", "dropped", "failed", "expired")


def chaos_domains(world: World) -> list[str]:
    """Recipient domains served by the world's accept-all MX."""
    names = [f"d{n}.chaos.example" for n in range(DOMAINS)]
    for name in names:
        world.dns.zone.mx[name] = [(10, "mx.inbox.mx.example")]
    world.dns.zone.a["mx.inbox.mx.example"] = HOSTS["inbox"]
    return names


@dataclass
class Workload:
    """``sends`` send requests and ``verifies`` validate requests, spread evenly over
    ``seconds``; half the sends transactional, half bulk."""

    sends: int = 600
    verifies: int = 200
    seconds: float = 8.0
    door: str = "kafka"  # or "api": the HTTP ingress
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    acked_sends: set[str] = field(default_factory=set)  # recipients whose request was acked
    acked_verifies: set[str] = field(default_factory=set)  # request ids
    refused: int = 0  # requests the door did not acknowledge (they may not count)

    def recipient(self, i: int, domains: list[str]) -> str:
        return f"c{i}-{self.run}@{domains[i % len(domains)]}"


def _send_request(tenant: str, to: str, i: int) -> dict[str, Any]:
    return {
        "request_id": str(uuid.uuid4()),
        "tenant": tenant,
        "operation": "send",
        "priority": "high" if i % 2 else "normal",
        "from": {"email": f"news@{SENDER_DOMAIN}", "name": "Chaos"},
        "recipients": [{"email": to}],
        "content": {"subject": f"chaos {i}", "text": "Hello.\r\n"},
        "created_at": datetime.now(UTC),
    }


def _verify_request(tenant: str, i: int) -> dict[str, Any]:
    return {
        "request_id": str(uuid.uuid4()),
        "tenant": tenant,
        "operation": "validate",
        "recipients": [{"email": f"v{i}@normal.example"}],
        "created_at": datetime.now(UTC),
    }


async def run_workload(
    settings: Settings,
    codec: Codec,
    tenant: str,
    key: str,
    work: Workload,
    domains: list[str],
) -> None:
    """Publish the workload at its steady rate; remember what the door acknowledged."""
    total = work.sends + work.verifies
    gap = work.seconds / total
    started = time.monotonic()
    if work.door == "api":
        await _through_api(settings, key, work, domains, started, gap)
        return
    headers = await signer(settings, tenant, key)
    producer = AIOKafkaProducer(
        **client_options(settings.kafka), acks="all", enable_idempotence=True
    )
    await producer.start()
    pending: list[tuple[asyncio.Future[Any], str, str]] = []
    try:
        for i in range(total):
            await _pace(started, i * gap)
            if _is_verify(i, work):
                request = _verify_request(tenant, i)
                kind, name = "verify", str(request["request_id"])
            else:
                to = work.recipient(i, domains)
                request = _send_request(tenant, to, i)
                kind, name = "send", to
            value = codec.encode("EmailRequest", request)
            try:
                future = await producer.send(
                    settings.topics.requests, value, key=tenant.encode(), headers=headers(value)
                )
            except KafkaError:  # the buffer stayed full for the whole send timeout
                work.refused += 1
                continue
            pending.append((future, kind, name))
        for future, kind, name in pending:
            try:
                await future
            except KafkaError:
                work.refused += 1
                continue
            (work.acked_sends if kind == "send" else work.acked_verifies).add(name)
    finally:
        await producer.stop()


def _is_verify(i: int, work: Workload) -> bool:
    """Spread the verifies evenly among the sends."""
    total = work.sends + work.verifies
    return (i + 1) * work.verifies // total != i * work.verifies // total


async def _pace(started: float, at: float) -> None:
    wait = started + at - time.monotonic()
    if wait > 0:
        await asyncio.sleep(wait)


async def _through_api(
    settings: Settings, key: str, work: Workload, domains: list[str], started: float, gap: float
) -> None:
    """Sends through ``/v3/mail/send``; a request counts once the ingress answered 202."""
    auth = {"Authorization": f"Bearer {key}"}
    url = f"{settings.api_base}/v3/mail/send"

    async def one(i: int, session: aiohttp.ClientSession) -> None:
        to = work.recipient(i, domains)
        body = {
            "personalizations": [{"to": [{"email": to}]}],
            "from": {"email": f"news@{SENDER_DOMAIN}"},
            "subject": f"chaos {i}",
            "content": [{"type": "text/plain", "value": "Hello."}],
        }
        try:
            async with session.post(url, json=body, headers=auth) as response:
                if response.status == 202:
                    work.acked_sends.add(to)
                    return
        except (aiohttp.ClientError, TimeoutError):
            pass
        work.refused += 1

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = []
        for i in range(work.sends):
            await _pace(started, i * work.seconds / work.sends)
            tasks.append(asyncio.ensure_future(one(i, session)))
        await asyncio.gather(*tasks)


@dataclass
class Counts:
    """What came out of a run, per acknowledged request."""

    acked_sends: int
    acked_verifies: int
    refused: int
    terminal: int = 0  # acked sends with exactly one terminal messages row
    missing: int = 0  # acked sends without one
    delivered_events_doubled: int = 0  # recipients with more than one delivered event
    verified: int = 0
    verifies_missing: int = 0
    received: int = 0  # messages the receiver got for this run
    received_twice: int = 0  # Message-IDs it got more than once
    recipients_twice: int = 0  # recipients it got more than one message for
    restarts: dict[str, int] = field(default_factory=dict)
    before_fault: int = 0  # messages the receiver had when the fault came
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        return self.missing + self.verifies_missing

    def line(self, case: str) -> str:
        return (
            f"{case:<12} acked {self.acked_sends}+{self.acked_verifies} "
            f"(refused {self.refused}) | terminal {self.terminal} lost {self.lost} | "
            f"smtp {self.received} ({self.before_fault} before the fault) "
            f"twice {self.received_twice} | "
            f"doubled events {self.delivered_events_doubled} | "
            f"restarts {dict(self.restarts) or '-'} | {self.seconds:.0f}s"
        )


async def count(settings: Settings, work: Workload, world: World) -> Counts:
    found = Counts(len(work.acked_sends), len(work.acked_verifies), work.refused)
    conn = await asyncpg.connect(settings.dsn)
    try:
        rows = await conn.fetch(
            "SELECT recipient, state FROM messages WHERE recipient LIKE $1", f"%-{work.run}@%"
        )
        states: dict[str, list[str]] = {}
        for row in rows:
            states.setdefault(row["recipient"], []).append(row["state"])
        for to in work.acked_sends:
            terminal = [s for s in states.get(to, []) if s in TERMINAL]
            if len(terminal) == 1:
                found.terminal += 1
            else:
                found.missing += 1
        doubled = await conn.fetchval(
            "SELECT count(*) FROM (SELECT recipient FROM events WHERE type = 'delivered' "
            "AND recipient LIKE $1 GROUP BY recipient HAVING count(*) > 1) d",
            f"%-{work.run}@%",
        )
        found.delivered_events_doubled = int(doubled)
        if work.acked_verifies:
            verified = await conn.fetch(
                "SELECT request_id, count(*) AS n FROM verifications "
                "WHERE request_id = ANY($1::text[]) GROUP BY request_id",
                list(work.acked_verifies),
            )
            found.verified = sum(1 for r in verified if r["n"] == 1)
            found.verifies_missing = len(work.acked_verifies) - found.verified
    finally:
        await conn.close()
    ids: Counter[str] = Counter()
    recipients: Counter[str] = Counter()
    for rcpts, data in world.mx["inbox"].received_snapshot():
        mine = [r for r in rcpts if f"-{work.run}@" in r]
        if not mine:
            continue
        message = email.message_from_bytes(data)
        ids[str(message.get("Message-ID", ""))] += 1
        recipients.update(mine)
    found.received = sum(ids.values())
    found.received_twice = sum(n - 1 for n in ids.values() if n > 1)
    found.recipients_twice = sum(n - 1 for n in recipients.values() if n > 1)
    return found


async def settled(
    probe: Callable[[], Awaitable[Counts]], timeout: float, quiet: float = 3.0
) -> Counts:
    """Poll until nothing is missing (or ``timeout``), then once more after ``quiet`` seconds so
    a late second delivery is counted too."""
    deadline = time.monotonic() + timeout
    counts = await probe()
    while counts.lost and time.monotonic() < deadline:
        await asyncio.sleep(1.0)
        counts = await probe()
    await asyncio.sleep(quiet)
    return await probe()


def health_urls(stack: Stack) -> list[str]:
    """The /healthz page of every application process of ``stack``."""
    settings = stack.settings
    host = settings.web_host
    urls = [
        f"http://{host}:{worker_port(settings, role, slot)}/healthz"
        for role in WORKER_ROLES
        for slot in range(settings.worker_processes)
    ]
    urls.append(f"http://{host}:{webhooks_port(settings)}/healthz")
    urls.append(f"http://{host}:{settings.sinks_web_port}/healthz")
    urls.append(f"{settings.api_base}/healthz")
    return urls


async def wait_healthy(stack: Stack, timeout: float = 120.0) -> None:
    """Until every process says it is ready: a fault before that would test a start-up."""
    deadline = time.monotonic() + timeout
    waiting = health_urls(stack)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while waiting and time.monotonic() < deadline:
            for url in list(waiting):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as response:
                        if response.status == 200:
                            waiting.remove(url)
            await asyncio.sleep(0.3)
    assert not waiting, f"not healthy after {timeout:.0f}s: {waiting}"


def received_for(world: World, work: Workload) -> int:
    return sum(
        1
        for rcpts, _ in world.mx["inbox"].received_snapshot()
        if any(f"-{work.run}@" in r for r in rcpts)
    )


class Supervised:
    """The stack under the real supervisor of `postwire up` (streams/stack/supervisor.py), run
    in the test's loop: a child the case kills is brought back by it, with its backoff and
    budget; the counts say how often."""

    def __init__(self, stack: Stack) -> None:
        log = SupervisorLog(stack.settings.data_dir / "logs" / "supervisor.log")
        policy = restart_policy(stack.settings.restart)
        self.supervisor = Supervisor(stack, policy, log, detach=False, pid=os.getpid())
        self._stop = asyncio.Event()
        self._task: asyncio.Future[str | None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self.supervisor.run(self._stop))

    @property
    def restarts(self) -> dict[str, int]:
        return {n: c.restarts for n, c in self.supervisor.children.items() if c.restarts}

    async def stop(self) -> str | None:
        """Stop supervising; why it gave up, if it did."""
        self._stop.set()
        if self._task is None:
            return None
        return await self._task


def kill(proc: ManagedProcess) -> int:
    """SIGKILL ``proc`` (a child this test started) and wait until it is gone."""
    pid = proc.pid
    assert pid is not None, f"{proc.name} was never started"
    assert proc.running(), f"{proc.name} is not running"
    os.kill(pid, signal.SIGKILL)
    if proc.popen is not None:
        proc.popen.wait(timeout=10)
    return pid
