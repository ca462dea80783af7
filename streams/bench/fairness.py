"""`postwire bench deliver --fairness`: is one tenant's backlog to a site in front of another
tenant's mail to it? Direct MX delivery to a loopback receiver (aiosmtpd) whose site postwire
limits to ``RATE`` msg/s; tenant A queues ``backlog`` bulk messages to ``big.example``, then
tenant B sends ``B_BULK`` bulk messages to the same site and ``B_HIGH`` high-priority ones, one
every ``HIGH_EVERY`` s. Each of B's messages is timed from its request's ``created_at`` to the
receiver's 250 for its recipient (one clock: the receiver runs in this process)."""

from __future__ import annotations

import asyncio
import json
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiosmtpd.controller import Controller

from streams.bench.deliver import publish
from streams.bench.dns_server import Zone, ZoneServer
from streams.bench.records import kafka_counts
from streams.bench.smtp_peers import free_port
from streams.bench.stacks import Credentials, bench_settings
from streams.contract.build import email_request, recipient
from streams.contract.codec import default_codec
from streams.contract.records import Content, EmailRequest, Priority
from streams.db.tenants import create_api_key, create_tenant
from streams.deliver.senders import add_sender
from streams.errors import CodecError
from streams.kafka.config import client_options
from streams.settings import Settings
from streams.stack.stack import Stack

__all__ = ["FairnessResult", "on_lanes", "run_fairness_bench"]

SITE = "big.example"
RATE = 200  # msg/s the site is limited to
CONNECTIONS = 10
B_BULK = 20
B_HIGH = 20
HIGH_EVERY = 0.1
PER_REQUEST = 100
SENDER = "news@bench.example"
_CONTENT: Content = {
    "subject": "fairness",
    "text": "The quick brown fox jumps over the lazy dog.\r\n" * 40,
    "html": None,
    "template_id": None,
    "headers": {},
    "attachments": [],
    "tracking": None,
}


@dataclass
class FairnessResult:
    backlog: int
    rate: int
    b_bulk_ms: list[float] = field(default_factory=list)
    b_high_ms: list[float] = field(default_factory=list)
    # the part of it until the task was on its lane's topic (gate, verification, fan-out)
    b_bulk_lane_ms: list[float] = field(default_factory=list)
    b_high_lane_ms: list[float] = field(default_factory=list)
    a_before_b: int = 0  # of A's messages, how many the receiver took before B's last bulk one
    a_left: int = 0  # A's messages not yet at the receiver when B's last bulk one arrived
    duplicates: int = 0  # messages the receiver took twice (by Message-ID)
    seconds: float = 0.0
    # the bulk worker's resident memory before A's backlog and at its highest while it drained
    # (MB; None where /proc is not there)
    bulk_rss_idle_mb: float | None = None
    bulk_rss_peak_mb: float | None = None

    def figures(self) -> dict[str, float]:
        return {
            "b_bulk_p50_ms": _pct(self.b_bulk_ms, 50),
            "b_bulk_p99_ms": _pct(self.b_bulk_ms, 99),
            "b_high_p50_ms": _pct(self.b_high_ms, 50),
            "b_high_p99_ms": _pct(self.b_high_ms, 99),
            "b_bulk_to_lane_p50_ms": _pct(self.b_bulk_lane_ms, 50),
            "b_high_to_lane_p50_ms": _pct(self.b_high_lane_ms, 50),
        }


def _pct(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


class _Receiver:
    """Accepts everything; keeps (time, recipient, Message-ID) per accepted recipient."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted: list[tuple[float, str, str]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        at = time.time()
        content = bytes(envelope.original_content or b"")
        mid = ""
        for line in content.split(b"\r\n", 40):
            if line.lower().startswith(b"message-id:"):
                mid = line.split(b":", 1)[1].strip().decode()
                break
        with self.lock:
            self.accepted.extend((at, rcpt, mid) for rcpt in envelope.rcpt_tos)
        return "250 2.0.0 OK"

    def snapshot(self) -> list[tuple[float, str, str]]:
        with self.lock:
            return list(self.accepted)

    async def wait_for(self, n: int, timeout: float) -> bool:
        """Until ``n`` recipients were accepted; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while len(self.snapshot()) < n:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)
        return True


