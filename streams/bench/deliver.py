"""`postwire bench deliver`: DKIM-signed delivery through the whole pipeline (gate, lanes,
deliver stage, events, sinks) to Postfix's ``smtp-sink`` on loopback, in relay mode. In the same
run: raw aiosmtplib to the same kind of sink (the ceiling) and Postfix relaying the same number
of messages (the peer). Optionally, the priority-lane figure: how long a high-priority message
takes to reach the messages table while a bulk backlog drains."""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from streams.bench.records import kafka_counts, records_per_request
from streams.bench.smtp_peers import SmtpSink, ensure_postfix, run_baselines
from streams.bench.stacks import Credentials, relay_settings
from streams.contract.build import email_request, recipient
from streams.contract.codec import default_codec
from streams.contract.records import Content, EmailRequest, Priority
from streams.contract.signing import sign
from streams.db.tenants import create_api_key, create_tenant
from streams.deliver.dkim import KeyType
from streams.deliver.senders import add_sender
from streams.kafka.config import client_options
from streams.settings import Settings
from streams.stack.stack import Stack

__all__ = ["DeliverBenchResult", "run_deliver_bench"]

SENDER = "news@bench.example"
SELECTOR = "pw1"
PER_REQUEST = 100  # recipients per send request: a campaign's shape
BODY_LINE = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n"


@dataclass
class DeliverBenchResult:
    messages: int
    seconds: float
    per_s: float
    rows_seconds: float
    workers: int
    dkim: str = "rsa"
    raw_per_s: float | None = None
    postfix_per_s: float | None = None
    postfix_inject_per_s: float | None = None
    lane_backlog: int = 0
    lane_latencies_ms: list[float] = field(default_factory=list)
    # Kafka records per delivered message (its request carries 100), from the broker's offsets
    records_per_message: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vs_raw(self) -> float | None:
        return self.per_s / self.raw_per_s if self.raw_per_s else None

    @property
    def vs_postfix(self) -> float | None:
        return self.per_s / self.postfix_per_s if self.postfix_per_s else None


_CONTENT: Content = {
    "subject": "bench message",
    "text": BODY_LINE * 65,
    "html": None,
    "template_id": None,
    "headers": {},
    "attachments": [],
    "tracking": None,
}


def _request(tenant: str, run: str, i: int, n: int, priority: Priority) -> EmailRequest:
    return email_request(
        f"{run}-{i}",
        tenant,
        "send",
        datetime.now(UTC),
        priority=priority,
        sender={"email": SENDER, "name": "Bench"},
        recipients=[recipient(f"u{i}x{j}@d{j % 50}.bench.example") for j in range(n)],
        content=_CONTENT,
        categories=["bench"],
    )


async def publish(settings: Settings, requests: list[EmailRequest], key: Credentials) -> None:
    codec = default_codec()
    producer = AIOKafkaProducer(**client_options(settings.kafka), acks="all", linger_ms=5)
    await producer.start()
    try:
        for r in requests:
            r["created_at"] = datetime.now(UTC)
            value = codec.encode("EmailRequest", r)
            headers = sign(value, tenant=r["tenant"], key_id=key[0], api_key=key[1])
            await producer.send(
                settings.topics.requests, value, key=r["tenant"].encode(), headers=headers
            )
        await producer.flush()
    finally:
        await producer.stop()


async def _rows(conn: asyncpg.Connection[Any], run: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM messages WHERE request_id LIKE $1 AND state = 'delivered'",
            f"{run}-%",
        )
    )


def _settings(data_dir: Path, sink: SmtpSink, workers: int, partitions: int) -> Settings:
    return relay_settings(
        data_dir,
        sink.host,
        sink.port,
        partitions=partitions,
        worker_processes=workers,
    )


def _ms_after(sent: dict[str, datetime], rows: list[Any], column: str) -> list[float]:
    """Per row, milliseconds from its request's ``created_at`` to the row's ``column``."""
    return [(r[column] - sent[r["request_id"]]).total_seconds() * 1000 for r in rows]


