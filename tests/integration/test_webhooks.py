"""Event webhooks end to end: settings through SendGrid's own client, events produced onto
``postwire.events``, posts received by a real aiohttp server on loopback and verified with the
``sendgrid`` package's ``EventWebhook``; a failing endpoint gets the same ``sg_event_id``s
again, a hanging one does not delay another tenant's posts, and a batch given up on is listed
and replayed by the CLI."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import sendgrid
from aiohttp import web
from aiokafka import AIOKafkaProducer
from python_http_client.exceptions import HTTPError
from sendgrid.helpers.eventwebhook import EventWebhook
from typer.testing import CliRunner

from streams.cli.main import app as cli_app
from streams.contract.build import make_event
from streams.contract.codec import Codec
from streams.kafka.config import client_options
from streams.settings import Settings
from tests.conftest import free_port
from tests.integration.api_client import ApiClient
from tests.integration.helpers import eventually, new_tenant

pytestmark = pytest.mark.integration

SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"


@dataclass
class Post:
    at: float
    headers: dict[str, str]
    body: bytes

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(orjson.loads(self.body))

    @property
    def ids(self) -> list[str]:
        return [e["sg_event_id"] for e in self.events]


@dataclass
class Hook:
    """One endpoint of the receiver: answers ``statuses`` in turn (then 200), or hangs."""

    statuses: list[int] = field(default_factory=list)
    hang: bool = False
    posts: list[Post] = field(default_factory=list)


class Receiver:
    def __init__(self) -> None:
        self.hooks: dict[str, Hook] = {}
        self.port = free_port()
        self.release = asyncio.Event()

    def url(self, name: str, hook: Hook | None = None) -> str:
        self.hooks[name] = hook or Hook()
        return f"http://127.0.0.1:{self.port}/hook/{name}"

    async def handle(self, request: web.Request) -> web.Response:
        hook = self.hooks[request.match_info["name"]]
        hook.posts.append(Post(time.monotonic(), dict(request.headers), await request.read()))
        if hook.hang:
            await self.release.wait()
        status = hook.statuses.pop(0) if hook.statuses else 200
        return web.Response(status=status)


@pytest.fixture
async def receiver(api: ApiClient) -> AsyncIterator[Receiver]:
    """The receiving server; the stack's API is answering by then (``api`` waits for it)."""
    found = Receiver()
    server = web.Application()
    server.router.add_post("/hook/{name}", found.handle)
    runner = web.AppRunner(server)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", found.port).start()
    try:
        yield found
    finally:
        found.release.set()
        await runner.cleanup()


def _client(stack: Settings, key: str) -> Any:
    return sendgrid.SendGridAPIClient(api_key=key, host=stack.api_base)


async def _configure(stack: Settings, key: str, url: str, *, signed: bool = True) -> str:
    """Through SendGrid's own client: enable the webhook for every event, sign it; the public
    key it shows."""

    def work() -> str:
        hooks = _client(stack, key).client.user.webhooks.event
        body = {
            "enabled": True,
            "url": url,
            "processed": True,
            "delivered": True,
            "bounce": True,
            "deferred": True,
            "dropped": True,
            "open": True,
            "click": True,
            "spam_report": True,
            "unsubscribe": True,
        }
        answer = hooks.settings.patch(request_body=body)
        assert answer.status_code == 200, answer.body
        signing = hooks.settings.signed.patch(request_body={"enabled": signed})
        return str(orjson.loads(signing.body)["public_key"])

    public_key = await asyncio.to_thread(work)
    # the webhook stage reloads the endpoints every webhook_refresh seconds
    await asyncio.sleep(stack.webhook_refresh * 4)
    return public_key


async def _produce(stack: Settings, codec: Codec, tenant: str, kinds: list[str]) -> list[str]:
    """DeliveryEvents of ``tenant`` onto postwire.events; their event ids."""
    options = client_options(stack.kafka)
    producer = AIOKafkaProducer(**options, acks="all")
    await producer.start()
    ids = []
    try:
        for i, kind in enumerate(kinds):
            message = f"{tenant}-m{i}-{uuid.uuid4().hex[:6]}"
            event = make_event(
                kind,  # type: ignore[arg-type]
                tenant,
                datetime.now(UTC),
                request_id=message,
                message_id=message,
                recipient=f"user{i}@example.com",
                custom_args={"order": str(i)},
            )
            ids.append(event["event_id"])
            await producer.send(
                stack.topics.events, codec.encode("DeliveryEvent", event), key=message.encode()
            )
        await producer.flush()
    finally:
        await producer.stop()
    return ids


