"""Limits that agree end to end, errors at the door, sandbox sends (issue 13, items 4-7), against
the session's running stack: its broker's real limits, its API process, its gate and delivery."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import dkim
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.partitioner import DefaultPartitioner

from streams.api.producer import IngressProducer
from streams.contract.codec import Codec
from streams.errors import RecordTooLargeError
from streams.kafka.config import client_options
from streams.kafka.limits import HEADROOM, REREAD_EVERY, LimitReader, RecordLimit, read_record_limit
from streams.kafka.topics import topic_specs
from streams.settings import Settings
from tests.conftest import SENDER_DOMAIN, free_port
from tests.integration.api_client import ApiClient
from tests.integration.helpers import eventually, install_dkim_key, new_tenant, signer
from tests.integration.test_deliver_pipeline import _dns_txt
from tests.peers.world import World
from tests.unit.runtime.test_gate_stage import NOW, batch, gate, request

pytestmark = pytest.mark.integration


def mail(to: str = "bob@normal.example", text: str = "Hi there", **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": to}]}],
        "from": {"email": f"news@{SENDER_DOMAIN}", "name": "Acme"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": text}],
    }
    body.update(kw)
    return body


async def _post(api: ApiClient, key: str, body: Any) -> Any:
    return await api.as_key(key).call("POST", "/v3/mail/send", body)


@asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def set_max_message_bytes(settings: Settings, topic: str, value: int | None) -> None:
    """Set (None: remove) a topic's max.message.bytes, keeping the configs it was made with
    (AlterConfigs replaces a topic's whole set)."""
    spec = next(s for s in topic_specs(settings.kafka) if s.name == topic)
    configs = dict(spec.config)
    if value is not None:
        configs["max.message.bytes"] = str(value)
    async with admin_client(settings) as admin:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs)])

    async def seen() -> int:
        return (await read_record_limit(client_options(settings.kafka), [topic])).max_message_bytes

    want = value or 1_048_588
    assert await eventually(seen, lambda v: v == want, timeout=10) == want


async def tenants_on_one_partition(settings: Settings) -> tuple[tuple[str, str], tuple[str, str]]:
    """Two tenants whose requests share a partition of `requests` (key = tenant)."""
    partitions = list(range(settings.partitions))
    choose = DefaultPartitioner()
    first = await new_tenant(settings, "big")
    while True:
        other = await new_tenant(settings, "small")
        if choose(other[0].encode(), partitions, partitions) == choose(
            first[0].encode(), partitions, partitions
        ):
            return first, other


async def test_a_record_kafka_refuses_is_a_413_and_the_partition_keeps_working(
    stack: Settings, api: ApiClient
) -> None:
    (_, big), (_, small) = await tenants_on_one_partition(stack)
    health = (await api.call("GET", "/healthz")).body["producer"]
    assert health["state"] == "ready"
    assert health["record_limit"] == 1_048_588 - HEADROOM  # read from the broker at start
    body = mail(text="x" * 100_000)  # under the API's body limit (256 KB in the test stack)
    lowered = 65_536
    await set_max_message_bytes(stack, stack.topics.requests, lowered)
    try:
        # the API still believes 1 MB: the broker refuses the record, which used to poison the
        # producer for every request on the partition (OutOfOrderSequenceNumber, 503s)
        refused = await _post(api, big, body)
        assert refused.status == 413
        message = refused.body["errors"][0]["message"]
        assert f"at most {lowered - HEADROOM:,} bytes" in message
        assert f"max.message.bytes of {stack.topics.requests} is {lowered:,}" in message
        after = await _post(api, small, mail())
        assert after.status == 202, after.body
        health = (await api.call("GET", "/healthz")).body["producer"]
        assert health["state"] == "ready"
        assert health["record_limit"] == lowered - HEADROOM
        assert health["replaced"] >= 1
        # now known: refused at the door, nothing sent, no producer replaced
        again = await _post(api, big, body)
        assert again.status == 413
        assert (await api.call("GET", "/healthz")).body["producer"]["replaced"] == health[
            "replaced"
        ]
    finally:
        await set_max_message_bytes(stack, stack.topics.requests, None)
    await asyncio.sleep(1.1)  # a 413 re-reads the limit at most once a second
    # a raised limit is honoured at once: the door confirms a refusal with the broker first
    assert (await _post(api, big, body)).status == 202
    health = (await api.call("GET", "/healthz")).body["producer"]
    assert health["record_limit"] == 1_048_588 - HEADROOM


