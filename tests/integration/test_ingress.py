"""The HTTP ingress over loopback, against the session's running stack: SendGrid's mail/send
through to PostgreSQL, auth, limits, idempotent retries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from streams.settings import Settings
from streams.tenants import create_api_key
from tests.conftest import SENDER_DOMAIN
from tests.integration.helpers import eventually, new_tenant
from tests.peers.world import World

pytestmark = pytest.mark.integration


def mail(to: str = "bob@normal.example", **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": to}], "custom_args": {"rid": "r1"}}],
        "from": {"email": f"news@{SENDER_DOMAIN}", "name": "Acme"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "Hi there"}],
        "categories": ["welcome"],
    }
    body.update(kw)
    return body


@pytest.fixture
async def http(stack: Settings) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    base = f"http://{stack.api_host}:{stack.api_port}"
    async with aiohttp.ClientSession() as session:

        async def healthy() -> bool:
            try:
                async with session.get(f"{base}/healthz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        assert await eventually(healthy, bool, timeout=60)
        yield session, base


@pytest.fixture
async def db(stack: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.dsn)
    yield conn
    await conn.close()


async def _post(
    http: tuple[aiohttp.ClientSession, str], key: str | None, body: Any, **headers: str
) -> tuple[int, dict[str, str], Any]:
    session, base = http
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    data = body if isinstance(body, bytes) else None
    json = None if isinstance(body, bytes) else body
    async with session.post(f"{base}/v3/mail/send", json=json, data=data, headers=headers) as r:
        payload = await r.json() if r.content_type == "application/json" else None
        return r.status, dict(r.headers), payload


async def _states(db: asyncpg.Connection, message_id: str) -> dict[str, str]:
    rows = await db.fetch("SELECT recipient, state FROM messages WHERE message_id = $1", message_id)
    return {r["recipient"]: r["state"] for r in rows}


async def test_a_send_is_delivered_and_lands_in_postgres(
    stack: Settings, http: tuple[aiohttp.ClientSession, str], db: asyncpg.Connection
) -> None:
    _tenant, key = await new_tenant(stack, "http")
    status, headers, _ = await _post(http, key, mail())
    assert status == 202
    message_id = headers["X-Message-Id"]

    async def states() -> dict[str, str]:
        return await _states(db, message_id)

    want = {"bob@normal.example": "delivered"}
    assert await eventually(states, lambda s: s == want) == want


async def test_auth_failures(stack: Settings, http: tuple[aiohttp.ClientSession, str]) -> None:
    tenant, _key = await new_tenant(stack, "auth")
    conn = await asyncpg.connect(stack.dsn)
    try:
        _, verify_only = await create_api_key(conn, tenant, scopes=("verify",))
    finally:
        await conn.close()
    for key in (None, "pw_not-a-key"):
        status, _, payload = await _post(http, key, mail())
        assert status == 401
        assert payload["errors"][0]["message"].startswith("The provided authorization grant")
    status, _, payload = await _post(http, verify_only, mail())
    assert status == 403
    assert "send" in payload["errors"][0]["message"]


async def test_bad_bodies_get_sendgrid_errors(
    stack: Settings, http: tuple[aiohttp.ClientSession, str]
) -> None:
    _tenant, key = await new_tenant(stack, "bad")
    status, _, payload = await _post(http, key, mail(personalizations=[{"cc": []}], content=[]))
    assert status == 400
    fields = {e["field"] for e in payload["errors"]}
    assert {"personalizations.0.to", "content"} <= fields
    status, _, payload = await _post(http, key, b"{not json")
    assert status == 400
    assert "not valid JSON" in payload["errors"][0]["message"]
    huge = mail(content=[{"type": "text/plain", "value": "x" * (stack.api_max_body + 1)}])
    status, _, payload = await _post(http, key, huge)
    assert status == 413


async def test_over_the_ingress_rate_is_429_with_retry_after(
    stack: Settings, http: tuple[aiohttp.ClientSession, str]
) -> None:
    _tenant, key = await new_tenant(stack, "rate")
    began = time.monotonic()
    statuses = []
    retry_after = None
    for _ in range(stack.api_burst + 5):
        status, headers, _ = await _post(http, key, b"{}")
        statuses.append(status)
        if status == 429:
            retry_after = headers.get("Retry-After")
    elapsed = time.monotonic() - began
    allowed = stack.api_burst + int(elapsed * stack.api_rate) + 1
    assert 429 in statuses
    assert statuses.count(400) <= allowed
    assert retry_after is not None
    assert int(retry_after) >= 1


async def test_a_retried_request_with_an_idempotency_key_is_sent_once(
    stack: Settings,
    http: tuple[aiohttp.ClientSession, str],
    db: asyncpg.Connection,
    world: World,
) -> None:
    _tenant, key = await new_tenant(stack, "idem")
    before = len(world.mx["normal"].messages_to("joe@normal.example"))
    retry = {"Idempotency-Key": "order-42"}
    first = await _post(http, key, mail(to="joe@normal.example"), **retry)
    again = await _post(http, key, mail(to="joe@normal.example"), **retry)
    assert first[0] == again[0] == 202
    message_id = first[1]["X-Message-Id"]
    assert again[1]["X-Message-Id"] == message_id

    async def states() -> dict[str, str]:
        return await _states(db, message_id)

    want = {"joe@normal.example": "delivered"}
    assert await eventually(states, lambda s: s == want) == want
    # the copy is the same request replayed: the gate and the ledger see it through once
    await asyncio.sleep(2)
    assert len(world.mx["normal"].messages_to("joe@normal.example")) == before + 1
    delivered = await db.fetchval(
        "SELECT count(*) FROM events WHERE request_id = $1 AND type = 'delivered'", message_id
    )
    assert delivered == 1


async def test_openapi_spec_is_served(http: tuple[aiohttp.ClientSession, str]) -> None:
    session, base = http
    async with session.get(f"{base}/openapi.json") as r:
        spec = await r.json()
    assert spec["openapi"].startswith("3.")
    assert "/v3/mail/send" in spec["paths"]
