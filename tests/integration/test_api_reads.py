"""Message status, the event feed, the tracking webhook and suppressions over real HTTP, each
tenant seeing only its own data."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from streams.settings import Settings
from tests.conftest import SENDER_DOMAIN
from tests.integration.api_client import Answer, ApiClient
from tests.integration.helpers import eventually, new_tenant

pytestmark = pytest.mark.integration


def mail(*recipients: str, personalizations: int = 1) -> dict[str, Any]:
    return {
        "personalizations": [
            {"to": [{"email": r} for r in recipients]} for _ in range(personalizations)
        ],
        "from": {"email": f"news@{SENDER_DOMAIN}"},
        "subject": "Status",
        "content": [{"type": "text/plain", "value": "Hi"}],
    }


async def _send(client: ApiClient, body: dict[str, Any]) -> str:
    answer = await client.call("POST", "/v3/mail/send", body)
    assert answer.status == 202, answer.body
    return answer.headers["X-Message-Id"]


async def _all_events(client: ApiClient, query: str = "") -> list[dict[str, Any]]:
    """Walk the feed page by page with the cursor, as a consumer does."""
    events: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await client.call(
            "GET", f"/v1/events?limit=2{query}" + (f"&cursor={cursor}" if cursor else "")
        )
        assert page.status == 200, page.body
        events += page.body["events"]
        if not page.body["has_more"]:
            return events
        assert page.body["next_cursor"] != cursor
        cursor = page.body["next_cursor"]


async def test_message_status_has_a_timeline_per_recipient(stack: Settings, api: ApiClient) -> None:
    _tenant, key = await new_tenant(stack, "st")
    client = api.as_key(key)
    message_id = await _send(client, mail("ann@inbox.example", "nobody@normal.example"))

    def settled(answer: Answer) -> bool:
        # the state and the event log land through two sinks, each at its own pace
        recipients = (answer.body or {}).get("recipients", [])
        states = {r["email"]: r["state"] for r in recipients}
        logged = all(r["events"] and r["events"][-1]["type"] == r["state"] for r in recipients)
        wanted = {"ann@inbox.example": "delivered", "nobody@normal.example": "bounced"}
        return states == wanted and logged

    status = await client.until(f"/v1/messages/{message_id}", settled)
    assert settled(status), status.body["recipients"]
    by_email = {r["email"]: r for r in status.body["recipients"]}
    ann = by_email["ann@inbox.example"]
    assert [e["type"] for e in ann["events"]][-1] == "delivered"
    assert ann["last_reply"].startswith("250")
    nobody = by_email["nobody@normal.example"]
    assert nobody["bounce_class"] == "user_unknown"
    assert nobody["events"][-1]["smtp"]["code"] == 550


async def test_one_status_covers_every_personalization(stack: Settings, api: ApiClient) -> None:
    _tenant, key = await new_tenant(stack, "stp")
    client = api.as_key(key)
    message_id = await _send(client, mail("pat@inbox.example", personalizations=2))

    def both(answer: Answer) -> bool:
        return answer.status == 200 and len(answer.body["recipients"]) == 2

    status = await client.until(f"/v1/messages/{message_id}", both)
    assert both(status), status.body
    ids = {r["message_id"] for r in status.body["recipients"]}
    assert ids == {f"{message_id}.0", f"{message_id}.1"}


async def test_the_event_feed_pages_every_event_once_and_filters(
    stack: Settings, api: ApiClient
) -> None:
    _tenant, key = await new_tenant(stack, "feed")
    client = api.as_key(key)
    ids = [await _send(client, mail(f"f{i}@inbox.example")) for i in range(3)]

    async def delivered() -> int:
        page = await client.call("GET", "/v1/events?type=delivered&limit=100")
        return len(page.body["events"])

    assert await eventually(delivered, lambda n: n == 3) == 3
    events = await _all_events(client)
    event_ids = [e["event_id"] for e in events]
    assert len(event_ids) == len(set(event_ids))
    assert {e["message_id"] or e["request_id"] for e in events} == set(ids)
    assert {"processed", "delivered"} <= {e["type"] for e in events}
    since = await _all_events(client, "&since=2000-01-01T00:00:00Z")
    assert len(since) == len(events)
    future = await client.call("GET", "/v1/events?since=2999-01-01T00:00:00Z")
    assert future.body["events"] == []
    for query in ("cursor=abc", "limit=0", "since=yesterday", "type=sent"):
        bad = await client.call("GET", f"/v1/events?{query}")
        assert bad.status == 400, query


async def test_tenants_never_see_each_others_data(stack: Settings, api: ApiClient) -> None:
    _a, key_a = await new_tenant(stack, "iso-a")
    _b, key_b = await new_tenant(stack, "iso-b")
    a, b = api.as_key(key_a), api.as_key(key_b)
    message_id = await _send(a, mail("iso@inbox.example"))
    status = await a.until(f"/v1/messages/{message_id}", lambda r: r.status == 200)
    assert status.status == 200
    assert (await b.call("GET", f"/v1/messages/{message_id}")).status == 404
    assert (await b.call("GET", "/v1/events?limit=1000")).body["events"] == []
    added = await a.call("POST", "/v1/suppressions", {"emails": ["iso-s@inbox.example"]})
    assert added.status == 201
    assert (
        await a.until("/v1/suppressions/iso-s@inbox.example", lambda r: r.status == 200)
    ).status == 200
    assert (await b.call("GET", "/v1/suppressions/iso-s@inbox.example")).status == 404
    assert (await b.call("GET", "/v1/suppressions")).body["suppressions"] == []


async def test_webhook_events_are_recorded_once_and_unsubscribes_suppress(
    stack: Settings, api: ApiClient, db: asyncpg.Connection
) -> None:
    _tenant, key = await new_tenant(stack, "hook")
    client = api.as_key(key)
    message_id = await _send(client, mail("reader@inbox.example"))
    now = int(time.time())
    hooks = [
        {
            "event": "open",
            "email": "reader@inbox.example",
            "sg_message_id": message_id,
            "timestamp": now,
            "useragent": "Mail/1.0",
        },
        {
            "event": "click",
            "email": "reader@inbox.example",
            "message_id": message_id,
            "timestamp": now,
            "url": "https://example.com/a",
        },
        {
            "event": "unsubscribe",
            "email": "Reader@inbox.example",
            "message_id": message_id,
            "timestamp": now,
        },
    ]
    for _ in range(2):  # a provider retrying the whole batch
        answer = await client.call("POST", "/v1/events/webhook", hooks)
        assert answer.status == 202, answer.body
        assert answer.body["accepted"] == 3

    async def tracked() -> list[str]:
        rows = await db.fetch(
            "SELECT type FROM events WHERE message_id = $1 AND type IN "
            "('opened', 'clicked', 'unsubscribed') ORDER BY type",
            message_id,
        )
        return [r["type"] for r in rows]

    want = ["clicked", "opened", "unsubscribed"]
    assert await eventually(tracked, lambda t: t == want) == want
    suppressed = await client.until(
        "/v1/suppressions/reader@inbox.example", lambda r: r.status == 200
    )
    assert suppressed.body["reason"] == "unsubscribe"
    bad = await client.call("POST", "/v1/events/webhook", [{"event": "bounce", "email": "x"}])
    assert bad.status == 400
    assert {e["field"] for e in bad.body["errors"]} == {"0.event", "0.message_id", "0.email"}


async def test_suppressions_are_added_listed_and_lifted(stack: Settings, api: ApiClient) -> None:
    _tenant, key = await new_tenant(stack, "sup")
    client = api.as_key(key)
    emails = ["s1@inbox.example", "S2@inbox.example", "s3@inbox.example"]
    added = await client.call("POST", "/v1/suppressions", {"emails": emails, "reason": "manual"})
    assert added.status == 201
    assert added.body["recipient_emails"] == [e.lower() for e in emails]

    def three(answer: Answer) -> bool:
        return len(answer.body["suppressions"]) == 3

    listed = await client.until("/v1/suppressions?limit=10", three)
    assert [s["email"] for s in listed.body["suppressions"]] == sorted(e.lower() for e in emails)
    page = await client.call("GET", "/v1/suppressions?limit=2")
    rest = await client.call("GET", f"/v1/suppressions?limit=2&after={page.body['next_after']}")
    assert len(page.body["suppressions"]) + len(rest.body["suppressions"]) == 3
    removed = await client.call("DELETE", "/v1/suppressions/s2@inbox.example")
    assert removed.status == 204
    gone = await client.until("/v1/suppressions/s2@inbox.example", lambda r: r.status == 404)
    assert gone.status == 404
    # workers see the change at their next directory refresh
    await asyncio.sleep(stack.directory_refresh * 3)
    # the lifted address is sent to again; a suppressed one is dropped
    message_id = await _send(client, mail("s2@inbox.example", "s1@inbox.example"))

    def settled(answer: Answer) -> bool:
        return answer.status == 200 and len(answer.body["recipients"]) == 2

    status = await client.until(f"/v1/messages/{message_id}", settled)
    states = {r["email"]: r["state"] for r in status.body["recipients"]}
    assert states["s1@inbox.example"] == "dropped"
    assert states["s2@inbox.example"] in ("processed", "delivered")


async def test_a_revoked_key_is_refused_within_seconds(
    stack: Settings, api: ApiClient, db: asyncpg.Connection
) -> None:
    tenant, key = await new_tenant(stack, "rev")
    client = api.as_key(key)
    assert (await client.call("GET", "/v1/events")).status == 200
    await db.execute("UPDATE api_keys SET revoked_at = now() WHERE tenant_id = $1", tenant)
    began = time.monotonic()

    async def status() -> int:
        return (await client.call("GET", "/v1/events")).status

    assert await eventually(status, lambda s: s == 401, timeout=30) == 401
    assert time.monotonic() - began < stack.directory_refresh + 5


async def test_the_api_counts_requests_by_route_on_metrics(stack: Settings, api: ApiClient) -> None:
    _tenant, key = await new_tenant(stack, "metrics")
    client = api.as_key(key)
    assert (await client.call("GET", "/v1/messages/some-id")).status == 404
    async with api.session.get(f"{api.base}/metrics") as r:
        assert r.status == 200
        text = await r.text()
    lines = [line for line in text.splitlines() if line.startswith("postwire_http_requests_total")]
    # the route pattern, never the id in the path
    assert any(
        'route="/v1/messages/{message_id}"' in line and 'status="404"' in line for line in lines
    )
    assert "some-id" not in text
    assert "postwire_http_request_seconds_bucket" in text


async def test_reads_answer_304_while_unchanged_and_gzip_when_large(
    stack: Settings, api: ApiClient
) -> None:
    _tenant, key = await new_tenant(stack, "etag")
    client = api.as_key(key)
    recipients = [f"r{i}@inbox.example" for i in range(30)]
    message_id = await _send(client, mail(*recipients))
    path = f"/v1/messages/{message_id}"

    def delivered(answer: Answer) -> bool:
        states = [r["state"] for r in (answer.body or {}).get("recipients", [])]
        return len(states) == len(recipients) and set(states) == {"delivered"}

    status = await client.until(path, delivered)
    assert delivered(status), status.body
    etag = status.headers["ETag"]
    assert status.headers["Cache-Control"] == "private, no-cache"
    # the client asks for gzip by default, and 30 timelines are well past a kilobyte
    assert status.headers.get("Content-Encoding") == "gzip", status.headers
    again = await client.call("GET", path, **{"If-None-Match": etag})
    assert again.status == 304
    assert again.body is None
    assert again.headers["ETag"] == etag
    plain = await client.call("GET", path, **{"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    assert plain.body == status.body
    assert plain.headers["ETag"] != etag  # another representation of the same content
    # a tag that is not the current one gets the whole answer
    stale = await client.call("GET", path, **{"If-None-Match": '"not-this-one"'})
    assert stale.status == 200
    assert stale.body == status.body
    # another tenant learns nothing from a tag either
    _other, other_key = await new_tenant(stack, "etag-other")
    foreign = await api.as_key(other_key).call("GET", path, **{"If-None-Match": etag})
    assert foreign.status == 404
