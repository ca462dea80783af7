"""``/v1/verify``: one address answered inline when the pipeline is quick enough, batches as
jobs to poll. Results come from PostgreSQL, where the verifications sink lands them."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
from aiohttp import web

from streams.api import params, queries
from streams.api.conditional import not_modified, version_tag
from streams.api.context import Api, Caller, json_body, problem, reply
from streams.api.mail import idempotency_key
from streams.api.sendgrid import PRIORITIES
from streams.api.verifyjobs import Job, parse_batch, parse_single, plan, requests

__all__ = ["WAITER", "ResultWaiter", "verify_batch", "verify_job", "verify_one"]

Json = dict[str, Any]


class ResultWaiter:
    """Waits for single-address results: one poller asks the database for every waiting id
    at once, rather than a query loop per HTTP request."""

    def __init__(self, api: Api, interval: float = 0.05) -> None:
        self.api = api
        self.interval = interval
        self.waiting: dict[str, list[asyncio.Future[Json]]] = {}
        self._poller: asyncio.Task[None] | None = None

    async def wait(self, request_id: str, timeout: float) -> Json | None:
        future: asyncio.Future[Json] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(request_id, []).append(future)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll())
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            return None
        finally:
            futures = self.waiting.get(request_id, [])
            with contextlib.suppress(ValueError):
                futures.remove(future)
            if not futures:
                self.waiting.pop(request_id, None)

    async def _poll(self) -> None:
        while self.waiting:
            await asyncio.sleep(self.interval)
            ids = list(self.waiting)
            if not ids:
                break
            try:
                async with self.api.db.acquire() as conn:
                    found = await queries.verification_rows(conn, ids)
            except (OSError, asyncpg.PostgresError):
                # the database is back soon or the waiters time out into a 202
                continue
            for request_id, result in found.items():
                for future in self.waiting.pop(request_id, []):
                    if not future.done():
                        future.set_result(result)

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()


WAITER = web.AppKey("waiter", ResultWaiter)


async def _submit(api: Api, caller: Caller, job: Job, request: web.Request) -> None:
    """Record the job, then publish its requests. A retried POST (same Idempotency-Key)
    publishes again: the gate drops the copies of requests that made it the first time."""
    await api.jobs.add(
        (caller.tenant, job.job_id, len(job.addresses), job.request_ids, job.smtp_probe)
    )
    priority = request.headers.get("X-Postwire-Priority", api.settings.api_priority).lower()
    if priority not in PRIORITIES:
        priority = api.settings.api_priority
    records = requests(job, tenant=caller.tenant, priority=priority, now=api.clock())
    await api.publish_requests(caller, records)


def _job_url(job_id: str) -> str:
    return f"/v1/verify/batch/{job_id}"


async def verify_one(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    key = idempotency_key(request)
    address, probe, wait = parse_single(await json_body(request), api.settings.api_verify_wait)
    job = plan(api.ids.job_id(caller.tenant, key), [address], probe)
    await _submit(api, caller, job, request)
    waiter = request.app[WAITER]
    result = await waiter.wait(job.job_id, wait) if wait > 0 else None
    if result is None:
        url = _job_url(job.job_id)
        return reply({"id": job.job_id, "status": "pending", "url": url}, 202, Location=url)
    return reply({"id": job.job_id, "status": "done", "result": result})


async def verify_batch(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    key = idempotency_key(request)
    addresses, probe = parse_batch(await json_body(request))
    job = plan(api.ids.job_id(caller.tenant, key), addresses, probe)
    await _submit(api, caller, job, request)
    url = _job_url(job.job_id)
    body = {"id": job.job_id, "status": "pending", "total": len(addresses), "url": url}
    return reply(body, 202, Location=url)


async def verify_job(api: Api, request: web.Request, caller: Caller) -> web.StreamResponse:
    """Progress and a page of results (``offset``, ``limit``) of a job, single or batch."""
    limit = params.limit(request.query, default=1000, maximum=10_000)
    offset = params.offset(request.query)
    async with api.db.acquire() as conn:
        found = await queries.job(conn, caller.tenant, request.match_info["job_id"])
        if found is None:
            return problem(404, ("job_id", "no verification job with this id"))
        ids = found.pop("request_ids")
        # a page changes only when a result lands: a client polling a job it already has gets
        # its 304 without the page being read (10,000 rows) or serialized
        version = version_tag(found["id"], found.pop("latest"), found["counts"], offset, limit)
        unchanged = not_modified(request, version)
        if unchanged is not None:
            return unchanged
        results = await queries.job_results(conn, caller.tenant, ids, offset=offset, limit=limit)
    following = offset + len(results)
    found["results"] = results
    found["next_offset"] = following if following < found["done"] else None
    return reply(found, ETag=version)
