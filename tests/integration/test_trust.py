"""Trust at both doors against the running pipeline: forged, unsigned and foreign records are
dead-lettered with their code while the rest is served; a tenant cannot record events about
another tenant's mail (the issue's scenario); and no API key rests on any topic, table or log."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.contract.codec import Codec
from streams.contract.ids import MessageIds
from streams.contract.signing import KEY_ID, sign
from streams.db.tenants import api_key_digest
from streams.kafka.config import client_options
from streams.settings import Settings
from streams.stack.stack import Stack
from tests.conftest import SENDER_DOMAIN
from tests.integration.api_client import Answer, ApiClient
from tests.integration.helpers import Headers, eventually, key_id_of, new_tenant, signer

pytestmark = pytest.mark.integration

KEY_SHAPED = re.compile(rb"pw_[A-Za-z0-9_-]{20,}")


def _request(tenant: str, operation: str = "validate", **extra: Any) -> dict[str, Any]:
    return {
        "request_id": str(uuid.uuid4()),
        "tenant": tenant,
        "operation": operation,
        "recipients": [{"email": "alice@normal.example"}],
        "created_at": datetime.now(UTC),
        **extra,
    }


def _track(tenant: str, message_id: str, at: datetime) -> dict[str, Any]:
    return _request(
        tenant,
        "track",
        recipients=[],
        track={
            "event_type": "complained",
            "message_id": message_id,
            "recipient": "reader@inbox.example",
            "occurred_at": at,
        },
    )


async def _produce(settings: Settings, records: list[tuple[str, bytes, Headers | None]]) -> None:
    """(record key = tenant, value, headers) onto ``requests``, as direct producers do."""
    producer = AIOKafkaProducer(**client_options(settings.kafka), acks="all")
    await producer.start()
    try:
        for tenant, value, headers in records:
            await producer.send(
                settings.topics.requests, value, key=tenant.encode(), headers=headers
            )
        await producer.flush()
    finally:
        await producer.stop()


async def _dead_letters(db: asyncpg.Connection, codec: Codec, ids: set[str]) -> dict[str, str]:
    """request id -> error code of the gate's dead letters among ``ids``."""
    rows = await db.fetch(
        "SELECT error_code, raw FROM rejections WHERE stage = 'gate' AND source_topic LIKE '%.requests'"
    )
    found = {}
    for r in rows:
        try:
            request_id = codec.decode_as(bytes(r["raw"]), "EmailRequest")["request_id"]
        except Exception:  # other tests' garbage
            continue
        if request_id in ids:
            found[request_id] = r["error_code"]
    return found


