"""`postwire bench api`: SendGrid mail/send requests over HTTP into Kafka, against a raw aiokafka
producer writing the same records with the same concurrency, in the same run.

Both sides wait for the broker's acks=all answer per request; the difference is what the API
adds: HTTP, JSON, the SendGrid translation, Avro, the key check and the rate bucket. The API
runs in its own process, as `postwire up` runs it; no workers run, so nothing else competes.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiokafka import AIOKafkaProducer

from streams.api.sendgrid import translate
from streams.bench.load_stack import wait_healthy
from streams.bench.stacks import Credentials, bench_settings
from streams.contract.codec import default_codec
from streams.contract.signing import sign
from streams.db.tenants import create_api_key, create_tenant
from streams.deliver.senders import add_sender
from streams.errors import BenchError
from streams.kafka.config import client_options
from streams.settings import Settings
from streams.stack.stack import Stack

__all__ = ["ApiBenchResult", "run_api_bench"]

BODY: dict[str, Any] = {
    "personalizations": [{"to": [{"email": "bob@bench.example"}], "custom_args": {"n": "1"}}],
    "from": {"email": "news@bench.example", "name": "Bench"},
    "subject": "Your receipt",
    "content": [{"type": "text/plain", "value": "Thanks for your order. " * 20}],
    "categories": ["receipt"],
}


@dataclass
class ApiBenchResult:
    requests: int
    concurrency: int
    api_per_s: float
    api_p50_ms: float
    api_p99_ms: float
    raw_per_s: float
    raw_p50_ms: float
    raw_p99_ms: float

    @property
    def vs_raw(self) -> float:
        return self.api_per_s / self.raw_per_s


async def _drive(n: int, concurrency: int, one: Any) -> tuple[float, list[float]]:
    """Run ``one()`` ``n`` times from ``concurrency`` tasks: (requests/s, latencies in ms)."""
    latencies: list[float] = []
    left = iter(range(n))

    async def loop() -> None:
        for _ in left:
            began = time.perf_counter()
            await one()
            latencies.append((time.perf_counter() - began) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return n / (time.perf_counter() - began), latencies


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


async def _http(
    settings: Settings, key: str, n: int, concurrency: int
) -> tuple[float, list[float]]:
    url = f"{settings.api_base}/v3/mail/send"
    headers = {"Authorization": f"Bearer {key}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def one() -> None:
            async with session.post(url, json=BODY) as r:
                if r.status != 202:
                    raise BenchError(f"the API answered {r.status}: {await r.text()}")

        await _drive(min(500, n), concurrency, one)  # warm-up: connections, JIT-free but caches
        return await _drive(n, concurrency, one)


async def _raw(
    settings: Settings, key: Credentials, n: int, concurrency: int
) -> tuple[float, list[float]]:
    codec = default_codec()
    producer = AIOKafkaProducer(
        **client_options(settings.kafka), acks="all", enable_idempotence=True, linger_ms=1
    )
    await producer.start()
    try:

        async def one() -> None:
            records = translate(
                BODY,
                tenant="bench",
                message_id="m",
                idempotency_key=None,
                priority="high",
                now=datetime.now(UTC),
            )
            value = codec.encode("EmailRequest", records[0])
            headers = sign(value, tenant="bench", key_id=key[0], api_key=key[1])
            await producer.send_and_wait(
                settings.topics.requests, value, key=b"bench", headers=headers
            )

        await _drive(min(500, n), concurrency, one)
        return await _drive(n, concurrency, one)
    finally:
        await producer.stop()


async def run_api_bench(requests: int, concurrency: int, progress: Any = None) -> ApiBenchResult:
    say = progress or (lambda _m: None)
    data_dir = Path(tempfile.mkdtemp(prefix="postwire-bench-api-"))
    settings = bench_settings(data_dir)
    stack = Stack(settings, workers=False)
    api = stack.process("api", "api")
    try:
        await stack.start(detach=False)
        conn = await asyncpg.connect(settings.dsn)
        try:
            await create_tenant(conn, "bench")
            key = await create_api_key(conn, "bench", secret=settings.secret)
            # the bench sends from news@bench.example: a sender the operator vouches for
            await add_sender(
                conn, settings.secret, "bench", "bench.example", dkim=None, operator=True
            )
        finally:
            await conn.close()
        api.start(detach=False)
        await wait_healthy(settings.api_base)
        say(f"raw aiokafka: {requests:,} records, {concurrency} at a time, acks=all")
        raw_rate, raw_ms = await _raw(settings, key, requests, concurrency)
        say(f"HTTP API: {requests:,} POST /v3/mail/send, {concurrency} at a time")
        api_rate, api_ms = await _http(settings, key[1], requests, concurrency)
    finally:
        await asyncio.to_thread(api.stop)
        await asyncio.to_thread(stack.stop)
        await asyncio.to_thread(shutil.rmtree, data_dir, True)
    return ApiBenchResult(
        requests=requests,
        concurrency=concurrency,
        api_per_s=api_rate,
        api_p50_ms=statistics.median(api_ms),
        api_p99_ms=_p(api_ms, 99),
        raw_per_s=raw_rate,
        raw_p50_ms=statistics.median(raw_ms),
        raw_p99_ms=_p(raw_ms, 99),
    )
