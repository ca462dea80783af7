"""End to end: a mixed batch through real Kafka, the gate, the verify stage, DNS and SMTP peers
on loopback, and the sinks. Every published request is accounted for exactly once."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from streams.contract.codec import Codec
from streams.contract.signing import sign
from streams.db.tenants import create_api_key, create_tenant
from streams.kafka.config import client_options
from streams.settings import Settings
from tests.integration.helpers import eventually

pytestmark = pytest.mark.integration


def req(tenant: str, addresses: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "request_id": str(uuid.uuid4()),
        "tenant": tenant,
        "operation": "verify",
        "recipients": [{"email": a} for a in addresses],
        "created_at": datetime.now(UTC),
        **extra,
    }


async def test_mixed_batch_books_balance(stack: Settings, codec: Codec) -> None:
    run = uuid.uuid4().hex[:6]
    acme, capped, slow = f"acme-{run}", f"capped-{run}", f"slow-{run}"
    conn = await asyncpg.connect(stack.dsn)
    try:
        await create_tenant(conn, acme, smtp_probe=True)
        await create_tenant(conn, capped, policy="reject", per_hour=5)
        await create_tenant(conn, slow, per_second=3)
        keys = {t: await create_api_key(conn, t, secret=stack.secret) for t in (acme, capped, slow)}
    finally:
        await conn.close()

    expected = {
        "alice@normal.example": "safe",
        "nobody@normal.example": "invalid",
        "anyone@catchall.example": "risky",
        "zoe@grey.example": "unknown",
        "x@nullmx.example": "invalid",
        "alice@bücher.example": "safe",
        "full@full.example": "risky",
        "x@doesnotexist.example": "invalid",
        "not-an-address": "invalid",
    }
    requests = [req(acme, [a]) for a in expected]
    validate = req(
        acme,
        ["ünïcode@bücher.example", "joe@gmial.com", "info@normal.example"],
        operation="validate",
    )
    requests.append(validate)
    first = req(acme, ["bob@normal.example"], idempotency_key=f"dup-{run}")
    second = req(acme, ["bob@normal.example"], idempotency_key=f"dup-{run}")
    bad_key = req(acme, ["alice@normal.example"])
    capped_reqs = [req(capped, ["alice@normal.example"]) for _ in range(8)]
    slow_reqs = [req(slow, [f"u{i}@normal.example"]) for i in range(6)]
    avro = [*requests, first, second, bad_key, *capped_reqs, *slow_reqs]
    garbage = f"garbage-{run}".encode()
    # every request signed with its tenant's key, but one: acme's key id, signed with a guess
    signing = {r["request_id"]: keys[r["tenant"]] for r in avro}
    signing[bad_key["request_id"]] = (keys[acme][0], "pw_wrong")

    producer = AIOKafkaProducer(**client_options(stack.kafka), acks="all")
    await producer.start()
    try:
        for r in avro:
            value, (key_id, key) = codec.encode("EmailRequest", r), signing[r["request_id"]]
            await producer.send(
                stack.topics.requests,
                value,
                key=r["tenant"].encode(),
                headers=sign(value, tenant=r["tenant"], key_id=key_id, api_key=key),
            )
        await producer.send(stack.topics.requests, garbage, key=acme.encode())
        await producer.flush()
    finally:
        await producer.stop()

    ids = [r["request_id"] for r in avro]
    tenants = [acme, capped, slow]
    conn = await asyncpg.connect(stack.dsn)
    try:

        async def books() -> dict[str, Any]:
            admitted = {
                r["request_id"]
                for r in await conn.fetch(
                    "SELECT request_id FROM requests WHERE request_id = ANY($1::text[])", ids
                )
            }
            events = await conn.fetch(
                "SELECT type, reason, request_id, detail FROM events WHERE tenant_id = ANY($1::text[])",
                tenants,
            )
            rejected = await conn.fetch(
                "SELECT error_code, raw, tenant_id FROM rejections WHERE tenant_id = ANY($1::text[])"
                " OR raw = $2",
                tenants,
                garbage,
            )
            results = await conn.fetch(
                "SELECT request_id, address, is_reachable, reasons, cached, result FROM verifications"
                " WHERE request_id = ANY($1::text[])",
                ids,
            )
            return {
                "admitted": admitted,
                "events": events,
                "rejected": rejected,
                "results": results,
            }

        def balanced(b: dict[str, Any]) -> bool:
            dropped = [e for e in b["events"] if e["type"] in ("dropped", "throttled")]
            expected_results = sum(
                len({x["email"] for x in r["recipients"]})
                for r in avro
                if r["request_id"] in b["admitted"]
            )
            return (
                len(b["admitted"]) + len(dropped) + len(b["rejected"]) == len(avro) + 1
                and len(b["results"]) == expected_results
            )

        b = await eventually(books, balanced, timeout=120)
    finally:
        await conn.close()

    by_type = Counter(e["type"] for e in b["events"])
    dropped = [e for e in b["events"] if e["type"] == "dropped"]
    throttled = [e for e in b["events"] if e["type"] == "throttled"]
    # every request is in exactly one bucket
    buckets = [
        *b["admitted"],
        *(e["request_id"] for e in dropped),
        *(e["request_id"] for e in throttled),
    ]
    assert len(buckets) == len(set(buckets))
    assert len(b["admitted"]) == len(requests) + 1 + 5 + 6, [r["error_code"] for r in b["rejected"]]
    assert [e["request_id"] for e in dropped] == [second["request_id"]]
    assert dropped[0]["reason"] == "duplicate"
    assert len(throttled) == 3
    assert all(e["reason"] == "rate_limit:hour" for e in throttled)
    assert sorted(r["error_code"] for r in b["rejected"]) == [
        "auth.bad_signature",
        "codec.not_avro",
    ]
    # a verify request's admission is its requests row (from its VerifyTasks) and its outcome
    # the results: no processed event, one record fewer each way
    assert by_type.get("processed", 0) == 0
    assert {r["request_id"] for r in b["results"]} == b["admitted"]
    # the slow tenant's extra requests waited for the next second and then went through
    assert by_type["deferred"] >= 3
    assert {r["request_id"] for r in slow_reqs} <= b["admitted"]

    verdicts = {(r["request_id"], r["address"]): r for r in b["results"]}
    for r in requests[: len(expected)]:
        address = r["recipients"][0]["email"]
        assert verdicts[(r["request_id"], address)]["is_reachable"] == expected[address], address
    v = {r["address"]: r for r in b["results"] if r["request_id"] == validate["request_id"]}
    assert v["ünïcode@bücher.example"]["is_reachable"] == "safe"
    assert "possible_typo" in v["joe@gmial.com"]["reasons"]
    assert "role_account" in v["info@normal.example"]["reasons"]
    assert all(json.loads(r["result"])["smtp"] is None for r in v.values())  # validate: no probe
    # the capped tenant asked five times about the same address: later answers came from cache
    capped_ids = {r["request_id"] for r in capped_reqs}
    assert sum(1 for r in b["results"] if r["request_id"] in capped_ids and r["cached"]) >= 4