async def test_forged_unsigned_and_foreign_records_are_dead_lettered_and_the_rest_served(
    stack: Settings, codec: Codec, db: asyncpg.Connection, api: ApiClient
) -> None:
    a, a_key = await new_tenant(stack, "ta")
    b, b_key = await new_tenant(stack, "tb")
    a_id, b_id = await key_id_of(stack, a_key), await key_id_of(stack, b_key)
    # a key made before keys were sealed: no key_sealed copy
    legacy_id, legacy = f"k_{secrets.token_hex(6)}", f"pw_{secrets.token_urlsafe(32)}"
    await db.execute(
        "INSERT INTO api_keys (key_id, tenant_id, key_sha256) VALUES ($1, $2, $3)",
        legacy_id,
        a,
        api_key_digest(legacy),
    )
    ids = MessageIds(stack.secret)
    a_message = ids.message_id(a, "order-1")

    def signed(r: dict[str, Any], key_id: str, key: str) -> tuple[str, bytes, Headers]:
        value = codec.encode("EmailRequest", r)
        return r["tenant"], value, sign(value, tenant=r["tenant"], key_id=key_id, api_key=key)

    good_a, good_b = _request(a), _request(b)
    cases: dict[str, tuple[str, bytes, Headers | None]] = {
        "auth.unsigned": (a, codec.encode("EmailRequest", _request(a)), None),
        "auth.bad_signature": signed(_request(a), a_id, b_key),  # A's key id, B's key
        "auth.wrong_tenant": signed(_request(a), b_id, b_key),  # B's own key, for A
        "auth.unknown_key": signed(_request(a), "k_000000000000", a_key),
        "auth.key_not_sealed": signed(_request(a), legacy_id, legacy),
        "track.foreign_message": signed(_track(b, a_message, datetime.now(UTC)), b_id, b_key),
        "track.future_timestamp": signed(
            _track(a, a_message, datetime.now(UTC) + timedelta(days=365)), a_id, a_key
        ),
    }
    expected = {
        codec.decode_as(v, "EmailRequest")["request_id"]: c for c, (_, v, _) in cases.items()
    }
    await _produce(
        stack, [signed(good_a, a_id, a_key), *cases.values(), signed(good_b, b_id, b_key)]
    )

    found = await eventually(
        lambda: _dead_letters(db, codec, set(expected)), lambda f: len(f) == len(expected)
    )
    assert found == expected

    async def served() -> int:
        return int(
            await db.fetchval(
                "SELECT count(*) FROM verifications WHERE request_id = ANY($1::text[])",
                [good_a["request_id"], good_b["request_id"]],
            )
        )

    assert await eventually(served, lambda n: n == 2) == 2
    # the unsealed key cannot sign, but works through the API, which signs for it
    answer = await api.as_key(legacy).call(
        "POST", "/v1/verify", {"email": "alice@normal.example", "timeout": 20}
    )
    assert answer.status == 200, answer.body
    assert answer.body["status"] == "done"


def _mail(recipient: str) -> dict[str, Any]:
    return {
        "personalizations": [{"to": [{"email": recipient}]}],
        "from": {"email": f"news@{SENDER_DOMAIN}"},
        "subject": "Your order",
        "content": [{"type": "text/plain", "value": "Shipped."}],
    }


def _state(recipient: str, answer: Answer) -> str | None:
    for r in (answer.body or {}).get("recipients", []):
        if r["email"] == recipient:
            return str(r["state"])
    return None


async def test_a_tenant_cannot_record_events_about_another_tenants_mail(
    stack: Settings, api: ApiClient
) -> None:
    _a, a_key = await new_tenant(stack, "victim")
    _b, b_key = await new_tenant(stack, "forger")
    a, b = api.as_key(a_key), api.as_key(b_key)
    reader = f"reader-{uuid.uuid4().hex[:6]}@inbox.example"
    sent = await a.call("POST", "/v3/mail/send", _mail(reader), **{"Idempotency-Key": "order-42"})
    assert sent.status == 202, sent.body
    a_message = sent.headers["X-Message-Id"]
    delivered = await a.until(
        f"/v1/messages/{a_message}", lambda r: _state(reader, r) == "delivered"
    )
    assert _state(reader, delivered) == "delivered"

    # B cannot compute A's id from the Idempotency-Key: its own gets another
    mine = await b.call("POST", "/v3/mail/send", _mail(reader), **{"Idempotency-Key": "order-42"})
    assert mine.status == 202, mine.body
    b_message = mine.headers["X-Message-Id"]
    assert b_message != a_message

    # the scenario: a spamreport about A's message, dated a year ahead
    a_year_on = int(time.time()) + 365 * 86400
    forged = [
        {
            "event": "spamreport",
            "email": reader,
            "sg_message_id": a_message,
            "timestamp": a_year_on,
        },
        {"event": "spamreport", "email": reader, "message_id": a_message},
    ]
    refused = await b.call("POST", "/v1/events/webhook", forged)
    assert refused.status == 400, refused.body
    assert [e["field"] for e in refused.body["errors"]] == ["0.timestamp", "1.message_id"]
    assert "in the future" in refused.body["errors"][0]["message"]
    assert "not one of your messages" in refused.body["errors"][1]["message"]
    # a batch with some of B's own events: those are recorded, the foreign one is not
    mixed = [
        {"event": "spamreport", "email": reader, "message_id": b_message},
        {"event": "unsubscribe", "email": reader, "message_id": a_message},
    ]
    partly = await b.call("POST", "/v1/events/webhook", mixed)
    assert partly.status == 202, partly.body
    assert partly.body["accepted"] == 1
    assert [e["field"] for e in partly.body["errors"]] == ["1.message_id"]
    # B's own complaint landed (B's suppression list has the reader) ...
    own = await b.until(f"/v1/suppressions/{reader}", lambda r: r.status == 200)
    assert own.body["reason"] == "complaint"
    # ... while A's message is still delivered and A's list does not have the reader
    assert _state(reader, await a.call("GET", f"/v1/messages/{a_message}")) == "delivered"
    assert (await a.call("GET", f"/v1/suppressions/{reader}")).status == 404
    # A itself may not date an event ahead either, but records its own at once
    ahead = [{"event": "open", "email": reader, "message_id": a_message, "timestamp": a_year_on}]
    assert (await a.call("POST", "/v1/events/webhook", ahead)).status == 400
    now = [{"event": "spamreport", "email": reader, "message_id": a_message}]
    assert (await a.call("POST", "/v1/events/webhook", now)).status == 202
    complained = await a.until(
        f"/v1/messages/{a_message}", lambda r: _state(reader, r) == "complained"
    )
    assert _state(reader, complained) == "complained"