def _verified(post: Post, public_key: str) -> bool:
    return bool(
        EventWebhook(public_key).verify_signature(
            post.body.decode(), post.headers[SIGNATURE], post.headers[TIMESTAMP]
        )
    )


async def test_settings_through_sendgrids_client(stack: Settings, receiver: Receiver) -> None:
    _tenant, key = await new_tenant(stack, "hook-settings")
    other, other_key = await new_tenant(stack, "hook-other")
    url = receiver.url("settings")

    def work() -> tuple[Any, Any, Any, Any]:
        hooks = _client(stack, key).client.user.webhooks.event
        before = orjson.loads(hooks.settings.get().body)
        patched = hooks.settings.patch(
            request_body={"enabled": True, "url": url, "delivered": True, "bounce": True}
        )
        signed = orjson.loads(hooks.settings.signed.patch(request_body={"enabled": True}).body)
        shown = orjson.loads(hooks.settings.signed.get().body)
        tested = hooks.test.post(request_body={"url": url})
        return before, orjson.loads(patched.body), (signed, shown), tested.status_code

    before, patched, (signed, shown), tested = await asyncio.to_thread(work)
    assert before["enabled"] is False
    assert before["url"] == ""
    assert patched["enabled"] is True
    assert patched["url"] == url
    assert patched["delivered"] is True
    assert patched["bounce"] is True
    assert patched["processed"] is False
    assert patched["spam_report"] is False
    assert signed["public_key"]
    assert signed["public_key"] == shown["public_key"]
    assert tested == 204
    # the test post was signed with the key shown
    [post] = receiver.hooks["settings"].posts
    assert _verified(post, signed["public_key"])
    assert post.events[0]["event"] == "processed"

    def other_tenant() -> Any:
        return orjson.loads(
            _client(stack, other_key).client.user.webhooks.event.settings.get().body
        )

    assert (await asyncio.to_thread(other_tenant))["url"] == ""

    def bad() -> int:
        hooks = _client(stack, key).client.user.webhooks.event
        try:
            hooks.settings.patch(request_body={"url": "ftp://nope"})
        except HTTPError as exc:
            return int(exc.status_code)
        return 200

    assert await asyncio.to_thread(bad) == 400
    assert other  # a tenant of its own


async def test_events_arrive_signed_as_sendgrid_signs_them(
    stack: Settings, codec: Codec, receiver: Receiver
) -> None:
    tenant, key = await new_tenant(stack, "hook-signed")
    public_key = await _configure(stack, key, receiver.url("signed"))
    kinds = ["processed", "delivered", "bounced", "deferred", "opened", "clicked", "complained"]
    ids = await _produce(stack, codec, tenant, kinds)
    hook = receiver.hooks["signed"]

    async def received() -> set[str]:
        return {i for p in hook.posts for i in p.ids}

    assert await eventually(received, lambda got: got >= set(ids), timeout=30) >= set(ids)
    for post in hook.posts:
        assert _verified(post, public_key), post.headers
        assert post.headers["Content-Type"] == "application/json"
    events = {e["sg_event_id"]: e for p in hook.posts for e in p.events}
    names = [events[i]["event"] for i in ids]
    assert names == ["processed", "delivered", "bounce", "deferred", "open", "click", "spamreport"]
    first = events[ids[0]]
    assert first["email"] == "user0@example.com"
    assert first["order"] == "0"  # custom args at the top level
    assert isinstance(first["timestamp"], int)
    assert first["sg_message_id"].startswith(tenant)