@asynccontextmanager
async def scratch_topic(settings: Settings, max_bytes: int) -> AsyncIterator[str]:
    name = f"{settings.topic_prefix}.scratch-{uuid.uuid4().hex[:6]}"
    config = {"max.message.bytes": str(max_bytes)}
    async with admin_client(settings) as admin:
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs=config)])
    yield name


def producer_for(settings: Settings, topic: str) -> IngressProducer:
    client = client_options(settings.kafka)
    config = {**client, "acks": "all", "enable_idempotence": True}
    return IngressProducer(client, [topic], config, timeout=10.0)


async def _set_topic(settings: Settings, topic: str, max_bytes: int) -> None:
    async with admin_client(settings) as admin:
        resource = ConfigResource(
            ConfigResourceType.TOPIC, topic, {"max.message.bytes": str(max_bytes)}
        )
        await admin.alter_configs([resource])

    async def seen() -> int:
        return (await read_record_limit(client_options(settings.kafka), [topic])).max_message_bytes

    assert await eventually(seen, lambda v: v == max_bytes, timeout=10) == max_bytes


async def test_a_refused_batch_replaces_the_producer_and_spares_the_records_batched_with_it(
    stack: Settings,
) -> None:
    async with scratch_topic(stack, 100_000) as topic:
        producer = producer_for(stack, topic)
        await producer.start()
        try:
            assert producer.limit.request_bytes == 100_000 - HEADROOM
            with pytest.raises(RecordTooLargeError):  # measured, never sent
                await producer.send_all(topic, [(b"a", b"x" * 90_000, ())])
            assert producer.replaced == 0
            await _set_topic(stack, topic, 40_000)
            big = producer.send_all(topic, [(b"a", b"x" * 60_000, ())])
            small = producer.send_all(topic, [(b"b", b"y" * 100, ())])
            results = await asyncio.gather(big, small, return_exceptions=True)
            assert isinstance(results[0], RecordTooLargeError)
            assert results[0].limit == 40_000 - HEADROOM
            assert results[1] is None  # refused with the big one or after it, sent again
            assert producer.replaced >= 1
            for i in range(5):  # the partition takes records again
                await producer.send_all(topic, [(b"c", str(i).encode(), ())])
            ok, health = producer.health()
            assert ok
            assert health["record_limit"] == 40_000 - HEADROOM
        finally:
            await producer.stop()


async def test_no_new_producer_is_down_until_kafka_answers_again(stack: Settings) -> None:
    async with scratch_topic(stack, 100_000) as topic:
        producer = producer_for(stack, topic)
        await producer.start()
        try:
            # the next producer will find no broker (as if Kafka had gone away)
            working = producer.config["bootstrap_servers"]
            producer.config["bootstrap_servers"] = (
                f"127.0.0.1:{free_port()}"  # nobody listens there
            )
            await _set_topic(stack, topic, 40_000)
            with pytest.raises(RecordTooLargeError):  # refused by the broker, then measured
                await producer.send_all(topic, [(b"a", b"x" * 60_000, ())])
            ok, health = producer.health()
            assert not ok
            assert health["state"] == "down"
            assert "KafkaConnectionError" in health["reason"]
            began = time.monotonic()
            producer.timeout = 0.5
            with pytest.raises(TimeoutError):  # a 503 at the door: nothing promised
                await producer.send_all(topic, [(b"b", b"y", ())])
            assert time.monotonic() - began < 2
            producer.config["bootstrap_servers"] = working
            producer.timeout = 10.0
            await producer.send_all(topic, [(b"b", b"y", ())])  # waits for the next attempt
            assert producer.health()[0]
        finally:
            await producer.stop()


def _direct(tenant: str, **extra: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "tenant": tenant,
        "operation": "send",
        "priority": "high",
        "from": {"email": f"news@{SENDER_DOMAIN}", "name": "Acme"},
        "recipients": [{"email": "bob@normal.example"}],
        "content": {"subject": "Hi", "text": "Hi\r\n"},
        "created_at": datetime.now(UTC),
    }
    request.update(extra)
    return request