async def _lane_probe(
    settings: Settings, conn: asyncpg.Connection[Any], tenant: str, key: Credentials, backlog: int
) -> dict[str, list[float]]:
    """Publish a bulk backlog, then one high-priority message every 0.5 s while it drains.
    Per probe, in ms from its request: to the delivered row (``lane``), to the receiver's 250
    (``lane_accepted``) and through the gate (``lane_admitted``)."""
    run = uuid.uuid4().hex[:8]
    bulk = [
        _request(tenant, f"{run}b", i, PER_REQUEST, "bulk") for i in range(backlog // PER_REQUEST)
    ]
    await publish(settings, bulk, key)
    # the backlog is measured from the lanes on: wait until the gate has fanned it out
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        admitted = await conn.fetchval(
            "SELECT count(*) FROM requests WHERE request_id LIKE $1", f"{run}b-%"
        )
        if admitted >= len(bulk):
            break
        await asyncio.sleep(0.1)
    probes = []
    for i in range(20):
        probe = _request(tenant, f"{run}p", i, 1, "high")
        await publish(settings, [probe], key)
        probes.append(probe)
        await asyncio.sleep(0.5)
    sent = {p["request_id"]: p["created_at"] for p in probes}
    figures: dict[str, list[float]] = {"lane": [], "lane_accepted": [], "lane_admitted": []}
    deadline = time.monotonic() + 120
    while not figures["lane"] and time.monotonic() < deadline:
        rows = await conn.fetch(
            "SELECT m.landed_at, m.updated_at, m.request_id FROM messages m "
            "WHERE m.request_id LIKE $1 AND m.state = 'delivered'",
            f"{run}p-%",
        )
        if len(rows) == len(probes):
            gated = await conn.fetch(
                "SELECT request_id, occurred_at FROM events WHERE request_id LIKE $1 "
                "AND type = 'processed'",
                f"{run}p-%",
            )
            figures["lane"] = _ms_after(sent, rows, "landed_at")
            # the same path cut where the receiver said 250: the rest is events -> sink -> row
            figures["lane_accepted"] = _ms_after(sent, rows, "updated_at")
            figures["lane_admitted"] = _ms_after(sent, gated, "occurred_at")
        await asyncio.sleep(0.2)
    remaining = backlog - await _rows(conn, f"{run}b")
    if remaining <= 0:
        # the backlog was gone before the probes: not a test
        figures["lane"].append(float("nan"))
    return figures


def _setup(workers: int, partitions: int) -> tuple[Path, SmtpSink, Settings]:
    """A fresh data dir and a running smtp-sink."""
    binaries = ensure_postfix()
    data_dir = Path(tempfile.mkdtemp(prefix="postwire-bench-deliver-"))
    data_dir.chmod(0o755)  # smtp-sink drops to the postfix user and writes its counter here
    sink = SmtpSink(binaries, data_dir)
    sink.start()
    return data_dir, sink, _settings(data_dir, sink, workers, partitions)


async def _wait_rows(conn: asyncpg.Connection[Any], run: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (got := await _rows(conn, run)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {got} of {n} delivered rows landed within {timeout:.0f}s")
        await asyncio.sleep(0.1)


async def _measure(
    settings: Settings,
    conn: asyncpg.Connection[Any],
    sink: SmtpSink,
    key: Credentials,
    n: int,
    say: Any,
) -> tuple[float, float]:
    """(seconds until the sink had all ``n``, seconds until every delivered row landed)."""
    say("warm-up: 1,000 messages (workers joined, connections open)")
    warm = uuid.uuid4().hex[:8]
    base = sink.accepted()
    await publish(
        settings, [_request("bench", warm, i, PER_REQUEST, "bulk") for i in range(10)], key
    )
    await sink.wait_for(base + 1000, 300)
    say(f"measuring {n:,} DKIM-signed messages through the pipeline")
    run = uuid.uuid4().hex[:8]
    base = sink.accepted()
    requests = [_request("bench", run, i, PER_REQUEST, "bulk") for i in range(n // PER_REQUEST)]
    began = time.perf_counter()
    await publish(settings, requests, key)
    done = await sink.wait_for(base + n, 1800)
    await _wait_rows(conn, run, n, 600)
    return done - began, time.perf_counter() - began


async def run_deliver_bench(
    messages: int,
    workers: int,
    partitions: int,
    *,
    peers: bool = True,
    lane_backlog: int = 0,
    dkim: KeyType = "rsa",
    progress: Any = None,
) -> DeliverBenchResult:
    say = progress or (lambda _m: None)
    data_dir, sink, settings = await asyncio.to_thread(_setup, workers, partitions)
    stack = Stack(settings, workers=True)
    lanes: dict[str, list[float]] = {}
    try:
        await stack.start(detach=False)
        conn = await asyncpg.connect(settings.dsn)
        try:
            await create_tenant(conn, "bench")
            key = await create_api_key(conn, "bench", secret=settings.secret)
            # the bench sender's domain, vouched for by the operator, with its own DKIM key
            await add_sender(
                conn,
                settings.secret,
                "bench",
                "bench.example",
                dkim=dkim,
                selector=SELECTOR,
                operator=True,
            )
            await asyncio.sleep(settings.directory_refresh + 1)
            before = await kafka_counts(settings.kafka, settings.topic_prefix)
            seconds, rows_seconds = await _measure(settings, conn, sink, key, messages, say)
            await asyncio.sleep(3)  # the last commits follow the rows by a moment
            delta = (await kafka_counts(settings.kafka, settings.topic_prefix)).minus(before)
            per_message = records_per_request(delta, messages, messages // PER_REQUEST)
            if lane_backlog:
                say(f"priority lanes: {lane_backlog:,} bulk messages, then 20 high-priority ones")
                lanes = await _lane_probe(settings, conn, "bench", key, lane_backlog)
        finally:
            await conn.close()
    finally:
        await asyncio.to_thread(stack.stop)
        sink.stop()
        await asyncio.to_thread(shutil.rmtree, data_dir, True)
    result = DeliverBenchResult(
        messages=messages,
        seconds=seconds,
        per_s=messages / seconds,
        rows_seconds=rows_seconds,
        workers=workers,
        dkim=dkim,
        records_per_message=per_message,
        lane_backlog=lane_backlog,
        lane_latencies_ms=lanes.get("lane", []),
    )
    if peers:
        say("baselines: raw aiosmtplib and Postfix relaying the same number of messages")
        base_results = await run_baselines(messages, message_bytes=5000)
        result.raw_per_s = base_results["raw_per_s"]
        result.postfix_per_s = base_results["postfix_per_s"]
        result.postfix_inject_per_s = base_results["postfix_inject_per_s"]
    for name, values in lanes.items():
        if values:
            result.extra[f"{name}_p50_ms"] = statistics.median(values)
            result.extra[f"{name}_max_ms"] = max(values)
    return result