async def test_a_failed_post_comes_again_with_the_same_event_ids(
    stack: Settings, codec: Codec, receiver: Receiver
) -> None:
    tenant, key = await new_tenant(stack, "hook-retry")
    public_key = await _configure(stack, key, receiver.url("retry", Hook(statuses=[500])))
    ids = await _produce(stack, codec, tenant, ["processed", "delivered", "delivered"])
    hook = receiver.hooks["retry"]

    async def accepted() -> set[str]:
        # every post but the first was answered 200
        return {i for p in hook.posts[1:] for i in p.ids}

    assert await eventually(accepted, lambda got: got >= set(ids), timeout=30) >= set(ids)
    first, second = hook.posts[0], hook.posts[1]
    assert first.ids == second.ids  # the batch again, not a new one
    assert first.body == second.body
    assert second.at - first.at >= 0.9  # after the backoff, through the 1 s delay tier
    assert _verified(first, public_key)
    assert _verified(second, public_key)


async def test_a_hanging_endpoint_does_not_delay_another_tenants_posts(
    stack: Settings, codec: Codec, receiver: Receiver
) -> None:
    slow, slow_key = await new_tenant(stack, "hook-hang")
    fast, fast_key = await new_tenant(stack, "hook-fast")
    await _configure(stack, slow_key, receiver.url("hang", Hook(hang=True)), signed=False)
    await _configure(stack, fast_key, receiver.url("fast"), signed=False)
    hanging, quick = receiver.hooks["hang"], receiver.hooks["fast"]
    await _produce(stack, codec, slow, ["delivered"] * 5)
    assert await eventually(lambda: _async(len(hanging.posts)), bool, timeout=30)
    began = time.monotonic()
    ids = await _produce(stack, codec, fast, ["delivered"] * 3)

    async def received() -> set[str]:
        return {i for p in quick.posts for i in p.ids}

    got = await eventually(received, lambda got: got >= set(ids), timeout=30)
    assert got >= set(ids)
    took = max(p.at for p in quick.posts) - began
    # the slow endpoint is still holding its posts (its timeout is 4 s); the other tenant's
    # arrived meanwhile
    assert took < stack.webhook_timeout - 1.0, took
    assert not receiver.release.is_set()


async def _async(value: int) -> int:
    return value


def _cli(stack: Settings, *args: str) -> tuple[int, str]:
    env = {**stack.to_env(), "POSTWIRE_KAFKA_BOOTSTRAP": stack.bootstrap}
    env["POSTWIRE_DATABASE_URL"] = stack.dsn
    result = CliRunner().invoke(cli_app, list(args), env=env)
    return result.exit_code, result.output


async def test_a_batch_given_up_on_is_listed_and_replayed(
    stack: Settings, codec: Codec, receiver: Receiver
) -> None:
    tenant, key = await new_tenant(stack, "hook-dead")
    # refused for longer than the retry window (8 s in the suite)
    await _configure(stack, key, receiver.url("dead", Hook(statuses=[503] * 40)))
    ids = await _produce(stack, codec, tenant, ["processed", "delivered"])

    async def failed() -> list[dict[str, Any]]:
        code, output = await asyncio.to_thread(
            _cli, stack, "webhooks", "failed", "--tenant", tenant, "--json"
        )
        assert code == 0, output
        return list(orjson.loads(output))

    rows = await eventually(failed, lambda rows: sum(r["events"] for r in rows) >= 2, timeout=40)
    assert sum(r["events"] for r in rows) == len(ids)
    assert all(r["reason"].startswith("HTTP 503") for r in rows)
    assert all(r["attempts"] >= 2 for r in rows)
    hook = receiver.hooks["dead"]
    hook.statuses.clear()  # the endpoint works again
    seen = len(hook.posts)
    code, output = await asyncio.to_thread(_cli, stack, "webhooks", "replay", "--tenant", tenant)
    assert code == 0, output
    assert f"{len(rows)} batch(es)" in output

    async def replayed() -> set[str]:
        return {i for p in hook.posts[seen:] for i in p.ids}

    assert await eventually(replayed, lambda got: got >= set(ids), timeout=30) >= set(ids)
    assert await failed() == []  # nothing pending any more
    code, output = await asyncio.to_thread(
        _cli, stack, "webhooks", "show", "--tenant", tenant, "--json"
    )
    assert code == 0
    assert orjson.loads(output)["url"].endswith("/hook/dead")


