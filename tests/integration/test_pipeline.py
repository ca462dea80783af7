"""Avro records through real Kafka, the faust gate, and the batched sinks into PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from streams.contract.codec import Codec
from streams.kafka.config import client_options
from streams.settings import Settings
from tests.integration.helpers import eventually, new_tenant, signer

pytestmark = pytest.mark.integration


async def _tenant(settings: Settings) -> tuple[str, str]:
    return await new_tenant(settings, "tenant", settle=True)


def _request(tenant: str, i: int) -> dict[str, object]:
    return {
        "request_id": str(uuid.uuid4()),
        "tenant": tenant,
        "operation": "verify" if i % 2 else "send",
        "idempotency_key": f"k{i}",
        "priority": "bulk" if i % 3 == 0 else "normal",
        "recipients": [{"email": f"user{i}@example.test"}],
        # sends need a sender and content; example.test has no MX, so they bounce quietly
        "from": {"email": "it@acme.example"},
        "content": {"subject": "it", "text": "it"},
        "categories": ["it"],
        "created_at": datetime.now(UTC),
    }


async def test_requests_and_rejections_land_in_postgres(stack: Settings, codec: Codec) -> None:
    tenant, key = await _tenant(stack)
    headers = await signer(stack, tenant, key)
    requests = [_request(tenant, i) for i in range(200)]
    wrong_type = codec.encode(
        "DeliveryEvent",
        {"event_id": "e1", "tenant": tenant, "type": "opened", "occurred_at": datetime.now(UTC)},
    )
    good = codec.encode("EmailRequest", requests[0])
    bad_values = [b'{"not": "avro"}', good[:20], wrong_type, good + b"\x00"]

    producer = AIOKafkaProducer(**client_options(stack.kafka), acks="all")
    await producer.start()
    try:
        for r in requests:
            value = codec.encode("EmailRequest", r)
            await producer.send(
                stack.topics.requests, value, key=tenant.encode(), headers=headers(value)
            )
        for value in bad_values:
            await producer.send(stack.topics.requests, value, key=tenant.encode())
        await producer.flush()
    finally:
        await producer.stop()

    ids = [str(r["request_id"]) for r in requests]
    conn = await asyncpg.connect(stack.dsn)
    try:

        async def landed() -> tuple[int, list[asyncpg.Record]]:
            count = await conn.fetchval(
                "SELECT count(*) FROM requests WHERE request_id = ANY($1::text[])", ids
            )
            # other tests dead-letter requests too (bad or revoked keys): only ours count here
            rejected = await conn.fetch(
                "SELECT error_code, raw, stage, source_topic FROM rejections "
                "WHERE source_topic = $1 AND raw = ANY($2::bytea[]) "
                "ORDER BY source_partition, source_offset",
                stack.topics.requests,
                bad_values,
            )
            return count, rejected

        count, rejected = await eventually(landed, lambda v: v[0] == 200 and len(v[1]) == 4)
        assert count == 200
        assert sorted(r["error_code"] for r in rejected) == sorted(
            ["codec.not_avro", "codec.truncated", "codec.wrong_type", "codec.trailing_bytes"]
        )
        assert {bytes(r["raw"]) for r in rejected} == set(bad_values)
        assert {r["stage"] for r in rejected} == {"gate"}
        row = await conn.fetchrow("SELECT * FROM requests WHERE request_id = $1", ids[3])
        assert row is not None
        assert row["tenant_id"] == tenant
        assert row["operation"] == "verify"
        assert row["priority"] == "bulk"
        assert row["recipient_count"] == 1
        # a verify request's row comes from its VerifyTask: the verify topic is its audit log
        assert row["source_topic"] == stack.topics.verify
        send = await conn.fetchrow("SELECT * FROM requests WHERE request_id = $1", ids[0])
        assert send is not None
        assert send["source_topic"] == stack.topics.accepted
    finally:
        await conn.close()


async def test_replaying_the_same_records_adds_no_rows(stack: Settings, codec: Codec) -> None:
    tenant, key = await _tenant(stack)
    headers = await signer(stack, tenant, key)
    requests = [_request(tenant, i) for i in range(50)]
    producer = AIOKafkaProducer(**client_options(stack.kafka), acks="all")
    await producer.start()
    conn = await asyncpg.connect(stack.dsn)
    try:

        async def count() -> int:
            return int(
                await conn.fetchval("SELECT count(*) FROM requests WHERE tenant_id = $1", tenant)
            )

        for _ in range(2):  # the second pass is a replay of the same records
            for r in requests:
                value = codec.encode("EmailRequest", r)
                await producer.send(
                    stack.topics.requests, value, key=tenant.encode(), headers=headers(value)
                )
            await producer.flush()
            assert await eventually(count, lambda n: n == 50) == 50
        # give the replayed copies time to reach the sink; the count must stay put
        marker = codec.encode("EmailRequest", _request(tenant, 999))
        await producer.send_and_wait(
            stack.topics.requests, marker, key=tenant.encode(), headers=headers(marker)
        )
        assert await eventually(count, lambda n: n == 51) == 51
    finally:
        await conn.close()
        await producer.stop()


async def test_a_row_postgres_refuses_is_dead_lettered_and_the_rest_land(
    stack: Settings, codec: Codec
) -> None:
    tenant = f"nul-{uuid.uuid4().hex[:6]}"
    good = [_request(tenant, i) for i in range(20)]
    # valid Avro, but PostgreSQL text cannot hold NUL: a poison row, not an outage
    poison = _request(tenant, 99) | {"idempotency_key": "bad\x00key"}
    poison_bytes = codec.encode("EmailRequest", poison)
    producer = AIOKafkaProducer(**client_options(stack.kafka), acks="all")
    await producer.start()
    try:
        for r in good[:10]:
            await producer.send(stack.topics.accepted, codec.encode("EmailRequest", r), key=b"t")
        await producer.send(stack.topics.accepted, poison_bytes, key=b"t")
        for r in good[10:]:
            await producer.send(stack.topics.accepted, codec.encode("EmailRequest", r), key=b"t")
        await producer.flush()
    finally:
        await producer.stop()

    conn = await asyncpg.connect(stack.dsn)
    try:

        async def landed() -> int:
            return int(
                await conn.fetchval("SELECT count(*) FROM requests WHERE tenant_id = $1", tenant)
            )

        assert await eventually(landed, lambda n: n >= 20) == 20
        rows = await eventually(
            lambda: conn.fetch(
                "SELECT stage, error_code, error, raw FROM rejections WHERE raw = $1",
                poison_bytes,
            ),
            lambda r: len(r) > 0,
        )
        assert len(rows) == 1
        assert rows[0]["stage"] == "sink.requests"
        assert rows[0]["error_code"] == "sink.rejected_row"
        assert "0x00" in rows[0]["error"]
    finally:
        await conn.close()
