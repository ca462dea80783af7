"""Send requests through the running pipeline to the fake MXs on loopback: delivery with DKIM,
retries, bounces, suppression, queue control, no double sends."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import dkim
import dns.message
import dns.query
import pytest
from aiokafka import AIOKafkaProducer

from streams.contract.codec import Codec
from streams.deliver.control import Command, Selector
from streams.deliver.queue import publish_command
from streams.deliver.retry import tier_topics
from streams.gate.expand import expand
from streams.kafka.config import client_options
from streams.kafka.read import read_compacted
from streams.settings import Settings
from streams.stack.stack import Stack
from streams.stages.deliver import ENQUEUED
from streams.stages.policies import retry_policy
from tests.conftest import SENDER_DOMAIN
from tests.integration.helpers import eventually, install_dkim_key, new_tenant, signer
from tests.peers.world import World

pytestmark = pytest.mark.integration


async def _tenant(settings: Settings) -> tuple[str, str]:
    return await new_tenant(settings, "mail", settle=False)


def send_request(tenant: str, recipients: list[str], **extra: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "tenant": tenant,
        "operation": "send",
        "priority": "high",
        "from": {"email": f"news@{SENDER_DOMAIN}", "name": "Acme News"},
        "recipients": [
            {"email": r, "substitutions": {"name": r.split("@")[0]}, "custom_args": {"rid": r}}
            for r in recipients
        ],
        "content": {
            "subject": "Hello {{ name }}",
            "text": "Hi {{ name }},\r\nwelcome.\r\n",
            "html": "<p>Hi {{ name }}</p>",
        },
        "categories": ["welcome"],
        "custom_args": {"campaign": "c1"},
        "created_at": datetime.now(UTC),
    }
    request.update(extra)
    return request


async def _publish(
    settings: Settings,
    topic: str,
    values: list[tuple[bytes, bytes]],
    headers: Callable[[bytes], list[tuple[str, bytes]]] | None = None,
) -> None:
    producer = AIOKafkaProducer(**client_options(settings.kafka), acks="all")
    await producer.start()
    try:
        for key, value in values:
            await producer.send(topic, value, key=key, headers=headers(value) if headers else None)
        await producer.flush()
    finally:
        await producer.stop()


async def _send(settings: Settings, codec: Codec, key: str, request: dict[str, Any]) -> None:
    """``request`` produced as its tenant's direct producer, signed with ``key``."""
    tenant = request["tenant"]
    await _publish(
        settings,
        settings.topics.requests,
        [(tenant.encode(), codec.encode("EmailRequest", request))],
        await signer(settings, tenant, key),
    )


async def _states(conn: asyncpg.Connection, message_id: str) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT recipient, state FROM messages WHERE message_id = $1", message_id
    )
    return {r["recipient"]: r["state"] for r in rows}


async def _kinds(conn: asyncpg.Connection, message_id: str, kind: str) -> list[asyncpg.Record]:
    return [e for e in await _events(conn, message_id) if e["type"] == kind]


async def _events(conn: asyncpg.Connection, message_id: str) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT type, recipient, reason, detail, occurred_at FROM events "
            "WHERE message_id = $1 ORDER BY occurred_at",
            message_id,
        )
    )


def _dns_txt(world: World) -> Any:
    host, port = world.dns.host, world.dns.port

    def lookup(name: bytes, timeout: int = 5) -> bytes:
        query = dns.message.make_query(name.decode().rstrip("."), "TXT")
        answer = dns.query.udp(query, host, port=port, timeout=timeout)
        for rrset in answer.answer:
            for rdata in rrset:
                return b"".join(rdata.strings)
        return b""

    return lookup


async def test_delivered_signed_with_args_and_state(
    stack: Settings, codec: Codec, world: World, db: asyncpg.Connection
) -> None:
    tenant, key = await _tenant(stack)
    dkim_key = await install_dkim_key(stack, world, tenant)
    request = send_request(tenant, ["alice@normal.example", "bob@normal.example"])
    await _send(stack, codec, key, request)
    mid = request["request_id"]

    def states() -> Awaitable[dict[str, str]]:
        return _states(db, mid)

    want = {"alice@normal.example": "delivered", "bob@normal.example": "delivered"}
    assert await eventually(states, lambda s: s == want) == want
    [message] = world.mx["normal"].messages_to("alice@normal.example")[-1:]
    assert b"Subject: Hello alice" in message
    assert b"X-Postwire-Categories" in message
    assert dkim.verify(message, dnsfunc=_dns_txt(world)), "DKIM signature does not verify"
    assert f"d={SENDER_DOMAIN}; s={dkim_key.selector};".encode() in message.replace(b"\r\n ", b" ")

    def delivered_events() -> Awaitable[list[asyncpg.Record]]:
        return _kinds(db, mid, "delivered")

    delivered = await eventually(delivered_events, lambda found: len(found) >= 2)
    assert len(delivered) == 2
    assert '"code": 250' in delivered[0]["detail"]
    assert '"campaign": "c1"' in delivered[0]["detail"]