async def test_the_cli_sets_a_signed_webhook_whose_key_rests_sealed_to_its_tenant(
    stack: Settings, receiver: Receiver
) -> None:
    import asyncpg

    from streams.db.webhooks import load_endpoints

    tenant, _ = await new_tenant(stack, "hook-cli")
    other, _ = await new_tenant(stack, "hook-cli-other")
    url = receiver.url("cli")
    code, output = await asyncio.to_thread(
        _cli, stack, "webhooks", "set", "--tenant", tenant, "--url", url, "--enable",
        "--events", "delivered,bounce", "--signed", "--json",
    )  # fmt: skip
    assert code == 0, output
    shown = orjson.loads(output)
    assert shown["enabled"] is True
    assert shown["delivered"] is True
    assert shown["processed"] is False
    assert shown["public_key"]
    code, bad = await asyncio.to_thread(
        _cli, stack, "webhooks", "set", "--tenant", tenant, "--events", "nonsense"
    )
    assert code == 2
    assert "unknown nonsense" in bad
    code, output = await asyncio.to_thread(_cli, stack, "webhooks", "test", "--tenant", tenant)
    assert code == 0, output
    [post] = receiver.hooks["cli"].posts
    assert _verified(post, shown["public_key"])
    conn = await asyncpg.connect(stack.dsn)
    try:
        sealed = await conn.fetchval(
            "SELECT sealed_key FROM webhook_endpoints WHERE tenant_id = $1", tenant
        )
        assert b"PRIVATE KEY" not in sealed
        assert tenant in await load_endpoints(conn, stack.secret)
        # the sealed key moved to another tenant's row does not open there: that endpoint is
        # left out rather than posted to unsigned (or signed with another tenant's key)
        await conn.execute(
            "INSERT INTO webhook_endpoints (tenant_id, enabled, url, signed, sealed_key,"
            " public_key) VALUES ($1, true, $2, true, $3, 'x')",
            other,
            url,
            sealed,
        )
        assert other not in await load_endpoints(conn, stack.secret)
    finally:
        await conn.close()


async def test_mail_sent_through_the_api_is_reported_by_the_webhook(
    stack: Settings, api: ApiClient, receiver: Receiver
) -> None:
    from tests.conftest import SENDER_DOMAIN

    tenant, key = await new_tenant(stack, "hook-mail")
    public_key = await _configure(stack, key, receiver.url("mail"))
    body = {
        "personalizations": [
            {"to": [{"email": "ann@inbox.example"}, {"email": "nobody@normal.example"}]}
        ],
        "from": {"email": f"news@{SENDER_DOMAIN}"},
        "subject": "Hooked",
        "content": [{"type": "text/plain", "value": "Hi"}],
        "categories": ["hooks"],
        "custom_args": {"campaign": "c1"},
    }
    sent = await api.as_key(key).call("POST", "/v3/mail/send", body)
    assert sent.status == 202, sent.body
    message_id = sent.headers["X-Message-Id"]
    hook = receiver.hooks["mail"]

    async def outcomes() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for post in hook.posts:
            for event in post.events:
                found.setdefault(event["email"], set()).add(event["event"])
        return found

    def settled(found: dict[str, set[str]]) -> bool:
        return "delivered" in found.get("ann@inbox.example", set()) and "bounce" in found.get(
            "nobody@normal.example", set()
        )

    found = await eventually(outcomes, settled, timeout=60)
    assert settled(found), found
    assert all(_verified(p, public_key) for p in hook.posts)
    events = [e for p in hook.posts for e in p.events]
    assert all(e["sg_message_id"].startswith(message_id) for e in events)
    delivered = next(e for e in events if e["event"] == "delivered")
    assert delivered["response"].startswith("250")
    assert delivered["category"] == ["hooks"]
    assert delivered["campaign"] == "c1"
    bounce = next(e for e in events if e["event"] == "bounce")
    assert bounce["status"].startswith("5")
    assert bounce["bounce_classification"] == "user_unknown"
    assert tenant  # its own tenant: nobody else's events reach this endpoint