async def _topic_records(settings: Settings) -> list[tuple[str, bytes, bytes, list[Any]]]:
    """Every record of every topic of this stack (its prefix and its app's changelogs), from
    the start: (topic, key, value, headers)."""
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:
        names = [
            t
            for t in await admin.list_topics()
            if t.startswith((f"{settings.topic_prefix}.", f"{settings.app_id}-"))
        ]
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    parts = [TopicPartition(d["topic"], p["partition"]) for d in described for p in d["partitions"]]
    consumer = AIOKafkaConsumer(
        **client_options(settings.kafka),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await consumer.start()
    out: list[tuple[str, bytes, bytes, list[Any]]] = []
    try:
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        await consumer.seek_to_beginning(*parts)
        todo = {tp for tp, end in ends.items() if end > 0}
        deadline = time.monotonic() + 120
        while todo and time.monotonic() < deadline:
            batch = await consumer.getmany(*todo, timeout_ms=500)
            for tp, records in batch.items():
                for m in records:
                    out.append((tp.topic, m.key or b"", m.value or b"", list(m.headers or ())))
            # a partition is read when its position reaches the end taken before (a fetch of
            # only control or compacted-away offsets moves the position without a record)
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
        left = {str(tp): (await consumer.position(tp), ends[tp]) for tp in todo}
        assert not left, f"could not read these to the end (position, end): {left}"
    finally:
        await consumer.stop()
    return out


async def _table_rows(db: asyncpg.Connection) -> list[tuple[str, list[bytes]]]:
    """Every row of every table, each value as bytes (bytea as it is, the rest as text)."""
    tables = [
        r["tablename"]
        for r in await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    ]
    rows: list[tuple[str, list[bytes]]] = []
    for table in tables:
        for row in await db.fetch(f'SELECT * FROM "{table}"'):
            values = [v if isinstance(v, bytes) else str(v).encode() for v in row.values()]
            rows.append((table, values))
    return rows


def _log_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.glob("*")) if path.is_file()}


