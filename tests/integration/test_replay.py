"""`postwire replay` against the running pipeline: --into-sinks changes nothing that is there and
fills back exactly what was deleted in its range; --stage verify re-verifies under a group of its
own and leaves the live group alone."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from typer.testing import CliRunner

from streams.cli.main import app
from streams.contract.codec import Codec
from streams.kafka.config import client_options
from streams.settings import Settings
from tests.integration.helpers import eventually, new_tenant, signer

pytestmark = pytest.mark.integration


def _invoke(settings: Settings, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["replay", *args], env=settings.to_env())
    return result.exit_code, result.stdout, result.stderr


async def _replay(settings: Settings, *args: str) -> dict[str, Any]:
    code, output, error = await asyncio.to_thread(_invoke, settings, *args, "--json")
    assert code == 0, error
    summary: dict[str, Any] = json.loads(output)
    return summary


def _request(tenant: str, address: str, operation: str = "validate") -> dict[str, Any]:
    return {
        "request_id": str(uuid.uuid4()),
        "tenant": tenant,
        "operation": operation,
        "recipients": [{"email": address}],
        "created_at": datetime.now(UTC),
    }


async def _publish(
    settings: Settings, codec: Codec, requests: list[dict[str, Any]], key: str
) -> None:
    """The requests of one tenant, produced and signed as its direct producer does."""
    headers = await signer(settings, requests[0]["tenant"], key)
    producer = AIOKafkaProducer(**client_options(settings.kafka), acks="all")
    await producer.start()
    try:
        for r in requests:
            value = codec.encode("EmailRequest", r)
            await producer.send(
                settings.topics.requests, value, key=r["tenant"].encode(), headers=headers(value)
            )
        await producer.flush()
    finally:
        await producer.stop()


async def _count(conn: asyncpg.Connection, sql: str, *args: Any) -> int:
    return int(await conn.fetchval(sql, *args))


async def test_into_sinks_changes_nothing_then_fills_back_exactly_the_deleted_range(
    stack: Settings, codec: Codec
) -> None:
    tenant, key = await new_tenant(stack, "replay")
    first = [_request(tenant, f"a{i}@normal.example") for i in range(30)]
    second = [_request(tenant, f"b{i}@normal.example") for i in range(30)]
    conn = await asyncpg.connect(stack.dsn)
    try:
        # validate requests: their requests rows come from the verify topic (their VerifyTasks
        # are their audit record) and their outcome is a verifications row
        mine = "SELECT count(*) FROM requests WHERE tenant_id = $1"
        results = "SELECT count(*) FROM verifications WHERE tenant_id = $1"

        async def landed() -> tuple[int, int]:
            return await _count(conn, mine, tenant), await _count(conn, results, tenant)

        began = datetime.now(UTC)
        await _publish(stack, codec, first, key)
        assert await eventually(landed, lambda n: n == (30, 30)) == (30, 30)
        middle = datetime.now(UTC)
        await _publish(stack, codec, second, key)
        assert await eventually(landed, lambda n: n == (60, 60)) == (60, 60)
        ended = datetime.now(UTC) + timedelta(seconds=1)
        window = ("--from", began.isoformat(), "--to", ended.isoformat())

        # nothing was lost: the replay upserts every row and changes none
        summary = await _replay(stack, "--topic", "verify", "--into-sinks", *window)
        assert summary["topic"] == stack.topics.verify
        assert summary["records"] >= 60
        assert summary["rows"]["requests"] == summary["records"]
        assert summary["changed"]["requests"] == 0
        assert summary["before"]["requests"] == summary["after"]["requests"]
        assert summary["dead_lettered"] == 0
        assert sum(p["end"] - p["start"] for p in summary["partitions"]) == summary["records"]

        # lose the second batch's rows and five of the first, then replay the second's range only
        second_ids = [r["request_id"] for r in second]
        lost_first = [r["request_id"] for r in first[:5]]
        kept = await conn.fetch(
            "SELECT * FROM requests WHERE request_id = ANY($1::text[]) ORDER BY request_id",
            second_ids,
        )
        await conn.execute(
            "DELETE FROM requests WHERE request_id = ANY($1::text[])", second_ids + lost_first
        )
        await conn.execute(
            "DELETE FROM verifications WHERE request_id = ANY($1::text[])", second_ids
        )
        assert await landed() == (25, 30)

        late = ("--from", middle.isoformat(), "--to", ended.isoformat())
        summary = await _replay(stack, "--topic", stack.topics.verify, "--into-sinks", *late)
        assert summary["changed"]["requests"] == 30
        assert summary["after"]["requests"] - summary["before"]["requests"] == 30
        summary = await _replay(stack, "--topic", "verifications", "--into-sinks", *late)
        assert summary["changed"]["verifications"] == 30
        assert set(summary["before"]) == {"verifications", "rejections"}
        # exactly the range came back, as it was; the five outside it are still missing
        assert await landed() == (55, 60)
        back = await conn.fetch(
            "SELECT * FROM requests WHERE request_id = ANY($1::text[]) ORDER BY request_id",
            second_ids,
        )
        ignore = {"accepted_at"}  # filled by PostgreSQL when the row is written
        assert [{k: v for k, v in r.items() if k not in ignore} for r in back] == [
            {k: v for k, v in r.items() if k not in ignore} for r in kept
        ]
        assert not await _count(
            conn, "SELECT count(*) FROM requests WHERE request_id = ANY($1::text[])", lost_first
        )
    finally:
        await conn.close()


async def _group_offsets(settings: Settings, group: str, topic: str) -> dict[int, int]:
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in found.items() if tp.topic == topic}


async def _end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    from aiokafka import AIOKafkaConsumer

    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    tps = [TopicPartition(topic, p["partition"]) for p in described[0]["partitions"]]
    consumer = AIOKafkaConsumer(**client_options(settings.kafka))
    await consumer.start()
    try:
        return {tp.partition: off for tp, off in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def test_stage_verify_reverifies_under_its_own_group(stack: Settings, codec: Codec) -> None:
    tenant, key = await new_tenant(stack, "reverify")
    addresses = [f"u{i}@normal.example" for i in range(10)] + ["x@doesnotexist.example"]
    requests = [_request(tenant, a, "verify") for a in addresses]
    verify_topic = stack.topics.verify
    live_group = f"{stack.app_id}-verify"  # the verify stage's consumer group
    conn = await asyncpg.connect(stack.dsn)
    try:
        mine = "SELECT count(*) FROM verifications WHERE tenant_id = $1"
        began = datetime.now(UTC)
        await _publish(stack, codec, requests, key)
        assert await eventually(lambda: _count(conn, mine, tenant), lambda n: n == 11) == 11
        ended = datetime.now(UTC) + timedelta(seconds=1)
        # the live group has committed everything it read: its offsets must stay where they are
        ends = await _end_offsets(stack, verify_topic)
        live = await eventually(
            lambda: _group_offsets(stack, live_group, verify_topic), lambda o: o == ends
        )
        assert live == ends

        first = {
            r["address"]: r
            for r in await conn.fetch("SELECT * FROM verifications WHERE tenant_id = $1", tenant)
        }
        deleted_at = datetime.now(UTC)
        await conn.execute("DELETE FROM verifications WHERE tenant_id = $1", tenant)

        summary = await _replay(
            stack, "--stage", "verify", "--from", began.isoformat(), "--to", ended.isoformat()
        )
        assert summary["topic"] == verify_topic
        assert summary["group"].startswith(f"{stack.app_id}-replay-verify-")
        assert summary["records"] >= 11
        assert summary["produced"][stack.topics.verifications] == summary["records"]
        assert summary["dead_lettered"] == 0

        back = await eventually(lambda: _count(conn, mine, tenant), lambda n: n == 11)
        assert back == 11
        again = {
            r["address"]: r
            for r in await conn.fetch("SELECT * FROM verifications WHERE tenant_id = $1", tenant)
        }
        # verified anew by the replay (not re-sunk old results), with the same verdicts
        assert all(r["verified_at"] >= deleted_at for r in again.values())
        assert {a: r["is_reachable"] for a, r in again.items()} == {
            a: r["is_reachable"] for a, r in first.items()
        }
        assert again["x@doesnotexist.example"]["is_reachable"] == "invalid"

        # the replay committed under its own group, up to the end of its range
        committed = await _group_offsets(stack, summary["group"], verify_topic)
        planned = {p["partition"]: p["end"] for p in summary["partitions"] if p["end"] > p["start"]}
        assert committed == planned
        assert await _group_offsets(stack, live_group, verify_topic) == live
    finally:
        await conn.close()


async def test_replay_errors_that_need_the_cluster(stack: Settings) -> None:
    code, _, error = await asyncio.to_thread(
        _invoke, stack, "--topic", "nosuch", "--from", "-1h", "--into-sinks"
    )
    assert code == 2, error
    assert "error: the cluster has no topic 'nosuch'" in error
    code, _, error = await asyncio.to_thread(
        _invoke, stack, "--topic", "requests", "--from", "-1h", "--into-sinks"
    )
    assert code == 2, error
    assert f"no sink reads {stack.topics.requests}" in " ".join(error.split())