async def test_the_gate_enforces_the_limits_for_direct_producers(
    stack: Settings, codec: Codec, db: asyncpg.Connection, world: World
) -> None:
    tenant, key = await new_tenant(stack, "direct")
    many = _direct(tenant, recipients=[{"email": f"u{i}@normal.example"} for i in range(5000)])
    injected = _direct(tenant, content={"subject": "Hi\r\nBcc: x@evil.example", "text": "t"})
    bare_cr = _direct(tenant, content={"subject": "Hi", "text": "a\rb"})
    fine = _direct(tenant, recipients=[{"email": "joe@normal.example"}])
    # a record Kafka takes (1 MB) that the gate could not pass on as a task or a dead letter
    huge = codec.encode("EmailRequest", _direct(tenant)) + b"\x00" * (1_048_588 - 10_000)
    values = [codec.encode("EmailRequest", r) for r in (many, injected, bare_cr, fine)]
    headers = await signer(stack, tenant, key)
    producer = AIOKafkaProducer(
        **client_options(stack.kafka), acks="all", max_request_size=2_000_000
    )
    await producer.start()
    try:
        for value in [*values[:3], huge, values[3]]:
            await producer.send_and_wait(
                stack.topics.requests, value, key=tenant.encode(), headers=headers(value)
            )
    finally:
        await producer.stop()

    async def dead() -> dict[str, str]:
        rows = await db.fetch(
            "SELECT error_code, raw FROM rejections WHERE tenant_id = $1 OR "
            "(source_topic = $2 AND raw = $3)",
            tenant,
            stack.topics.requests,
            huge[:65_536],
        )
        return {r["error_code"]: bytes(r["raw"]) for r in rows}

    want = {
        "limits.recipients",
        "render.header_injection",
        "render.bare_line_ending",
        "limits.record_size",
    }
    found = await eventually(dead, lambda d: set(d) >= want)
    assert set(found) >= want
    assert len(found["limits.record_size"]) == 65_536  # a prefix: the whole would not fit

    async def state() -> str | None:
        value = await db.fetchval(
            "SELECT state FROM messages WHERE message_id = $1", fine["request_id"]
        )
        return None if value is None else str(value)

    # the gate went on: the request behind them is delivered, none of theirs is queued
    assert await eventually(state, lambda s: s == "delivered") == "delivered"
    queued = await db.fetchval(
        "SELECT count(*) FROM messages WHERE message_id = ANY($1::text[])",
        [many["request_id"], injected["request_id"], bare_cr["request_id"]],
    )
    assert queued == 0


async def test_door_errors_are_400s_with_every_problem(stack: Settings, api: ApiClient) -> None:
    _tenant, key = await new_tenant(stack, "door")
    body = mail(
        to="not-an-address",
        subject="Hi\r\nBcc: x@evil.example",
        headers={"Return-Path": "<x@evil.example>", "X-Ok": "fine"},
        content=[{"type": "text/plain", "value": "nul\x00"}],
    )
    body["from"] = {"email": "jörg@acme.example"}
    answer = await _post(api, key, body)
    assert answer.status == 400
    fields = {e["field"] for e in answer.body["errors"]}
    assert fields == {
        "from.email",
        "subject",
        "content.0.value",
        "headers.Return-Path",
        "personalizations.0.to.0.email",
    }


