"""SendGrid's suppression endpoints driven by the official ``sendgrid`` client against the
session stack: each list shows its kind of the tenant's suppressions only, in SendGrid's shape,
and removes them (one, some, all) without touching the other lists or tenants."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import sendgrid
from python_http_client.exceptions import BadRequestsError, NotFoundError

from streams.settings import Settings
from tests.integration.api_client import ApiClient
from tests.integration.helpers import eventually, new_tenant, sendgrid_call

pytestmark = pytest.mark.integration

REASONS = {
    "bounces": "user_unknown",
    "blocks": "policy",
    "spam_reports": "complaint",
    "invalid_emails": "invalid",
    "unsubscribes": "unsubscribe",
}


async def _suppress(client: ApiClient, addresses: list[str], reason: str) -> None:
    answer = await client.call("POST", "/v1/suppressions", {"emails": addresses, "reason": reason})
    assert answer.status == 201, answer.body


async def test_the_five_lists_read_and_delete_with_the_sendgrid_client(
    stack: Settings, api: ApiClient
) -> None:
    tenant, key = await new_tenant(stack, "sgs")
    _other, other_key = await new_tenant(stack, "sgs")
    client = api.as_key(key)
    tag = uuid.uuid4().hex[:6]
    by_kind = {kind: [f"{kind}-{i}-{tag}@example.org" for i in range(2)] for kind in REASONS}
    before = int(time.time()) - 1
    for kind, addresses in by_kind.items():
        await _suppress(client, addresses, REASONS[kind])
    await _suppress(api.as_key(other_key), [f"theirs-{tag}@example.org"], "user_unknown")
    sg = sendgrid.SendGridAPIClient(api_key=key, host=stack.api_base).client.suppression

    async def listed(kind: str, **query: Any) -> list[dict[str, Any]]:
        status, body = await sendgrid_call(getattr(sg, kind), "get", query_params=query or None)
        assert status == 200
        assert isinstance(body, list)
        return body

    for kind, addresses in by_kind.items():
        rows = await eventually(lambda k=kind: listed(k), lambda r: len(r) == 2)
        assert sorted(r["email"] for r in rows) == addresses, (kind, rows)
        for r in rows:
            assert set(r) == {"created", "email", "reason", "status"}
            assert r["created"] >= before
            assert r["reason"] == REASONS[kind]
    # paging and the time window
    assert len(await listed("bounces", limit=1)) == 1
    assert len(await listed("bounces", limit=1, offset=1)) == 1
    assert await listed("bounces", offset=2) == []
    assert await listed("bounces", start_time=int(time.time()) + 3600) == []
    assert len(await listed("bounces", start_time=before, end_time=int(time.time()) + 1)) == 2

    # one address, and only in its own list
    spam = by_kind["spam_reports"][0]
    status, body = await sendgrid_call(sg.spam_reports._(spam), "get")
    assert status == 200
    assert [r["email"] for r in body] == [spam]
    with pytest.raises(NotFoundError):
        await sendgrid_call(sg.bounces._(spam), "get")
    with pytest.raises(NotFoundError):
        await sendgrid_call(sg.bounces._(spam), "delete")  # not a bounce: nothing lifted
    with pytest.raises(NotFoundError):
        await sendgrid_call(sg.bounces._(f"theirs-{tag}@example.org"), "get")  # another tenant's

    status, _ = await sendgrid_call(sg.bounces._(by_kind["bounces"][0]), "delete")
    assert status == 204
    status, _ = await sendgrid_call(
        sg.unsubscribes, "delete", request_body={"emails": [by_kind["unsubscribes"][1]]}
    )
    assert status == 204
    status, _ = await sendgrid_call(sg.invalid_emails, "delete", request_body={"delete_all": True})
    assert status == 204

    want = {
        "bounces": [by_kind["bounces"][1]],
        "unsubscribes": [by_kind["unsubscribes"][0]],
        "invalid_emails": [],
        "spam_reports": by_kind["spam_reports"],
        "blocks": by_kind["blocks"],
    }
    for kind, addresses in want.items():
        rows = await eventually(
            lambda k=kind: listed(k), lambda r, a=addresses: sorted(x["email"] for x in r) == a
        )
        assert sorted(r["email"] for r in rows) == addresses, kind
    # the other tenant's list is untouched
    theirs = sendgrid.SendGridAPIClient(api_key=other_key, host=stack.api_base).client.suppression
    status, body = await sendgrid_call(theirs.bounces, "get")
    assert status == 200
    assert [r["email"] for r in body] == [f"theirs-{tag}@example.org"]
    with pytest.raises(BadRequestsError):
        await sendgrid_call(sg.blocks, "delete", request_body={})
    assert tenant
