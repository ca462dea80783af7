"""The HTTP ingress over loopback, against the session's running stack: SendGrid's mail/send
through to PostgreSQL, auth, limits, idempotent retries."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from streams.db.tenants import create_api_key
from streams.settings import Settings
from tests.conftest import SENDER_DOMAIN
from tests.integration.api_client import Answer, ApiClient
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


async def _post(api: ApiClient, key: str | None, body: Any, **headers: str) -> Answer:
    return await api.as_key(key).call("POST", "/v3/mail/send", body, patient=False, **headers)


async def _states(db: asyncpg.Connection, message_id: str) -> dict[str, str]:
    rows = await db.fetch("SELECT recipient, state FROM messages WHERE message_id = $1", message_id)
    return {r["recipient"]: r["state"] for r in rows}


async def test_a_send_is_delivered_and_lands_in_postgres(
    stack: Settings, api: ApiClient, db: asyncpg.Connection
) -> None:
    _tenant, key = await new_tenant(stack, "http")
    sent = await _post(api, key, mail())
    assert sent.status == 202
    message_id = sent.headers["X-Message-Id"]

    async def states() -> dict[str, str]:
        return await _states(db, message_id)

    want = {"bob@normal.example": "delivered"}
    assert await eventually(states, lambda s: s == want) == want


async def test_auth_failures(stack: Settings, api: ApiClient) -> None:
    tenant, _key = await new_tenant(stack, "auth")
    conn = await asyncpg.connect(stack.dsn)
    try:
        _, verify_only = await create_api_key(conn, tenant, scopes=("verify",), secret=stack.secret)
    finally:
        await conn.close()
    for key in (None, "pw_not-a-key"):
        answer = await _post(api, key, mail())
        assert answer.status == 401
        assert answer.body["errors"][0]["message"].startswith("The provided authorization grant")
    answer = await _post(api, verify_only, mail())
    assert answer.status == 403
    assert "send" in answer.body["errors"][0]["message"]


async def test_bad_bodies_get_sendgrid_errors(stack: Settings, api: ApiClient) -> None:
    _tenant, key = await new_tenant(stack, "bad")
    answer = await _post(api, key, mail(personalizations=[{"cc": []}], content=[]))
    assert answer.status == 400
    fields = {e["field"] for e in answer.body["errors"]}
    assert {"personalizations.0.to", "content"} <= fields
    answer = await _post(api, key, b"{not json")
    assert answer.status == 400
    assert "not valid JSON" in answer.body["errors"][0]["message"]
    huge = mail(content=[{"type": "text/plain", "value": "x" * (stack.api_max_body + 1)}])
    answer = await _post(api, key, huge)
    assert answer.status == 413


async def test_over_the_ingress_rate_is_429_with_retry_after(
    stack: Settings, api: ApiClient
) -> None:
    _tenant, key = await new_tenant(stack, "rate")
    began = time.monotonic()
    statuses = []
    retry_after = None
    for _ in range(stack.api_burst + 5):
        answer = await _post(api, key, b"{}")
        statuses.append(answer.status)
        if answer.status == 429:
            retry_after = answer.headers.get("Retry-After")
    elapsed = time.monotonic() - began
    allowed = stack.api_burst + int(elapsed * stack.api_rate) + 1
    assert 429 in statuses
    assert statuses.count(400) <= allowed
    assert retry_after is not None
    assert int(retry_after) >= 1


async def test_a_retried_request_with_an_idempotency_key_is_sent_once(
    stack: Settings,
    api: ApiClient,
    db: asyncpg.Connection,
    world: World,
) -> None:
    _tenant, key = await new_tenant(stack, "idem")
    before = len(world.mx["normal"].messages_to("joe@normal.example"))
    retry = {"Idempotency-Key": "order-42"}
    first = await _post(api, key, mail(to="joe@normal.example"), **retry)
    again = await _post(api, key, mail(to="joe@normal.example"), **retry)
    assert first.status == again.status == 202
    message_id = first.headers["X-Message-Id"]
    assert again.headers["X-Message-Id"] == message_id

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


async def test_openapi_spec_is_served(api: ApiClient) -> None:
    spec = (await api.call("GET", "/openapi.json")).body
    assert spec["openapi"].startswith("3.")
    assert "/v3/mail/send" in spec["paths"]
