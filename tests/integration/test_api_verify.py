"""/v1/verify over real HTTP against the session stack: inline answers, jobs, isolation."""

from __future__ import annotations

import asyncpg
import pytest

from streams.db.tenants import create_api_key
from streams.settings import Settings
from tests.integration.api_client import Answer, ApiClient
from tests.integration.helpers import new_tenant

pytestmark = pytest.mark.integration


def _done(answer: Answer) -> bool:
    return answer.status == 200 and answer.body["status"] == "done"


async def test_one_address_is_answered_inline_and_lands_in_postgres(
    stack: Settings, api: ApiClient, db: asyncpg.Connection
) -> None:
    _tenant, key = await new_tenant(stack, "v1")
    client = api.as_key(key)
    answer = await client.call(
        "POST", "/v1/verify", {"email": "nobody@normal.example", "smtp_probe": True, "timeout": 20}
    )
    assert answer.status == 200, answer.body
    assert answer.body["status"] == "done"
    result = answer.body["result"]
    assert result["email"] == "nobody@normal.example"
    assert result["is_reachable"] == "invalid"
    assert result["smtp"]["is_deliverable"] is False
    assert "tenant" not in result
    row = await db.fetchrow(
        "SELECT is_reachable FROM verifications WHERE request_id = $1", answer.body["id"]
    )
    assert row["is_reachable"] == "invalid"


async def test_no_wait_gives_an_id_to_poll(stack: Settings, api: ApiClient) -> None:
    _tenant, key = await new_tenant(stack, "v0")
    client = api.as_key(key)
    answer = await client.call("POST", "/v1/verify", {"email": "x@nullmx.example", "timeout": 0})
    assert answer.status == 202
    assert answer.body["status"] == "pending"
    assert answer.headers["Location"] == answer.body["url"]
    polled = await client.until(answer.body["url"], _done)
    assert _done(polled), polled.body
    assert polled.body["total"] == polled.body["done"] == 1
    assert polled.body["results"][0]["is_reachable"] == "invalid"
    assert "null_mx" in polled.body["results"][0]["reasons"]


async def test_a_batch_job_reports_progress_and_pages_results(
    stack: Settings, api: ApiClient
) -> None:
    _tenant, key = await new_tenant(stack, "vb")
    client = api.as_key(key)
    emails = [f"u{i}@normal.example" for i in range(5)] + ["not-an-address", "u0@normal.example"]
    answer = await client.call("POST", "/v1/verify/batch", {"emails": emails})
    assert answer.status == 202, answer.body
    assert answer.body["total"] == 6  # the repeated address is verified once
    url = answer.body["url"]
    job = await client.until(url, _done)
    assert _done(job), job.body
    assert job.body["done"] == 6
    assert job.body["counts"]["invalid"] == 1
    assert sum(job.body["counts"].values()) == 6
    assert {r["email"] for r in job.body["results"]} == set(emails)
    first = await client.call("GET", f"{url}?limit=4")
    second = await client.call("GET", f"{url}?offset={first.body['next_offset']}&limit=4")
    assert first.body["next_offset"] == 4
    assert second.body["next_offset"] is None
    paged = [r["email"] for r in first.body["results"] + second.body["results"]]
    assert sorted(paged) == sorted(set(emails))
    # a done job's page is tagged by its version: the same page revalidates (304), another
    # page of it has another tag
    tag = first.headers["ETag"]
    again = await client.call("GET", f"{url}?limit=4", **{"If-None-Match": tag})
    assert again.status == 304
    assert again.body is None
    assert second.headers["ETag"] != tag
    other = await client.call("GET", f"{url}?offset=4&limit=4", **{"If-None-Match": tag})
    assert other.status == 200
    assert other.body["results"] == second.body["results"]


async def test_bad_bodies_scopes_and_other_tenants(stack: Settings, api: ApiClient) -> None:
    owner, key = await new_tenant(stack, "vo")
    other_tenant, other = await new_tenant(stack, "vx")
    conn = await asyncpg.connect(stack.dsn)
    try:
        _, send_only = await create_api_key(conn, owner, scopes=("send",), secret=stack.secret)
    finally:
        await conn.close()
    client = api.as_key(key)
    bad = await client.call("POST", "/v1/verify/batch", {"emails": ["a@b.example", 7, ""]})
    assert bad.status == 400
    assert {e["field"] for e in bad.body["errors"]} == {"emails.1", "emails.2"}
    bad = await client.call("POST", "/v1/verify", {"email": "a@b.example", "timeout": 99})
    assert bad.status == 400
    assert bad.body["errors"][0]["field"] == "timeout"
    denied = await api.as_key(send_only).call("POST", "/v1/verify", {"email": "a@normal.example"})
    assert denied.status == 403
    job = await client.call("POST", "/v1/verify/batch", {"emails": ["a@normal.example"]})
    assert job.status == 202
    # another tenant cannot tell the job exists
    peek = await api.as_key(other).call("GET", job.body["url"])
    assert peek.status == 404
    assert other_tenant != owner
    unknown = await client.call("GET", "/v1/verify/batch/does-not-exist")
    assert unknown.status == 404


async def test_a_retried_batch_with_an_idempotency_key_is_one_job(
    stack: Settings, api: ApiClient, db: asyncpg.Connection
) -> None:
    _tenant, key = await new_tenant(stack, "vi")
    client = api.as_key(key)
    body = {"emails": ["a@normal.example", "b@normal.example"]}
    first = await client.call("POST", "/v1/verify/batch", body, **{"Idempotency-Key": "list-7"})
    again = await client.call("POST", "/v1/verify/batch", body, **{"Idempotency-Key": "list-7"})
    assert first.body["id"] == again.body["id"]
    job = await client.until(first.body["url"], _done)
    assert job.body["done"] == 2
    rows = await db.fetchval(
        "SELECT count(*) FROM verifications WHERE request_id = $1", first.body["id"]
    )
    assert rows == 2
