"""SendGrid's suppression groups on the session stack, driven by the official ``sendgrid``
client: groups made, read, changed and deleted per tenant; members added, found and lifted;
mail of a group dropped for its members only; a group's one-click link leaving that group only;
global unsubscribes stopping everything."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from email import message_from_bytes
from email.policy import default
from typing import Any

import aiohttp
import asyncpg
import pytest
import sendgrid
from python_http_client.exceptions import (
    BadRequestsError,
    HTTPError,
    NotFoundError,
)

from streams.settings import Settings
from tests.integration.api_client import ApiClient
from tests.integration.helpers import eventually, new_tenant, sendgrid_call
from tests.integration.test_api_unsubscribe import _delivered, _events, _send, mail
from tests.peers.world import World

pytestmark = pytest.mark.integration


async def _refused(endpoint: Any, method: str, **kw: Any) -> HTTPError:
    try:
        await sendgrid_call(endpoint, method, **kw)
    except HTTPError as exc:
        return exc
    raise AssertionError(f"{method} was not refused")


def _asm(stack: Settings, key: str) -> Any:
    return sendgrid.SendGridAPIClient(api_key=key, host=stack.api_base).client.asm


async def test_groups_and_their_members_through_the_sendgrid_client(
    stack: Settings, api: ApiClient
) -> None:
    _tenant, key = await new_tenant(stack, "asm")
    _other, other_key = await new_tenant(stack, "asm")
    asm = _asm(stack, key)
    status, news = await sendgrid_call(
        asm.groups, "post", request_body={"name": "News", "description": "Weekly news"}
    )
    assert status == 201
    assert {k: news[k] for k in ("name", "description", "is_default")} == {
        "name": "News",
        "description": "Weekly news",
        "is_default": False,
    }
    _, offers = await sendgrid_call(
        asm.groups, "post", request_body={"name": "Offers", "is_default": True}
    )
    taken = await _refused(asm.groups, "post", request_body={"name": "News"})
    assert isinstance(taken, BadRequestsError)
    assert "name" in taken.body.decode()
    long_name = await _refused(asm.groups, "post", request_body={"name": "x" * 31})
    assert isinstance(long_name, BadRequestsError)
    # a second default takes the place of the first
    status, changed = await sendgrid_call(
        asm.groups._(news["id"]), "patch", request_body={"is_default": True, "name": "Newsletter"}
    )
    assert status == 201
    assert (changed["name"], changed["is_default"]) == ("Newsletter", True)
    _, listed = await sendgrid_call(asm.groups, "get")
    assert {g["id"]: g["is_default"] for g in listed} == {news["id"]: True, offers["id"]: False}
    _, only = await sendgrid_call(asm.groups, "get", query_params={"id": offers["id"]})
    assert [g["id"] for g in only] == [offers["id"]]
    # another tenant sees none of it
    theirs = _asm(stack, other_key)
    _, nothing = await sendgrid_call(theirs.groups, "get")
    assert nothing == []
    assert isinstance(await _refused(theirs.groups._(news["id"]), "get"), NotFoundError)
    assert isinstance(
        await _refused(
            theirs.groups._(news["id"]).suppressions,
            "post",
            request_body={"recipient_emails": ["x@example.org"]},
        ),
        NotFoundError,
    )

    tag = uuid.uuid4().hex[:6]
    ann, bob = f"ann-{tag}@example.org", f"bob-{tag}@example.org"
    members = asm.groups._(news["id"]).suppressions
    status, added = await sendgrid_call(
        members, "post", request_body={"recipient_emails": [ann, bob]}
    )
    assert (status, added) == (201, {"recipient_emails": [ann, bob]})

    async def listed_members() -> list[str]:
        return (await sendgrid_call(members, "get"))[1]

    found = await eventually(listed_members, lambda m: len(m) == 2)
    assert sorted(found) == [ann, bob]
    _, searched = await sendgrid_call(
        members._("search"), "post", request_body={"recipient_emails": [ann, "no@example.org"]}
    )
    assert searched == [ann]
    _, everyone = await sendgrid_call(asm.suppressions, "get")
    assert {(m["email"], m["group_id"], m["group_name"]) for m in everyone} == {
        (ann, news["id"], "Newsletter"),
        (bob, news["id"], "Newsletter"),
    }
    _, of_ann = await sendgrid_call(asm.suppressions._(ann), "get")
    assert {g["id"]: g["suppressed"] for g in of_ann["suppressions"]} == {
        news["id"]: True,
        offers["id"]: False,
    }
    _, counted = await sendgrid_call(asm.groups._(news["id"]), "get")
    assert counted["unsubscribes"] == 2
    status, _ = await sendgrid_call(members._(bob), "delete")
    assert status == 204
    assert await eventually(listed_members, lambda m: m == [ann]) == [ann]

    # global unsubscribes: SendGrid's other list, beside the groups
    status, _ = await sendgrid_call(
        asm.suppressions._("global"), "post", request_body={"recipient_emails": [bob]}
    )
    assert status == 201

    async def is_global() -> Any:
        return (await sendgrid_call(asm.suppressions._("global")._(bob), "get"))[1]

    assert await eventually(is_global, lambda r: r == {"recipient_email": bob}) == {
        "recipient_email": bob
    }
    _, not_global = await sendgrid_call(asm.suppressions._("global")._(ann), "get")
    assert not_global == {}
    assert (await sendgrid_call(asm.suppressions._("global")._(bob), "delete"))[0] == 204
    assert await eventually(is_global, lambda r: r == {}) == {}

    # control characters never reach a name or a topic key (0x1f separates a key's parts)
    assert isinstance(
        await _refused(asm.groups, "post", request_body={"name": "a\u0000b"}), BadRequestsError
    )
    assert isinstance(
        await _refused(
            asm.groups._(offers["id"]).suppressions,
            "post",
            request_body={"recipient_emails": [f"a\x1f{offers['id']}@example.org"]},
        ),
        BadRequestsError,
    )
    # a bounce stays a bounce: a global unsubscribe of it changes nothing
    gone = f"gone-{tag}@example.org"
    answer = await api.as_key(key).call(
        "POST", "/v1/suppressions", {"emails": [gone], "reason": "user_unknown"}
    )
    assert answer.status == 201

    async def bounce() -> int:
        return (await api.as_key(key).call("GET", f"/v3/suppression/bounces/{gone}")).status

    assert await eventually(bounce, lambda s: s == 200) == 200
    await sendgrid_call(
        asm.suppressions._("global"), "post", request_body={"recipient_emails": [gone]}
    )
    await asyncio.sleep(1.0)
    assert (await sendgrid_call(asm.suppressions._("global")._(gone), "get"))[1] == {}
    assert await bounce() == 200

    # deleting the group forgets it and its members
    assert (await sendgrid_call(asm.groups._(news["id"]), "delete"))[0] == 204
    assert isinstance(await _refused(asm.groups._(news["id"]), "get"), NotFoundError)
    _, left = await sendgrid_call(asm.suppressions, "get")
    assert left == []


async def test_mail_of_a_group_skips_its_members_and_its_link_leaves_the_group_only(
    stack: Settings, api: ApiClient, world: World, db: asyncpg.Connection
) -> None:
    tenant, key = await new_tenant(stack, "asmm")
    client = api.as_key(key)
    made = await client.call("POST", "/v3/asm/groups", {"name": "Digest"})
    assert made.status == 201, made.body
    group = made.body["id"]
    tag = uuid.uuid4().hex[:6]
    reader = f"reader-{tag}@inbox.example"

    def grouped(address: str) -> dict[str, Any]:
        return {**mail(address), "asm": {"group_id": group, "groups_to_display": [group]}}

    # a group the tenant does not have is refused at the door
    unknown = await client.call(
        "POST", "/v3/mail/send", {**mail(reader), "asm": {"group_id": group + 1_000_000}}
    )
    assert unknown.status == 400, unknown.body
    assert unknown.body["errors"][0]["field"] == "asm.group_id"

    # the group's mail carries a link that names the group
    await _send(client, grouped(reader))
    raw = await _delivered(world, reader)
    [url] = re.findall(
        r"<(http[^>]+)>", str(message_from_bytes(raw, policy=default)["List-Unsubscribe"])
    )
    await eventually(
        lambda: db.fetchval(
            "SELECT count(*) FROM messages WHERE tenant_id = $1 AND recipient = $2",
            tenant,
            reader,
        ),
        lambda n: n > 0,
    )
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as page:
            assert page.status == 200
            assert "Digest" in await page.text()
        async with http.post(url, data={"List-Unsubscribe": "One-Click"}) as done:
            assert done.status == 200, await done.text()
            assert "Digest" in await done.text()

    row = await eventually(
        lambda: db.fetchrow(
            "SELECT group_id, reason, source FROM group_suppressions"
            " WHERE tenant_id = $1 AND address = $2 AND removed_at IS NULL",
            tenant,
            reader,
        ),
        lambda r: r is not None,
    )
    assert row is not None
    assert (row["group_id"], row["reason"]) == (group, "unsubscribe")
    global_row = await db.fetchval(
        "SELECT count(*) FROM suppressions WHERE tenant_id = $1 AND address = $2", tenant, reader
    )
    assert global_row == 0
    unsubscribed = await eventually(
        lambda: db.fetchval(
            "SELECT detail FROM events WHERE tenant_id = $1 AND recipient = $2 AND type ="
            " 'unsubscribed'",
            tenant,
            reader,
        ),
        lambda d: d is not None,
    )
    assert json.loads(unsubscribed)["asm_group_id"] == group

    await asyncio.sleep(stack.directory_refresh * 3)  # the gate's directory holds it now
    await _send(client, grouped(reader))
    after = await eventually(
        lambda: _events(db, tenant, reader), lambda e: ("dropped", "group_suppressed") in e
    )
    assert ("dropped", "group_suppressed") in after, after
    # mail of no group still reaches the reader
    await _send(client, mail(reader))
    await _delivered(world, reader, count=2)
    assert len(world.mx["inbox"].messages_to(reader)) == 2