async def test_lf_bodies_go_out_as_crlf_signed_with_the_unsubscribe_pair(
    stack: Settings, api: ApiClient, world: World, db: asyncpg.Connection
) -> None:
    tenant, key = await new_tenant(stack, "lf")
    await install_dkim_key(stack, world, tenant)  # the tenant's own key of the From domain
    to = "alice@normal.example"  # a mailbox the MX has
    marker = f"lf-{uuid.uuid4().hex}".encode()
    headers = {
        "List-Unsubscribe": "<https://acme.example/u/1>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    body = mail(to=to, text=f"{marker.decode()}\nline two\n.\nlast\n", headers=headers)
    sent = await _post(api, key, body)
    assert sent.status == 202, sent.body

    async def received() -> list[bytes]:
        return [m for m in world.mx["normal"].messages_to(to) if marker in m]

    [message] = await eventually(received, lambda m: len(m) == 1)
    assert b"\n" not in message.replace(b"\r\n", b"")
    assert marker + b"\r\nline two\r\n.\r\nlast\r\n" in message
    lookup = _dns_txt(world)
    assert dkim.verify(message, dnsfunc=lookup)
    signature = message.partition(b"\r\nFrom:")[0].replace(b"\r\n", b"").replace(b" ", b"")
    assert b"list-unsubscribe-post" in signature
    # a From put above ours (what a reader would show) breaks the signature
    assert not dkim.verify(b"From: Support <help@evil.example>\r\n" + message, dnsfunc=lookup)


async def test_a_sandbox_send_is_answered_200_recorded_and_never_delivered(
    stack: Settings, api: ApiClient, world: World, db: asyncpg.Connection
) -> None:
    _tenant, key = await new_tenant(stack, "sandbox")
    to = f"sandbox-{uuid.uuid4().hex[:6]}@normal.example"
    body = mail(to=to, mail_settings={"sandbox_mode": {"enable": True}})
    bad = await _post(api, key, {**body, "from": {"email": "nope"}})
    assert bad.status == 400  # validated like any send
    answer = await _post(api, key, body)
    assert answer.status == 200
    assert answer.body is None  # an empty body, as SendGrid answers
    message_id = answer.headers["X-Message-Id"]

    async def events() -> list[tuple[str, str | None]]:
        rows = await db.fetch(
            "SELECT type, reason FROM events WHERE request_id = $1 ORDER BY type", message_id
        )
        return [(r["type"], r["reason"]) for r in rows]

    want = [("dropped", "sandbox"), ("processed", None)]
    assert await eventually(events, lambda e: e == want) == want
    status = await api.as_key(key).until(
        f"/v1/messages/{message_id}", lambda a: a.status == 200 and a.body["recipients"]
    )
    [recipient] = status.body["recipients"]
    assert (recipient["email"], recipient["state"], recipient["reason"]) == (
        to,
        "dropped",
        "sandbox",
    )

    async def recorded() -> int:
        found = await db.fetchval("SELECT count(*) FROM requests WHERE request_id = $1", message_id)
        return int(found)

    assert await eventually(recorded, lambda n: n == 1) == 1  # its sink may trail the others
    await asyncio.sleep(1.0)
    assert world.mx["normal"].messages_to(to) == []


async def test_a_body_that_fans_out_past_the_body_limit_is_refused_whole(
    stack: Settings, api: ApiClient, db: asyncpg.Connection
) -> None:
    _tenant, key = await new_tenant(stack, "fanout")
    text = "x" * 16_000  # each personalization's record carries the content again
    count = stack.api_max_body // len(text) + 2
    people = [
        {"to": [{"email": f"p{i}-{uuid.uuid4().hex[:6]}@normal.example"}]} for i in range(count)
    ]
    body = mail(text=text, personalizations=people)
    answer = await _post(api, key, body)
    assert answer.status == 413, answer.body
    [problem] = answer.body["errors"]
    assert problem["field"] == "personalizations"
    assert f"at most {stack.api_max_body:,} bytes" in problem["message"]
    first = people[0]["to"][0]["email"]
    await asyncio.sleep(1.0)
    assert await db.fetchval("SELECT count(*) FROM messages WHERE recipient = $1", first) == 0
    # the same body in calls of fewer personalizations goes
    half = await _post(api, key, {**body, "personalizations": people[:3]})
    assert half.status == 202, half.body


async def test_the_gate_asks_the_cluster_again_before_refusing_a_record_over_its_limit(
    stack: Settings,
) -> None:
    async with scratch_topic(stack, 100_000) as topic:
        client = client_options(stack.kafka)
        stage = gate()

        async def limit_now() -> RecordLimit:
            return await read_record_limit(client, [topic])

        # as the worker read it at start (a topic just made answers a moment later)
        stage.limit = await eventually(limit_now, lambda lim: lim.max_message_bytes == 100_000)
        stage.limits = LimitReader(client, [topic])
        value = request(1, substitutions={"pad": "x" * 150_000})
        refused = await stage.process(batch([value]), NOW)
        assert refused.outcomes["undecodable"] == 1
        [dead] = [o for o in refused.outputs if o.topic == stage.outputs.topics.rejections]
        assert b"limits.record_size" in (dead.value or b"")
        # the operator raises the limit under the running worker; the ingress follows at once
        await _set_topic(stack, topic, 1_000_000)
        await asyncio.sleep(REREAD_EVERY)
        admitted = await stage.process(batch([value], start=1), NOW)
        assert admitted.outcomes["admitted"] == 1, admitted.outcomes
        assert stage.limit.max_message_bytes == 1_000_000
