"""The throwaway stack around `postwire bench load`: the loopback DNS zone, the SMTP sink the
pipeline relays to, the bench settings, tenants and keys, and the raw-producer baseline."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.bench.dns_server import ZoneServer
from streams.bench.load_doors import SENDER, KafkaDoor
from streams.bench.load_profile import quantiles
from streams.bench.smtp_peers import SmtpSink, ensure_postfix, free_port
from streams.bench.stacks import Credentials, relay_settings
from streams.db.tenants import create_api_key, create_tenant
from streams.deliver.senders import add_sender
from streams.errors import BenchError, StackError
from streams.kafka.config import client_options
from streams.secret import ServerSecret
from streams.settings import Settings

__all__ = [
    "SmtpTarget",
    "make_tenants",
    "raw_producer",
    "stack_settings",
    "start_sink",
    "wait_healthy",
]


@dataclass
class SmtpTarget:
    host: str
    port: int
    kind: str
    pid: int | None
    stop: Callable[[], None]


def start_sink(data_dir: Path) -> SmtpTarget:
    """Postfix's smtp-sink when installed (as `bench deliver` uses), else the blackhole."""
    try:
        binaries = ensure_postfix()
    except StackError:
        binaries = None
    if binaries is not None:
        data_dir.chmod(0o755)  # smtp-sink drops to the postfix user and writes its counter here
        sink = SmtpSink(binaries, data_dir)
        sink.start()
        return SmtpTarget(sink.host, sink.port, "postfix smtp-sink", sink.pid, sink.stop)
    host, port = "127.0.0.1", free_port("127.0.0.1")
    with (data_dir / "blackhole.out").open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streams.bench.blackhole", host, str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return SmtpTarget(
                host, port, "built-in blackhole (streams.bench.blackhole)", proc.pid, stop
            )
        time.sleep(0.05)
    stop()
    raise BenchError(f"the SMTP blackhole did not listen on {host}:{port} within 15 s")


def stack_settings(
    data_dir: Path, workers: int, partitions: int, dns: ZoneServer, sink: SmtpTarget
) -> Settings:
    """The bench stack: every limit out of the way (tenant and destination rates, the ingress
    bucket), so the run measures the pipeline, never a 429 or a throttle."""
    return relay_settings(
        data_dir,
        sink.host,
        sink.port,
        partitions=partitions,
        worker_processes=workers,
        dns_nameservers=dns.nameserver,
    )


async def make_tenants(
    conn: asyncpg.Connection[Any], prefix: str, n: int, secret: ServerSecret
) -> list[tuple[str, Credentials]]:
    """``n`` tenants with a key each (its id and the key), all sending from the bench's domain
    (one the operator lends to all of them: vouched for as shared)."""
    found = []
    for j in range(n):
        tenant = f"{prefix}-{j}"
        await create_tenant(conn, tenant)
        credentials = await create_api_key(conn, tenant, secret=secret)
        await add_sender(
            conn, secret, tenant, SENDER.rpartition("@")[2], dkim=None, operator=True, shared=True
        )
        found.append((tenant, credentials))
    return found


async def wait_healthy(base: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with session.get(f"{base}/healthz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.2)
    raise BenchError(f"the API at {base} did not become healthy within {timeout:.0f}s")


async def raw_producer(settings: Settings, n: int, concurrency: int) -> dict[str, float]:
    """The raw producer `bench api` compares the API with: EmailRequest records from one
    AIOKafkaProducer (acks=all, idempotent), ``concurrency`` awaited at a time, into a scratch
    topic nobody reads. Records/s and p50/p99 ack latency."""
    topic = f"bench-raw-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, settings.partitions, 1)])
    finally:
        await admin.close()
    door = KafkaDoor(settings, [("bench", ("k_raw", "raw"))], "raw", timeout=30)
    producer = AIOKafkaProducer(
        **client_options(settings.kafka), acks="all", enable_idempotence=True, linger_ms=1
    )
    await producer.start()
    latencies: list[float] = []
    todo = iter(range(n))

    async def loop() -> None:
        for i in todo:
            tenant, _, rec = door.record("send" if i % 2 else "verify", i)
            began = time.perf_counter()
            value = door.codec.encode("EmailRequest", rec)
            await producer.send_and_wait(topic, value, key=tenant.encode())
            latencies.append(time.perf_counter() - began)

    try:
        began = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        seconds = time.perf_counter() - began
    finally:
        await producer.stop()
    q = quantiles(latencies)
    assert q is not None
    return {
        "raw_producer_per_s": n / seconds,
        "raw_producer_p50_ms": q.p50,
        "raw_producer_p99_ms": q.p99,
    }
