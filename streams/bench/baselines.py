"""Raw ceilings measured in the same run as a benchmark, so results are reported as ratios on
a noisy machine: aiokafka pass-through (consume + produce, no processing) and asyncpg COPY."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.kafka.config import KafkaSettings, client_options

__all__ = ["aiokafka_passthrough_rate", "copy_rate"]


async def aiokafka_passthrough_rate(kafka: KafkaSettings, n: int, size: int = 200) -> float:
    """Messages/s for: consume from topic A and produce each to topic B, acks=all, one process."""
    src, dst = f"bench-src-{uuid.uuid4().hex[:6]}", f"bench-dst-{uuid.uuid4().hex[:6]}"
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(src, 4, 1), NewTopic(dst, 4, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(**client_options(kafka), acks="all", linger_ms=5)
    await producer.start()
    payload = b"x" * size
    try:
        for i in range(n):
            await producer.send(src, payload, key=str(i % 64).encode())
        await producer.flush()
        consumer = AIOKafkaConsumer(
            src,
            **client_options(kafka),
            group_id=f"bench-{src}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            began = time.perf_counter()
            seen = 0
            while seen < n:
                batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
                for messages in batch.values():
                    for msg in messages:
                        await producer.send(dst, msg.value, key=msg.key)
                    seen += len(messages)
                await consumer.commit()
            await producer.flush()
            return n / (time.perf_counter() - began)
        finally:
            await consumer.stop()
    finally:
        await producer.stop()


async def copy_rate(dsn: str, n: int) -> float:
    """Rows/s for asyncpg COPY of verification-like rows into a temp table."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TEMP TABLE bench_copy (request_id text, address text, tenant_id text,"
            " is_reachable text, score smallint, result jsonb, verified_at timestamptz)"
        )
        now = datetime.now(UTC)
        rows = [
            (str(i), f"user{i}@example.org", "t", "safe", 85, '{"k": "v"}', now) for i in range(n)
        ]
        began = time.perf_counter()
        async with conn.transaction():
            await conn.copy_records_to_table("bench_copy", records=rows)
        return n / (time.perf_counter() - began)
    finally:
        await conn.close()
