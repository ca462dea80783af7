"""State that must survive: rate-limit windows across a worker restart, and rows across a
PostgreSQL outage under the sinks."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from sinks.runner import run_sinks
from streams.contract.codec import Codec
from streams.contract.signing import sign
from streams.db.tenants import create_api_key, create_tenant
from streams.kafka.config import client_options
from streams.settings import Settings
from streams.stack.stack import Stack
from tests.conftest import stack_settings
from tests.integration.helpers import eventually

pytestmark = pytest.mark.integration


def _request(tenant: str) -> dict[str, object]:
    return {
        "request_id": str(uuid.uuid4()),
        "tenant": tenant,
        "operation": "validate",
        "recipients": [{"email": "alice@normal.example"}],
        "created_at": datetime.now(UTC),
    }


async def _publish(
    settings: Settings, codec: Codec, records: list[dict[str, object]], key: tuple[str, str]
) -> None:
    """Produce ``records`` as a direct producer holding ``key`` (its id and the key) does."""
    producer = AIOKafkaProducer(**client_options(settings.kafka), acks="all")
    await producer.start()
    try:
        for r in records:
            value, tenant = codec.encode("EmailRequest", r), str(r["tenant"])
            await producer.send(
                settings.topics.requests,
                value,
                key=tenant.encode(),
                headers=sign(value, tenant=tenant, key_id=key[0], api_key=key[1]),
            )
        await producer.flush()
    finally:
        await producer.stop()


async def _outcomes(conn: asyncpg.Connection, tenant: str) -> tuple[int, int]:
    """(admitted, throttled) requests of ``tenant`` so far."""
    admitted = await conn.fetchval("SELECT count(*) FROM requests WHERE tenant_id = $1", tenant)
    throttled = await conn.fetchval(
        "SELECT count(*) FROM events WHERE tenant_id = $1 AND type = 'throttled'", tenant
    )
    return int(admitted), int(throttled)


async def test_rate_windows_survive_a_worker_restart(pipeline: Stack, codec: Codec) -> None:
    settings = pipeline.settings
    tenant = f"win-{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(settings.dsn)
    try:
        await create_tenant(conn, tenant, policy="reject", per_hour=4)
        key = await create_api_key(conn, tenant, secret=settings.secret)
        await asyncio.sleep(1.0)  # the directory refresh picks the tenant up

        def outcomes() -> Awaitable[tuple[int, int]]:
            return _outcomes(conn, tenant)

        await _publish(settings, codec, [_request(tenant) for _ in range(3)], key)
        assert await eventually(outcomes, lambda v: v == (3, 0)) == (3, 0)

        worker = next(p for p in pipeline.apps if p.name == "worker")
        worker.stop()
        worker.start(detach=False)

        await _publish(settings, codec, [_request(tenant) for _ in range(3)], key)
        # 3 counted before the restart + 1 more = the limit of 4; the other 2 are throttled
        assert await eventually(outcomes, lambda v: v[0] + v[1] == 6, timeout=90) == (4, 2)
    finally:
        await conn.close()


async def _rewind(settings: Settings, topic: str) -> None:
    """Move the stopped worker's gate group back to the start of ``topic``: a deliberate
    replay."""
    consumer = AIOKafkaConsumer(
        **client_options(settings.kafka),
        group_id=f"{settings.app_id}-gate",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.commit(dict.fromkeys(partitions, 0))
    finally:
        await consumer.stop()


async def test_a_replay_from_the_start_counts_nothing_twice(pipeline: Stack, codec: Codec) -> None:
    settings = pipeline.settings
    tenant = f"rep-{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(settings.dsn)
    try:
        await create_tenant(conn, tenant, policy="reject", per_hour=6)
        key = await create_api_key(conn, tenant, secret=settings.secret)

        def outcomes() -> Awaitable[tuple[int, int]]:
            return _outcomes(conn, tenant)

        await _publish(settings, codec, [_request(tenant) for _ in range(3)], key)
        assert await eventually(outcomes, lambda v: v == (3, 0)) == (3, 0)

        worker = next(p for p in pipeline.apps if p.name == "worker")
        worker.stop()
        await _rewind(settings, settings.topics.requests)
        worker.start(detach=False)

        # every request since the topic began is decided again; had the 3 been counted twice,
        # the window (6 per hour) would be full and these 3 throttled
        await _publish(settings, codec, [_request(tenant) for _ in range(3)], key)
        assert await eventually(outcomes, lambda v: sum(v) >= 6, timeout=90) == (6, 0)
        await asyncio.sleep(2)
        assert await outcomes() == (6, 0)
    finally:
        await conn.close()


async def test_worker_restarts_mid_verification_lose_nothing(pipeline: Stack, codec: Codec) -> None:
    settings = pipeline.settings
    tenant = f"mid-{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(settings.dsn)
    try:
        await create_tenant(conn, tenant, per_second=100_000)
        key = await create_api_key(conn, tenant, secret=settings.secret)
        requests = [_request(tenant) for _ in range(600)]
        ids = {str(r["request_id"]) for r in requests}

        async def verified() -> int:
            return int(
                await conn.fetchval(
                    "SELECT count(DISTINCT request_id) FROM verifications WHERE tenant_id = $1",
                    tenant,
                )
            )

        await _publish(settings, codec, requests, key)
        worker = next(p for p in pipeline.apps if p.name == "worker")
        for pause in (0.5, 2.0):  # once while the gate is busy, once mid-verification
            await asyncio.sleep(pause)
            worker.stop()
            worker.start(detach=False)
        assert await eventually(verified, lambda n: n == len(ids), timeout=120) == len(ids)
        landed = {
            r["request_id"]
            for r in await conn.fetch(
                "SELECT request_id FROM verifications WHERE tenant_id = $1", tenant
            )
        }
        assert landed == ids
    finally:
        await conn.close()


async def test_sink_rides_out_a_postgres_outage(tmp_path: Path, codec: Codec) -> None:
    settings = stack_settings(tmp_path / "data", sink_retry_max=1.0)
    stack = Stack(settings, workers=False)
    await stack.start(detach=False)
    stop = asyncio.Event()
    sinks = asyncio.create_task(run_sinks(settings, ("requests",), stop))
    try:
        producer = AIOKafkaProducer(**client_options(settings.kafka), acks="all")
        await producer.start()
        ids: list[str] = []

        async def send(n: int) -> None:
            for _ in range(n):
                r = _request("t")
                ids.append(str(r["request_id"]))
                await producer.send(
                    settings.topics.accepted, codec.encode("EmailRequest", r), key=b"t"
                )
            await producer.flush()

        async def count() -> int:
            conn = await asyncpg.connect(settings.dsn)
            try:
                return int(await conn.fetchval("SELECT count(*) FROM requests"))
            finally:
                await conn.close()

        await send(100)
        assert await eventually(count, lambda n: n == 100) == 100
        assert stack.postgres is not None
        stack.postgres.stop()
        await send(150)  # written while the database is down
        await asyncio.sleep(3)  # the sink fails, backs off, keeps its batch
        assert not sinks.done(), "the sink crashed instead of waiting for the database"
        stack.postgres.start(detach=False)
        await stack.postgres.wait_ready()
        assert await eventually(count, lambda n: n >= 250) == 250
        conn = await asyncpg.connect(settings.dsn)
        try:
            landed = {r["request_id"] for r in await conn.fetch("SELECT request_id FROM requests")}
        finally:
            await conn.close()
        assert landed == set(ids)
        await producer.stop()
    finally:
        stop.set()
        await asyncio.wait_for(sinks, 30)
        stack.stop()
