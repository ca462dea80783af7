"""`postwire tenant ...` against the running pipeline: a new key works at once, a revoked key stops
working within the directory refresh."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from typer.testing import CliRunner

from streams.cli.main import app
from streams.contract.codec import Codec
from streams.contract.signing import sign
from streams.kafka.config import client_options
from streams.settings import Settings
from tests.integration.helpers import eventually

pytestmark = pytest.mark.integration


def _invoke(settings: Settings, *args: str) -> tuple[int, str]:
    # the install's data dir: keys are sealed under its server secret
    env = {"POSTWIRE_DATABASE_URL": settings.dsn, "POSTWIRE_DATA_DIR": str(settings.data_dir)}
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


async def _cli(settings: Settings, *args: str) -> tuple[int, str]:
    # the command runs its own event loop, so it gets a thread of its own
    return await asyncio.to_thread(_invoke, settings, *args)


async def _send(settings: Settings, codec: Codec, tenant: str, key_id: str, key: str) -> str:
    request_id = str(uuid.uuid4())
    record = {
        "request_id": request_id,
        "tenant": tenant,
        "operation": "validate",
        "recipients": [{"email": "alice@normal.example"}],
        "created_at": datetime.now(UTC),
    }
    producer = AIOKafkaProducer(**client_options(settings.kafka), acks="all")
    await producer.start()
    try:
        value = codec.encode("EmailRequest", record)
        await producer.send_and_wait(
            settings.topics.requests,
            value,
            key=tenant.encode(),
            headers=sign(value, tenant=tenant, key_id=key_id, api_key=key),
        )
    finally:
        await producer.stop()
    return request_id


async def _outcome(conn: asyncpg.Connection, request_id: str) -> str | None:
    if await conn.fetchval("SELECT 1 FROM requests WHERE request_id = $1", request_id):
        return "admitted"
    # a dead letter keeps the raw record, which holds the request id
    code: str | None = await conn.fetchval(
        "SELECT error_code FROM rejections WHERE position(convert_to($1, 'UTF8') in raw) > 0",
        request_id,
    )
    return code


async def test_add_use_and_revoke_a_key(stack: Settings, codec: Codec) -> None:
    tenant = f"cli-{uuid.uuid4().hex[:6]}"
    code, output = await _cli(stack, "tenant", "add", tenant, "--per-second", "50")
    assert code == 0, output
    found = re.search(r"api key (k_\w+): (pw_\S+)", output)
    assert found, output
    key_id, key = found.groups()

    conn = await asyncpg.connect(stack.dsn)
    try:
        limit = await conn.fetchval(
            "SELECT limit_per_second FROM tenants WHERE tenant_id = $1", tenant
        )
        assert limit == 50
        # used at once, before the periodic refresh could have seen it
        first = await _send(stack, codec, tenant, key_id, key)
        assert await eventually(lambda: _outcome(conn, first), lambda v: v is not None) == (
            "admitted"
        )

        code, output = await _cli(stack, "tenant", "revoke", key_id)
        assert code == 0, output
        assert f"revoked {key_id}" in output, output
        code, output = await _cli(stack, "tenant", "revoke", key_id)
        assert code == 1, output
        assert "no active key" in output, output

        async def landed(request_id: str) -> str | None:
            return await eventually(lambda: _outcome(conn, request_id), lambda v: v is not None)

        # admitted until the gate's next directory refresh, refused from then on
        outcomes = [await landed(await _send(stack, codec, tenant, key_id, key))]
        while outcomes[-1] == "admitted" and len(outcomes) < 20:
            await asyncio.sleep(stack.directory_refresh)
            outcomes.append(await landed(await _send(stack, codec, tenant, key_id, key)))
        assert outcomes[-1] == "auth.revoked_key", outcomes
    finally:
        await conn.close()


async def test_unknown_tenant_and_bad_policy_are_refused(stack: Settings) -> None:
    code, output = await _cli(stack, "tenant", "key", f"ghost-{uuid.uuid4().hex[:6]}")
    assert code == 1, output
    assert "no tenant" in output, output
    code, output = await _cli(stack, "tenant", "add", "x", "--policy", "drop")
    assert code == 2, output
    assert "defer or reject" in output, output