async def test_no_key_rests_on_any_topic_table_or_log(
    pipeline: Stack, codec: Codec, db: asyncpg.Connection, api: ApiClient
) -> None:
    stack = pipeline.settings
    tenant, key = await new_tenant(stack, "atrest")
    key_id = await key_id_of(stack, key)
    await db.execute("UPDATE tenants SET limit_per_second = 2 WHERE tenant_id = $1", tenant)
    await asyncio.sleep(stack.directory_refresh * 3)  # every process knows the limit
    client = api.as_key(key)
    # the HTTP door: a send, a verify, a track, and a refused caller with a key-shaped guess
    sent = await client.call(
        "POST", "/v3/mail/send", _mail("reader@inbox.example"), **{"Idempotency-Key": "at-rest"}
    )
    assert sent.status == 202, sent.body
    message_id = sent.headers["X-Message-Id"]
    verify = await client.call("POST", "/v1/verify", {"email": "bob@normal.example", "timeout": 0})
    assert verify.status == 202, verify.body
    opened = [{"event": "open", "email": "reader@inbox.example", "message_id": message_id}]
    assert (await client.call("POST", "/v1/events/webhook", opened)).status == 202
    guess = f"pw_{secrets.token_urlsafe(32)}"
    assert (await api.as_key(guess).call("GET", "/v1/events")).status == 401
    # the Kafka door: signed requests (more than the tenant's 2/s, so some are deferred) and
    # one unsigned record (a dead letter)
    headers = await signer(stack, tenant, key)
    direct = [_request(tenant, "send" if i == 0 else "validate") for i in range(6)]
    direct[0] |= {
        "from": {"email": f"news@{SENDER_DOMAIN}"},
        "recipients": [{"email": "carol@inbox.example"}],
        "content": {"subject": "direct", "text": "direct"},
    }
    values = [codec.encode("EmailRequest", r) for r in direct]
    unsigned = _request(tenant)
    await _produce(
        stack,
        [(tenant, v, headers(v)) for v in values]
        + [(tenant, codec.encode("EmailRequest", unsigned), None)],
    )

    async def settled() -> tuple[int, int, int, int]:
        ids = [r["request_id"] for r in direct]
        admitted = await db.fetchval(
            "SELECT count(*) FROM requests WHERE request_id = ANY($1::text[])", ids
        )
        deferred = await db.fetchval(
            "SELECT count(*) FROM events WHERE tenant_id = $1 AND type = 'deferred'", tenant
        )
        dead = len(await _dead_letters(db, codec, {unsigned["request_id"]}))
        tracked = await db.fetchval(
            "SELECT count(*) FROM events WHERE message_id = $1 AND type = 'opened'", message_id
        )
        return int(admitted), int(deferred), dead, int(tracked)

    outcome = await eventually(
        settled, lambda v: v[0] == len(direct) and v[1] > 0 and v[2] == 1 and v[3] == 1, 90
    )
    admitted, deferred, dead, tracked = outcome
    assert admitted == len(direct), outcome
    assert deferred > 0, outcome
    assert (dead, tracked) == (1, 1), outcome
    await asyncio.sleep(2)  # the last sink batches and changelog writes

    secrets_to_find = (key.encode(), guess.encode())
    hits: list[str] = []
    records = await _topic_records(stack)
    seen_key_id = False
    for topic, k, v, hs in records:
        for where, data in (("key", k), ("value", v), *((f"header {n}", b) for n, b in hs)):
            if any(s in data for s in secrets_to_find) or KEY_SHAPED.search(data):
                hits.append(f"topic {topic} {where}")
        seen_key_id = seen_key_id or (KEY_ID, key_id.encode()) in [tuple(h) for h in hs]
    rows = await _table_rows(db)
    for table, values in rows:
        for data in values:
            if any(s in data for s in secrets_to_find) or KEY_SHAPED.search(data):
                hits.append(f"table {table}: {data[:80]!r}")
    logs = await asyncio.to_thread(_log_files, Path(stack.data_dir, "logs"))
    for name, data in logs.items():
        if any(s in data for s in secrets_to_find) or KEY_SHAPED.search(data):
            hits.append(f"log {name}")
    assert hits == []
    # and the dump did read what it had to: the records name the key by its id, the key's
    # row (digest, sealed copy) and the logs are there
    requests = [r for r in records if r[0] == stack.topics.requests]
    assert seen_key_id, f"{len(requests)} of {len(records)} records from requests"
    assert any(t == "api_keys" and key_id.encode() in vs for t, vs in rows)
    assert set(logs) >= {"api.log", "worker.log"}
    assert len(records) > len(direct)