async def test_hard_bounce_suppresses_the_address(
    stack: Settings, codec: Codec, world: World, db: asyncpg.Connection
) -> None:
    tenant, key = await _tenant(stack)
    first = send_request(tenant, ["nobody@normal.example"])
    await _send(stack, codec, key, first)

    def states() -> Awaitable[dict[str, str]]:
        return _states(db, first["request_id"])

    assert await eventually(states, bool) == {"nobody@normal.example": "bounced"}

    def bounces() -> Awaitable[list[asyncpg.Record]]:
        return _kinds(db, first["request_id"], "bounced")

    [bounce] = await eventually(bounces, bool)  # the events sink may trail the messages sink
    assert "user_unknown" in bounce["detail"]
    assert "5.1.1" in bounce["reason"]

    async def suppressed() -> int:
        return int(
            await db.fetchval(
                "SELECT count(*) FROM suppressions WHERE tenant_id = $1 AND removed_at IS NULL",
                tenant,
            )
        )

    assert await eventually(suppressed, lambda n: n == 1) == 1
    rcpts_before = world.mx["normal"].count("rcpt")
    second = send_request(tenant, ["nobody@normal.example"])
    await _send(stack, codec, key, second)

    def states2() -> Awaitable[dict[str, str]]:
        return _states(db, second["request_id"])

    assert await eventually(states2, bool) == {"nobody@normal.example": "dropped"}

    def drops() -> Awaitable[list[asyncpg.Record]]:
        return _kinds(db, second["request_id"], "dropped")

    [dropped] = await eventually(drops, bool)
    assert dropped["reason"] == "suppressed"
    assert world.mx["normal"].count("rcpt") == rcpts_before  # never asked the server again


async def test_4xx_is_deferred_then_retried_and_delivered(
    stack: Settings, codec: Codec, db: asyncpg.Connection
) -> None:
    tenant, key = await _tenant(stack)
    request = send_request(tenant, ["fred@flaky.example"])
    await _send(stack, codec, key, request)

    def states() -> Awaitable[dict[str, str]]:
        return _states(db, request["request_id"])

    want = {"fred@flaky.example": "delivered"}
    assert await eventually(states, lambda s: s == want) == want

    def events_now() -> Awaitable[list[asyncpg.Record]]:
        return _events(db, request["request_id"])

    # the events table has a sink of its own: it may be a moment behind the messages table
    events = await eventually(events_now, lambda found: len(found) >= 2)
    kinds = [e["type"] for e in events]
    assert kinds == ["deferred", "delivered"], kinds
    assert "451" in events[0]["reason"]
    # the ladder's first step is 1 s here: never retried early
    gap = (events[1]["occurred_at"] - events[0]["occurred_at"]).total_seconds()
    assert gap >= 0.9


async def test_unreachable_mx_is_deferred_and_listed_in_the_queue(
    stack: Settings, codec: Codec, db: asyncpg.Connection
) -> None:
    tenant, key = await _tenant(stack)
    request = send_request(tenant, ["alice@stall.example"])
    await _send(stack, codec, key, request)

    async def deferred() -> list[asyncpg.Record]:
        return [e for e in await _events(db, request["request_id"]) if e["type"] == "deferred"]

    found = await eventually(deferred, lambda evs: len(evs) >= 1)
    assert found
    assert "timeout" in found[0]["reason"]

    async def queued() -> list[dict[str, Any]]:
        entries = await read_compacted(stack.kafka, stack.topics.queue)
        return [e for e in entries.values() if e["message_id"] == request["request_id"]]

    entries = await eventually(queued, lambda es: len(es) == 1)
    assert entries[0]["state"] == "deferred"
    assert entries[0]["recipient"] == "alice@stall.example"
    # clean up: delete it from the queue; it leaves with a dropped event
    await publish_command(
        stack.kafka, Command("delete", Selector(message_id=request["request_id"]), _now_ms())
    )

    def states() -> Awaitable[dict[str, str]]:
        return _states(db, request["request_id"])

    want = {"alice@stall.example": "dropped"}
    assert await eventually(states, lambda s: s == want) == want
    assert await eventually(queued, lambda es: not es) == []


