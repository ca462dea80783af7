"""One-click unsubscribe end to end on the session stack: a bulk send arrives with the
List-Unsubscribe pair, DKIM-signed; the GET page unsubscribes nobody; the POST records an
``unsubscribed`` event and a suppression, and the next send to the address is dropped."""

from __future__ import annotations

import asyncio
import re
import uuid
from email import message_from_bytes
from email.policy import default
from typing import Any

import aiohttp
import asyncpg
import dkim
import dns.message
import dns.query
import pytest

from streams.settings import Settings
from tests.conftest import SENDER_DOMAIN
from tests.integration.api_client import ApiClient
from tests.integration.helpers import eventually, install_dkim_key, new_tenant
from tests.peers.world import World

pytestmark = pytest.mark.integration


def mail(recipient: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": recipient}]}],
        "from": {"email": f"news@{SENDER_DOMAIN}"},
        "subject": "Weekly news",
        "content": [{"type": "text/plain", "value": "Hi"}],
    }
    if headers:
        body["headers"] = headers
    return body


def _dns_txt(world: World) -> Any:
    def lookup(name: bytes, timeout: int = 5) -> bytes:
        query = dns.message.make_query(name.decode().rstrip("."), "TXT")
        answer = dns.query.udp(query, world.dns.host, port=world.dns.port, timeout=timeout)
        for rrset in answer.answer:
            for rdata in rrset:
                return b"".join(rdata.strings)
        return b""

    return lookup


async def _send(client: ApiClient, body: dict[str, Any], priority: str = "bulk") -> str:
    answer = await client.call("POST", "/v3/mail/send", body, **{"X-Postwire-Priority": priority})
    assert answer.status == 202, answer.body
    return answer.headers["X-Message-Id"]


async def _delivered(world: World, address: str, count: int = 1) -> bytes:
    async def probe() -> list[bytes]:
        return list(world.mx["inbox"].messages_to(address))

    found = await eventually(probe, lambda m: len(m) >= count)
    assert len(found) >= count, f"nothing delivered to {address}"
    return found[count - 1]


async def _events(db: asyncpg.Connection, tenant: str, address: str) -> list[tuple[str, str]]:
    rows = await db.fetch(
        "SELECT type, coalesce(reason, '') AS reason FROM events"
        " WHERE tenant_id = $1 AND recipient = $2 ORDER BY occurred_at",
        tenant,
        address,
    )
    return [(r["type"], r["reason"]) for r in rows]


async def test_one_click_unsubscribe_suppresses_and_the_next_send_is_dropped(
    stack: Settings, api: ApiClient, world: World, db: asyncpg.Connection
) -> None:
    tenant, key = await new_tenant(stack, "unsub")
    await install_dkim_key(stack, world, tenant)
    client = api.as_key(key)
    address = f"reader-{uuid.uuid4().hex[:6]}@inbox.example"
    await _send(client, mail(address))
    raw = await _delivered(world, address)

    assert dkim.verify(raw, dnsfunc=_dns_txt(world)), "DKIM signature does not verify"
    message = message_from_bytes(raw, policy=default)
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    target = str(message["List-Unsubscribe"])
    [url] = re.findall(r"<(http[^>]+)>", target)
    assert url.startswith(f"{stack.api_base}/u/u")
    assert "mailto:" not in target  # the session stack has no bounce domain
    assert address.split("@", maxsplit=1)[0] not in url
    head = raw.split(b"\r\n\r\n", 1)[0].replace(b"\r\n", b"").replace(b" ", b"").lower()
    signed = head.split(b";h=", 1)[1].split(b";", 1)[0]
    assert b"list-unsubscribe:" in signed
    assert b"list-unsubscribe-post" in signed
    # the messages table knows the recipient before anyone can click
    known = await eventually(
        lambda: db.fetchval(
            "SELECT count(*) FROM messages WHERE tenant_id = $1 AND recipient = $2",
            tenant,
            address,
        ),
        lambda n: n > 0,
    )
    assert known == 1

    async with aiohttp.ClientSession() as http:
        async with http.get(url) as page:
            assert page.status == 200
            html = await page.text()
        assert 'method="post"' in html
        assert address not in html
        assert "@" not in html
        assert not any(t == "unsubscribed" for t, _ in await _events(db, tenant, address))
        async with http.post(url, data=b"") as refused:
            assert refused.status == 400
        async with http.get(url[:-3] + "aaa") as forged:
            assert forged.status == 404
        async with http.post(url + "x", data={"List-Unsubscribe": "One-Click"}) as forged:
            assert forged.status == 404
        for _ in range(2):  # idempotent: the second click records nothing new
            async with http.post(url, data={"List-Unsubscribe": "One-Click"}) as done:
                assert done.status == 200, await done.text()

    def unsubscribed(events: list[tuple[str, str]]) -> bool:
        return any(t == "unsubscribed" for t, _ in events)

    events = await eventually(lambda: _events(db, tenant, address), unsubscribed)
    assert [t for t, _ in events].count("unsubscribed") == 1, events
    row = await eventually(
        lambda: db.fetchrow(
            "SELECT reason, removed_at FROM suppressions WHERE tenant_id = $1 AND address = $2",
            tenant,
            address,
        ),
        lambda r: r is not None,
    )
    assert row is not None
    assert row["reason"] == "unsubscribe"
    assert row["removed_at"] is None

    await asyncio.sleep(stack.directory_refresh * 3)  # the gate's directory holds it now
    await _send(client, mail(address))
    after = await eventually(
        lambda: _events(db, tenant, address), lambda e: ("dropped", "suppressed") in e
    )
    assert ("dropped", "suppressed") in after, after
    assert len(world.mx["inbox"].messages_to(address)) == 1


async def test_transactional_mail_and_the_senders_own_header_get_none_of_ours(
    stack: Settings, api: ApiClient, world: World
) -> None:
    _tenant, key = await new_tenant(stack, "unsub")
    client = api.as_key(key)
    tx = f"tx-{uuid.uuid4().hex[:6]}@inbox.example"
    own = f"own-{uuid.uuid4().hex[:6]}@inbox.example"
    await _send(client, mail(tx), priority="high")
    theirs = {"List-Unsubscribe": "<mailto:leave@acme.example>"}
    await _send(client, mail(own, theirs))
    assert b"List-Unsubscribe" not in await _delivered(world, tx)
    message = message_from_bytes(await _delivered(world, own), policy=default)
    assert message.get_all("List-Unsubscribe") == ["<mailto:leave@acme.example>"]
    assert message["List-Unsubscribe-Post"] is None
