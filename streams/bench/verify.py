"""`postwire bench verify`: the whole verification pipeline on a throwaway embedded stack with a
loopback DNS server, MX answers warm in the cache; throughput and request-to-row latency, next
to raw aiokafka pass-through and asyncpg COPY measured in the same run."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer

from streams.bench.baselines import aiokafka_passthrough_rate, copy_rate
from streams.bench.dns_server import ZoneServer, bench_zone
from streams.bench.records import kafka_counts, records_per_request
from streams.bench.stacks import Credentials, bench_settings
from streams.contract.build import email_request, recipient
from streams.contract.codec import default_codec
from streams.contract.records import EmailRequest
from streams.contract.signing import sign
from streams.db.tenants import create_api_key, create_tenant
from streams.kafka.config import client_options
from streams.settings import Settings
from streams.stack.stack import Stack

__all__ = ["VerifyBenchResult", "run_verify_bench"]

DOMAINS = 50


@dataclass
class VerifyBenchResult:
    requests: int
    rate_target: float | None
    seconds: float
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    passthrough_per_s: float
    copy_per_s: float
    workers: int
    # Kafka records per request (produced by the pipeline, consumed by every group), from the
    # broker's offsets
    records_per_request: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vs_passthrough(self) -> float:
        return self.requests_per_s / self.passthrough_per_s

    @property
    def vs_copy(self) -> float:
        return self.requests_per_s / self.copy_per_s


async def _publish(
    settings: Settings, tenant: str, key: Credentials, n: int, run: str, rate: float | None
) -> float:
    """Publish ``n`` requests, each stamped ``created_at`` as it is sent (so a paced run measures
    the pipeline, not the queue in this generator)."""
    codec = default_codec()
    producer = AIOKafkaProducer(**client_options(settings.kafka), acks="all", linger_ms=2)
    await producer.start()
    began = time.perf_counter()
    try:
        for i in range(n):
            value = codec.encode("EmailRequest", _request(tenant, i, run))
            headers = sign(value, tenant=tenant, key_id=key[0], api_key=key[1])
            await producer.send(
                settings.topics.requests, value, key=tenant.encode(), headers=headers
            )
            if rate is not None and i % 20 == 19:
                ahead = began + (i + 1) / rate - time.perf_counter()
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await producer.flush()
    finally:
        await producer.stop()
    return began


def _request(tenant: str, i: int, run: str) -> EmailRequest:
    address = f"user{i}@d{i % DOMAINS}.bench.example"
    return email_request(
        f"{run}-{i}",
        tenant,
        "validate",
        datetime.now(UTC),
        recipients=[recipient(address)],
    )


async def _wait_rows(conn: asyncpg.Connection[Any], prefix: str, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await conn.fetchval(
            "SELECT count(*) FROM verifications WHERE request_id LIKE $1", f"{prefix}-%"
        )
        if got >= n:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"only {got} of {n} results landed within {timeout:.0f}s")


async def run_verify_bench(
    requests: int, rate: float | None, workers: int, partitions: int, progress: Any = None
) -> VerifyBenchResult:
    data_dir = Path(tempfile.mkdtemp(prefix="postwire-bench-"))
    dns = ZoneServer(bench_zone(DOMAINS), host="127.0.0.1")
    dns.start()
    settings = bench_settings(
        data_dir, partitions=partitions, worker_processes=workers, dns_nameservers=dns.nameserver
    )
    stack = Stack(settings, workers=True)
    finished = False
    await stack.start(detach=False)
    try:
        conn = await asyncpg.connect(settings.dsn)
        try:
            await create_tenant(conn, "bench")
            key = await create_api_key(conn, "bench", secret=settings.secret)
            # warm-up: every domain's MX into the cache, workers joined and recovered
            await asyncio.sleep(settings.directory_refresh + 1)
            await _publish(settings, "bench", key, DOMAINS * 4, "warm", None)
            await _wait_rows(conn, "warm", DOMAINS * 4, 180)
            if progress:
                progress("warm-up done; measuring the pipeline")
            run = uuid.uuid4().hex[:8]
            before = await kafka_counts(settings.kafka, settings.topic_prefix)
            began = await _publish(settings, "bench", key, requests, run, rate)
            await _wait_rows(conn, run, requests, 600)
            elapsed = time.perf_counter() - began
            # the last commits (sinks, stages) follow the rows by a moment
            await asyncio.sleep(3)
            delta = (await kafka_counts(settings.kafka, settings.topic_prefix)).minus(before)
            row = await conn.fetchrow(
                "SELECT max(landed_at) AS last,"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY landed_at - requested_at) AS p50,"
                " percentile_cont(0.95) WITHIN GROUP (ORDER BY landed_at - requested_at) AS p95,"
                " percentile_cont(0.99) WITHIN GROUP (ORDER BY landed_at - requested_at) AS p99"
                " FROM verifications WHERE request_id LIKE $1",
                f"{run}-%",
            )
            # where in the run the slow ones were: a steady tail and a one-off stall look alike
            # in one p99 and very different here
            slices = await conn.fetch(
                "WITH r AS (SELECT landed_at - requested_at AS lat, requested_at,"
                " min(requested_at) OVER () AS t0 FROM verifications WHERE request_id LIKE $1)"
                " SELECT floor(extract(epoch FROM requested_at - t0) / 5)::int AS slice,"
                " percentile_cont(0.99) WITHIN GROUP (ORDER BY lat) AS p99 FROM r"
                " GROUP BY 1 ORDER BY 1",
                f"{run}-%",
            )
        finally:
            await conn.close()
        if progress:
            progress("measuring baselines: aiokafka pass-through, asyncpg COPY")
        passthrough = await aiokafka_passthrough_rate(settings.kafka, requests)
        copy = await copy_rate(settings.dsn, requests)
        finished = True
    finally:
        await asyncio.to_thread(stack.stop)
        dns.stop()
        if finished:
            await asyncio.to_thread(shutil.rmtree, data_dir, True)
        elif progress:
            progress(f"kept {data_dir} (logs/) for a look at what went wrong")
    assert row is not None
    return VerifyBenchResult(
        requests=requests,
        rate_target=rate,
        seconds=elapsed,
        requests_per_s=requests / elapsed,
        p50_ms=row["p50"].total_seconds() * 1000,
        p95_ms=row["p95"].total_seconds() * 1000,
        p99_ms=row["p99"].total_seconds() * 1000,
        passthrough_per_s=passthrough,
        copy_per_s=copy,
        workers=workers,
        records_per_request=records_per_request(delta, requests),
        extra={
            "records": {"produced": delta.produced, "consumed": delta.consumed},
            "p99_ms_by_5s": [round(r["p99"].total_seconds() * 1000, 1) for r in slices],
        },
    )
