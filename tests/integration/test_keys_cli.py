"""`postwire keys ...` against the running pipeline: scopes hold at the gate, the key is never shown
again, and a revoked key is refused by the gate within the directory refresh interval."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

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

# the refresh query, a faust timer on a busy 2-core box, and the gate's own queue
SLACK = timedelta(seconds=2)


def _invoke(settings: Settings, *args: str) -> tuple[int, str, str]:
    # the install's data dir: keys are sealed under its server secret
    env = {"POSTWIRE_DATABASE_URL": settings.dsn, "POSTWIRE_DATA_DIR": str(settings.data_dir)}
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


async def _cli(settings: Settings, *args: str) -> tuple[int, str, str]:
    return await asyncio.to_thread(_invoke, settings, *args)


def _request(tenant: str, operation: str) -> dict[str, object]:
    return {
        "request_id": str(uuid.uuid4()),
        "tenant": tenant,
        "operation": operation,
        "recipients": [{"email": "alice@normal.example"}],
        "from": {"email": "it@acme.example"},
        "content": {"subject": "it", "text": "it"},
        "created_at": datetime.now(UTC),
    }


async def _decision(conn: asyncpg.Connection, tenant: str, request_id: str) -> tuple | None:
    """(outcome, when the gate decided) from the dead letter, or for an admitted verify request
    (which leaves no processed event: its VerifyTasks are its record) from when its requests row
    was written, a sink linger after the gate's decision (never before it)."""
    at = await conn.fetchval("SELECT accepted_at FROM requests WHERE request_id = $1", request_id)
    if at is not None:
        return "admitted", at
    row = await conn.fetchrow(
        "SELECT error_code, rejected_at FROM rejections"
        " WHERE tenant_id = $1 AND position(convert_to($2, 'UTF8') in raw) > 0",
        tenant,
        request_id,
    )
    return None if row is None else (row["error_code"], row["rejected_at"])


async def test_scopes_listing_and_revocation_within_the_refresh(
    stack: Settings, codec: Codec
) -> None:
    tenant = f"keys-{uuid.uuid4().hex[:6]}"
    code, output, _ = await _cli(stack, "tenant", "add", tenant, "--no-key")
    assert code == 0, output
    code, output, _ = await _cli(
        stack, "keys", "create", "--tenant", tenant, "--scopes", "verify", "--json"
    )
    assert code == 0, output
    created = json.loads(output)
    key_id, key = created["key_id"], created["key"]
    assert created["scopes"] == ["verify"]

    code, output, _ = await _cli(stack, "keys", "list", "--tenant", tenant, "--json")
    assert code == 0, output
    listed = json.loads(output)
    assert [(k["key_id"], k["scopes"], k["revoked_at"]) for k in listed] == [
        (key_id, ["verify"], None)
    ]
    assert key not in output

    producer = AIOKafkaProducer(**client_options(stack.kafka), acks="all")
    await producer.start()
    conn = await asyncpg.connect(stack.dsn)
    try:

        async def send(operation: str = "validate") -> str:
            request = _request(tenant, operation)
            value = codec.encode("EmailRequest", request)
            await producer.send_and_wait(
                stack.topics.requests,
                value,
                key=tenant.encode(),
                headers=sign(value, tenant=tenant, key_id=key_id, api_key=key),
            )
            return str(request["request_id"])

        async def decided(request_id: str) -> tuple:
            found = await eventually(
                lambda: _decision(conn, tenant, request_id), lambda v: v is not None
            )
            assert found is not None, request_id
            return found

        assert (await decided(await send()))[0] == "admitted"
        # a verify-only key cannot send
        assert (await decided(await send("send")))[0] == "auth.scope"

        code, output, _ = await _cli(stack, "keys", "revoke", key_id)
        assert code == 0, output
        revoked_at = await conn.fetchval(
            "SELECT revoked_at FROM api_keys WHERE key_id = $1", key_id
        )
        bound = revoked_at + timedelta(seconds=stack.directory_refresh) + SLACK
        # keep using the key past the bound: everything the gate decides after it is refused
        sent = []
        while datetime.now(UTC) < bound + timedelta(seconds=1):
            sent.append(await send())
            await asyncio.sleep(0.1)
        decisions = [await decided(request_id) for request_id in sent]
        late = [outcome for outcome, at in decisions if at > bound]
        assert late, decisions
        assert set(late) == {"auth.revoked_key"}, decisions
        first_refused = min(at for outcome, at in decisions if outcome == "auth.revoked_key")
        assert first_refused - revoked_at <= timedelta(seconds=stack.directory_refresh) + SLACK

        code, output, _ = await _cli(stack, "keys", "list", "--tenant", tenant, "--json")
        assert json.loads(output)[0]["revoked_at"] is not None
    finally:
        await conn.close()
        await producer.stop()


async def test_keys_errors_are_one_sentence(stack: Settings) -> None:
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"
    code, _, error = await _cli(stack, "keys", "create", "--tenant", ghost)
    assert code == 1, error
    assert f"error: no tenant '{ghost}'" in error
    code, _, error = await _cli(stack, "keys", "list", "--tenant", ghost)
    assert code == 1, error
    assert "no tenant" in error
    code, _, error = await _cli(stack, "keys", "revoke", "k_000000000000")
    assert code == 1, error
    assert "error: no key 'k_000000000000'" in error
    code, _, error = await _cli(stack, "keys", "create", "--tenant", ghost, "--scopes", "send,root")
    assert code == 2, error
    assert "unknown scope 'root'" in error