async def test_flush_sends_deferred_mail_now(
    stack: Settings, codec: Codec, world: World, db: asyncpg.Connection
) -> None:
    tenant, _key = await _tenant(stack)
    before = len(world.mx["normal"].messages_to("joe@normal.example"))
    request = send_request(tenant, ["joe@normal.example"])
    now = datetime.now(UTC)
    [(domain, _lane, task)] = expand(
        {**request, "send_at": None, "reply_to": None, "substitutions": {}}, now, lambda *_: None
    ).tasks
    # deferred once, next attempt an hour away: it waits in the longest delay topic
    deferred = {
        **task,
        "attempt": 1,
        "first_attempt_at": now,
        "not_before": now + timedelta(hours=1),
    }
    longest = tier_topics(retry_policy(stack.delivery), stack.topics.prefix)[-1]
    producer = AIOKafkaProducer(**client_options(stack.kafka), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(
            longest,
            codec.encode("DeliveryTask", deferred),
            key=domain.encode(),
            headers=[(ENQUEUED, str(_now_ms()).encode())],
        )
    finally:
        await producer.stop()
    await asyncio.sleep(3)
    assert len(world.mx["normal"].messages_to("joe@normal.example")) == before
    await publish_command(
        stack.kafka, Command("flush", Selector(message_id=request["request_id"]), _now_ms())
    )

    def states() -> Awaitable[dict[str, str]]:
        return _states(db, request["request_id"])

    want = {"joe@normal.example": "delivered"}
    assert await eventually(states, lambda s: s == want) == want
    assert len(world.mx["normal"].messages_to("joe@normal.example")) == before + 1


def _now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


async def test_hold_then_release(
    stack: Settings, codec: Codec, world: World, db: asyncpg.Connection
) -> None:
    tenant, key = await _tenant(stack)
    request = send_request(tenant, ["joe@normal.example"])
    await publish_command(stack.kafka, Command("hold", Selector(tenant=tenant), _now_ms()))
    await asyncio.sleep(1.0)  # every worker's control feed has it
    await _send(stack, codec, key, request)

    async def queued() -> list[dict[str, Any]]:
        entries = await read_compacted(stack.kafka, stack.topics.queue)
        return [e for e in entries.values() if e["tenant"] == tenant]

    held = await eventually(queued, lambda es: len(es) == 1)
    assert held[0]["state"] == "held"
    before = len(world.mx["normal"].messages_to("joe@normal.example"))
    await publish_command(stack.kafka, Command("release", Selector(tenant=tenant), _now_ms()))

    def states() -> Awaitable[dict[str, str]]:
        return _states(db, request["request_id"])

    want = {"joe@normal.example": "delivered"}
    assert await eventually(states, lambda s: s == want) == want
    assert len(world.mx["normal"].messages_to("joe@normal.example")) == before + 1
    assert await eventually(queued, lambda es: not es) == []


async def test_a_redelivered_task_is_not_sent_twice(
    pipeline: Stack, codec: Codec, world: World, db: asyncpg.Connection
) -> None:
    stack = pipeline.settings
    tenant, key = await _tenant(stack)
    request = send_request(tenant, ["x@normal.example"])
    await _send(stack, codec, key, request)

    def states() -> Awaitable[dict[str, str]]:
        return _states(db, request["request_id"])

    want = {"x@normal.example": "delivered"}
    assert await eventually(states, lambda s: s == want) == want
    sent = len(world.mx["normal"].messages_to("x@normal.example"))
    expansion = expand(
        {**request, "send_at": None, "reply_to": None, "substitutions": {}},
        datetime.now(UTC),
        lambda *_: None,
    )
    [(domain, lane, task)] = expansion.tasks
    # the lane's worker restarts (its ledger comes back from the changelog), then Kafka hands
    # it the same task again, as after a crash before the offset commit
    owner = lane  # each lane has a worker process of its own, named after it
    worker = next(p for p in pipeline.apps if p.name == owner)
    worker.stop()
    worker.start(detach=False)
    await _publish(
        stack, stack.topics.lane(lane), [(domain.encode(), codec.encode("DeliveryTask", task))]
    )
    # a fresh message behind it on the same lane proves the duplicate was processed
    marker = send_request(tenant, ["x@normal.example"])
    await _send(stack, codec, key, marker)

    def marker_states() -> Awaitable[dict[str, str]]:
        return _states(db, marker["request_id"])

    assert await eventually(marker_states, lambda s: s == want, timeout=90) == want
    assert len(world.mx["normal"].messages_to("x@normal.example")) == sent + 1


async def test_bad_task_bytes_and_unrenderable_mail_are_dead_lettered(
    stack: Settings, codec: Codec, db: asyncpg.Connection
) -> None:
    tenant, key = await _tenant(stack)
    await _publish(stack, stack.topics.deliveries, [(b"normal.example", b"not a task")])
    bad = send_request(
        tenant, ["alice@normal.example"], substitutions={"name": "x\r\nBcc: evil@x.example"}
    )
    bad["recipients"][0]["substitutions"] = {}
    await _send(stack, codec, key, bad)

    async def rejections() -> list[asyncpg.Record]:
        return list(
            await db.fetch(
                "SELECT error_code, source_topic FROM rejections WHERE stage = 'deliver' "
                "AND (tenant_id = $1 OR source_topic = $2)",
                tenant,
                stack.topics.deliveries,
            )
        )

    found = await eventually(rejections, lambda rs: len(rs) >= 2)
    codes = sorted(r["error_code"] for r in found)
    assert "codec.not_avro" in codes
    assert "render.header_injection" in codes

    def states() -> Awaitable[dict[str, str]]:
        return _states(db, bad["request_id"])

    assert await eventually(states, bool) == {"alice@normal.example": "failed"}
