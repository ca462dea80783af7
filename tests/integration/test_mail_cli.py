"""`postwire template | suppression | queue ...` against the running pipeline."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner

from streams.cli.main import app
from streams.contract.codec import Codec
from streams.db.asm import create_group
from streams.settings import Settings
from tests.integration.helpers import eventually
from tests.integration.test_deliver_pipeline import _send, _states, _tenant, send_request
from tests.peers.world import World

pytestmark = pytest.mark.integration


def _invoke(settings: Settings, *args: str) -> tuple[int, str]:
    env = {
        "POSTWIRE_DATABASE_URL": settings.dsn,
        "POSTWIRE_KAFKA_BOOTSTRAP": settings.bootstrap,
        "POSTWIRE_TOPIC_PREFIX": settings.topic_prefix,
    }
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


async def _cli(settings: Settings, *args: str) -> tuple[int, str]:
    return await asyncio.to_thread(_invoke, settings, *args)


async def test_stored_template_renders_per_recipient(
    stack: Settings, codec: Codec, world: World, tmp_path: Path
) -> None:
    tenant, key = await _tenant(stack)
    html = tmp_path / "welcome.html"
    html.write_text("<p>Welcome {{ name }} to {{ product }}</p>")
    code, output = await _cli(
        stack,
        "template",
        "put",
        tenant,
        "welcome",
        "--subject",
        "Welcome {{ name }}",
        "--html",
        str(html),
    )
    assert code == 0, output
    code, output = await _cli(stack, "template", "put", tenant, "broken", "--subject", "{{ x")
    assert code == 1
    assert "template refused" in output
    await asyncio.sleep(stack.directory_refresh * 3)  # workers reload their directory
    request = send_request(tenant, ["info@normal.example"], substitutions={"product": "Postwire"})
    request["content"] = {"template_id": "welcome"}
    await _send(stack, codec, key, request)
    conn = await asyncpg.connect(stack.dsn)
    try:

        def states() -> Awaitable[dict[str, str]]:
            return _states(conn, request["request_id"])

        want = {"info@normal.example": "delivered"}
        assert await eventually(states, lambda s: s == want) == want
    finally:
        await conn.close()
    message = world.mx["normal"].messages_to("info@normal.example")[-1]
    assert b"Subject: Welcome info" in message
    assert b"Welcome info to Postwire" in message


async def test_suppression_add_list_remove(stack: Settings) -> None:
    tenant, _ = await _tenant(stack)
    code, output = await _cli(stack, "suppression", "add", "--tenant", tenant, "Gone@X.example")
    assert code == 0, output

    async def listed() -> list[str]:
        _, out = await _cli(stack, "suppression", "list", "--tenant", tenant, "--json")
        return [r["address"] for r in json.loads(out)]

    assert await eventually(listed, lambda a: a == ["gone@x.example"]) == ["gone@x.example"]
    code, output = await _cli(stack, "suppression", "remove", "--tenant", tenant, "gone@x.example")
    assert code == 0, output
    assert await eventually(listed, lambda a: a == []) == []


async def test_queue_commands_need_a_selector_and_list_json(stack: Settings) -> None:
    code, output = await _cli(stack, "queue", "flush")
    assert code == 2
    assert "selector needs" in output
    code, output = await _cli(stack, "queue", "flush", "--domain", "nowhere.example")
    assert code == 0, output
    assert "flush domain=nowhere.example" in output
    code, output = await _cli(stack, "queue", "list", "--json")
    assert code == 0, output
    assert isinstance(json.loads(output), list)


async def test_trace_prints_every_hop_of_a_message(stack: Settings, codec: Codec) -> None:
    tenant, key = await _tenant(stack)
    request = send_request(tenant, ["info@normal.example"])
    await _send(stack, codec, key, request)
    message_id = request["request_id"]  # a direct producer's request is its own message

    async def traced() -> str:
        code, output = await _cli(stack, "trace", message_id, "--tenant", tenant)
        return output if code == 0 else ""

    output = await eventually(traced, lambda o: "delivered" in o and "250" in o)
    for hop in ("request", "processed", "delivered", "PostgreSQL", "info@normal"):
        assert hop in output, output
    code, output = await _cli(stack, "trace", message_id, "--tenant", "someone-else")
    assert code == 1
    assert "no message" in output


async def test_suppression_commands_take_a_group_of_the_tenant_only(stack: Settings) -> None:
    tenant, _ = await _tenant(stack)
    other, _ = await _tenant(stack)
    conn = await asyncpg.connect(stack.dsn)
    try:
        made = await create_group(conn, tenant, "Digest", "", False)
        theirs = await create_group(conn, other, "Digest", "", False)
    finally:
        await conn.close()
    assert made is not None
    assert theirs is not None
    group = str(made.group_id)
    code, output = await _cli(
        stack, "suppression", "add", "--tenant", tenant, "--group", group, "Left@X.example"
    )
    assert code == 0, output
    assert f"in group {group}" in output
    code, output = await _cli(
        stack, "suppression", "add", "--tenant", tenant, "--group", str(theirs.group_id), "a@x.org"
    )
    assert code == 1
    assert "no suppression group" in output

    async def listed(*group_args: str) -> list[str]:
        _, out = await _cli(stack, "suppression", "list", "--tenant", tenant, "--json", *group_args)
        return [r["address"] for r in json.loads(out)]

    assert await eventually(lambda: listed("--group", group), lambda a: a == ["left@x.example"])
    assert await listed() == []  # the global list does not hold a group's member
    code, output = await _cli(
        stack, "suppression", "remove", "--tenant", tenant, "--group", group, "left@x.example"
    )
    assert code == 0, output
    assert await eventually(lambda: listed("--group", group), lambda a: a == []) == []