def _request(tenant: str, rid: str, rcpts: list[str], priority: Priority) -> EmailRequest:
    return email_request(
        rid,
        tenant,
        "send",
        datetime.now(UTC),
        priority=priority,
        sender={"email": SENDER, "name": "Bench"},
        recipients=[recipient(r) for r in rcpts],
        content=_CONTENT,
        categories=["fairness"],
    )


def _settings(data_dir: Path, dns: ZoneServer, port: int, partitions: int) -> Settings:
    limit = {"connections": CONNECTIONS, "rate": RATE, "burst": CONNECTIONS}
    return bench_settings(
        data_dir,
        delivery_mode="mx",
        smtp_port=port,
        smtp_tls="none",
        dns_nameservers=dns.nameserver,
        dest_overrides=json.dumps({SITE: limit}),
        tenant_send_rate=10**6,
        tenant_send_burst=10**6,
        partitions=partitions,
        worker_processes=1,
    )


def _rss_mb(pid: int | None) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, TypeError):
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


class _Peak:
    """The highest RSS of a process, sampled every 0.2 s while it runs."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak: float | None = None
        self._task = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        while True:
            now = _rss_mb(self.pid)
            if now is not None:
                self.peak = max(self.peak or 0.0, now)
            await asyncio.sleep(0.2)

    def stop(self) -> float | None:
        self._task.cancel()
        return self.peak


async def on_lanes(settings: Settings, prefix: str) -> dict[str, float]:
    """When each task to a recipient starting with ``prefix`` was written to its lane (the
    record's timestamp, epoch seconds), from the start of both lanes to their ends."""
    codec = default_codec()
    options = client_options(settings.kafka)
    consumer = AIOKafkaConsumer(**options, enable_auto_commit=False, group_id=None)
    found: dict[str, float] = {}
    await consumer.start()
    try:
        tps = [
            TopicPartition(topic, p)
            for topic in (settings.topics.lane("bulk"), settings.topics.lane("tx"))
            for p in sorted(consumer.partitions_for_topic(topic) or await _parts(consumer, topic))
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        while pending:
            for tp, records in (await consumer.getmany(*pending, timeout_ms=1000)).items():
                for rec in records:
                    try:
                        task = codec.decode_as(rec.value or b"", "DeliveryTask")
                    except CodecError:
                        task = None  # a dead letter's bytes: the lane rejects them too
                    email = task["recipient"]["email"] if task is not None else ""
                    if email.startswith(prefix):
                        found.setdefault(email, rec.timestamp / 1000)
                    if rec.offset + 1 >= ends[tp]:
                        pending.discard(tp)
    finally:
        await consumer.stop()
    return found


async def _parts(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    cluster = await consumer._client.fetch_all_metadata()
    return set(cluster.partitions_for_topic(topic) or ())


async def _tenants(settings: Settings) -> dict[str, Credentials]:
    conn = await asyncpg.connect(settings.dsn)
    keys = {}
    try:
        for tenant in ("a", "b"):
            await create_tenant(conn, tenant)
            keys[tenant] = await create_api_key(conn, tenant, secret=settings.secret)
            await add_sender(
                conn,
                settings.secret,
                tenant,
                "bench.example",
                dkim="rsa",
                operator=True,
                shared=True,
            )
    finally:
        await conn.close()
    await asyncio.sleep(settings.directory_refresh + 1)
    return keys


async def _lane_count(settings: Settings) -> int:
    counts = await kafka_counts(settings.kafka, settings.topic_prefix)
    return counts.produced.get(settings.topics.lane("bulk"), 0)


async def _send_b(settings: Settings, key: Credentials, run: str) -> dict[str, float]:
    """B's bulk request, then its high ones; per recipient, when its request was made."""
    rcpts = [f"bb{run}x{j}@{SITE}" for j in range(B_BULK)]
    bulk = _request("b", f"b{run}-bulk", rcpts, "bulk")
    await publish(settings, [bulk], key)
    sent = dict.fromkeys(rcpts, bulk["created_at"].timestamp())
    for i in range(B_HIGH):
        high = _request("b", f"b{run}-high-{i}", [f"bh{run}x{i}@{SITE}"], "high")
        await publish(settings, [high], key)
        sent[f"bh{run}x{i}@{SITE}"] = high["created_at"].timestamp()
        await asyncio.sleep(HIGH_EVERY)
    return sent


def _judge(
    result: FairnessResult, accepted: list[tuple[float, str, str]], sent: dict[str, float], run: str
) -> list[str]:
    """Fill ``result`` from what the receiver took; return B's recipients that never arrived."""
    at: dict[str, float] = {}
    for when, rcpt, _mid in accepted:
        at.setdefault(rcpt, when)
    bulk = [r for r in sent if r.startswith("bb") and r in at]
    result.b_bulk_ms = [(at[r] - sent[r]) * 1000 for r in bulk]
    result.b_high_ms = [(at[r] - sent[r]) * 1000 for r in sent if r.startswith("bh") and r in at]
    b_last = max((at[r] for r in bulk), default=0.0)
    a_times = [when for when, rcpt, _ in accepted if rcpt.startswith(f"a{run}")]
    result.a_before_b = sum(1 for when in a_times if when <= b_last)
    result.a_left = result.backlog - result.a_before_b
    mids = [mid for _, _, mid in accepted if mid]
    result.duplicates = len(mids) - len(set(mids))
    return [r for r in sent if r not in at]


async def _measure(
    settings: Settings, receiver: _Receiver, backlog: int, bulk_pid: int | None, say: Any
) -> FairnessResult:
    keys = await _tenants(settings)
    run = uuid.uuid4().hex[:6]
    say("warm-up: 100 messages of each tenant")
    for tenant in ("a", "b"):
        warm = [f"w{tenant}{run}{j}@{SITE}" for j in range(100)]
        await publish(settings, [_request(tenant, f"w{tenant}{run}", warm, "bulk")], keys[tenant])
    await receiver.wait_for(200, 120)
    lane_before = await _lane_count(settings)
    idle = _rss_mb(bulk_pid)
    peak = _Peak(bulk_pid)
    say(f"tenant A queues {backlog:,} bulk messages to {SITE} (limited to {RATE}/s)")
    a_requests = [
        _request("a", f"a{run}-{i}", [f"a{run}x{i}x{j}@{SITE}" for j in range(PER_REQUEST)], "bulk")
        for i in range(backlog // PER_REQUEST)
    ]
    began = time.time()
    await publish(settings, a_requests, keys["a"])
    deadline = time.monotonic() + 300
    while await _lane_count(settings) - lane_before < backlog:  # the gate fanned it out
        if time.monotonic() > deadline:
            raise TimeoutError("A's backlog did not reach the bulk lane within 300 s")
        await asyncio.sleep(0.2)
    say(f"tenant B sends {B_BULK} bulk and {B_HIGH} high-priority messages to {SITE}")
    sent = await _send_b(settings, keys["b"], run)
    say("waiting for every message at the receiver")
    await receiver.wait_for(backlog + B_BULK + B_HIGH + 200, backlog / RATE * 2 + 120)
    result = FairnessResult(backlog=backlog, rate=RATE, seconds=time.time() - began)
    result.bulk_rss_idle_mb, result.bulk_rss_peak_mb = idle, peak.stop()
    missing = _judge(result, receiver.snapshot(), sent, run)
    lane = await on_lanes(settings, "b")
    result.b_bulk_lane_ms = [
        (lane[r] - t) * 1000 for r, t in sent.items() if r.startswith("bb") and r in lane
    ]
    result.b_high_lane_ms = [
        (lane[r] - t) * 1000 for r, t in sent.items() if r.startswith("bh") and r in lane
    ]
    if missing:
        say(f"{len(missing)} of B's messages never reached the receiver")
    return result


async def run_fairness_bench(
    backlog: int = 10_000, partitions: int = 4, progress: Any = None
) -> FairnessResult:
    say = progress or (lambda _m: None)
    data_dir = Path(tempfile.mkdtemp(prefix="postwire-bench-fair-"))
    port = free_port("127.0.0.1")
    receiver = _Receiver()
    controller = Controller(receiver, hostname="127.0.0.1", port=port, ready_timeout=10)
    zone = Zone()
    zone.mx[SITE] = [(10, f"mx.{SITE}")]
    zone.a[f"mx.{SITE}"] = "127.0.0.1"
    dns = ZoneServer(zone, host="127.0.0.1")
    dns.start()
    controller.start()
    stack = Stack(_settings(data_dir, dns, port, partitions), workers=True)
    try:
        await stack.start(detach=False)
        bulk = next((p for p in stack.apps if p.name == "bulk"), None)
        pid = bulk.pid if bulk is not None else None
        return await _measure(stack.settings, receiver, backlog, pid, say)
    finally:
        await asyncio.to_thread(stack.stop)
        controller.stop()
        dns.stop()
        await asyncio.to_thread(shutil.rmtree, data_dir, True)
