"""What every API handler shares: the Kafka producer, the database pool, the tenant directory,
the ids it issues, and one guard that authenticates, rate-limits and turns errors into
SendGrid-shaped answers.

The caller's key stays here: a handler knows the caller by tenant and key id, and the requests it
publishes carry the key id and the ingress's signature (``streams/contract/signing.py``)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from aiokafka.errors import KafkaError

from streams.api.group_commit import GroupCommit
from streams.api.producer import IngressProducer
from streams.api.queries import JobRow, insert_jobs
from streams.contract.codec import Codec, default_codec
from streams.contract.ids import MessageIds
from streams.contract.records import EmailRequest
from streams.contract.signing import INGRESS_PURPOSE, ingress_headers
from streams.db.directory import DirectoryHolder
from streams.deliver.throttle import TokenBucket
from streams.errors import (
    AuthError,
    IngressValidationError,
    RecordTooLargeError,
    RequestTooLargeError,
)
from streams.kafka.config import client_options
from streams.kafka.limits import flow_topics
from streams.kafka.metadata import wait_for_cluster
from streams.obs import tracing
from streams.settings import Settings

__all__ = ["Api", "Caller", "Handler", "json_body", "problem", "reply"]

log = logging.getLogger(__name__)

BAD_GRANT = "The provided authorization grant is invalid, expired, or revoked"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who called: the tenant and the id of the key it presented (never the key)."""

    tenant: str
    key_id: str


Handler = Callable[["Api", web.Request, Caller], Awaitable[web.StreamResponse]]


def problem(status: int, *problems: tuple[str | None, str], **headers: str) -> web.Response:
    """SendGrid's error body: ``{"errors": [{"field", "message", "help"}]}``."""
    body = {"errors": [{"field": f, "message": m, "help": None} for f, m in problems]}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


def reply(body: Any, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


async def json_body(request: web.Request) -> Any:
    """The parsed JSON body; IngressValidationError when it is not JSON."""
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise IngressValidationError(
            [(None, f"the request body is not valid JSON: {exc}")]
        ) from exc


class Api:
    def __init__(
        self,
        settings: Settings,
        *,
        codec: Codec | None = None,
        directory: DirectoryHolder | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.settings = settings
        self.codec = codec or default_codec()
        self.directory = directory or DirectoryHolder(settings.database)
        self.clock = clock
        self.ids = MessageIds(settings.secret)
        self._signing_key = settings.secret.subkey(INGRESS_PURPOSE)
        options = client_options(settings.kafka)
        self.producer = IngressProducer(
            options,
            flow_topics(settings.topics),
            {
                **options,
                "acks": "all",
                "enable_idempotence": True,
                "linger_ms": 1,
                # one batch per partition and linger instead of a full 16 KB batch making send
                # wait; the record limit caps the batch and request sizes
            },
            timeout=settings.api_produce_timeout,
        )
        self.pool: asyncpg.Pool[Any] | None = None
        self.buckets: dict[tuple[str, str], TokenBucket] = {}
        self._refresher: asyncio.Task[None] | None = None
        self.jobs: GroupCommit[JobRow] = GroupCommit(self._write_jobs)

    async def start(self) -> None:
        await wait_for_cluster(self.producer.client, self.settings.kafka.start_wait)
        await self.producer.start()
        self.pool = await asyncpg.create_pool(
            self.settings.dsn, min_size=1, max_size=self.settings.api_db_pool
        )
        await self.directory.refresh()
        self._refresher = asyncio.create_task(self.directory.refresh_forever())

    async def _write_jobs(self, rows: Sequence[JobRow]) -> None:
        async with self.db.acquire() as conn:
            await insert_jobs(conn, rows)

    async def stop(self) -> None:
        await self.jobs.close()
        if self._refresher is not None:
            self._refresher.cancel()
        await self.producer.stop()
        if self.pool is not None:
            await self.pool.close()
        await self.directory.close()

    @property
    def db(self) -> asyncpg.Pool[Any]:
        if self.pool is None:
            raise OSError("the database pool is not started")
        return self.pool

    async def authorize(self, request: web.Request, scope: str) -> Caller:
        """The caller of a ``Bearer <API key>`` request; AuthError when it is not good."""
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthError("auth.missing_key", "no Authorization: Bearer <API key> header")
        key = key.strip()
        found = self.directory.current.by_secret(key) or await self.directory.lookup_miss(key)
        if found is None:
            raise AuthError("auth.bad_key", BAD_GRANT)
        self.directory.current.authorize(found, found.tenant_id, scope)
        return Caller(found.tenant_id, found.key_id)

    def over_rate(self, tenant: str, scope: str) -> float:
        """Seconds to wait before the tenant's next request; 0 when it may go now. Each scope
        has its own bucket, so polling for status never eats into the sending rate."""
        bucket = self.buckets.get((tenant, scope))
        if bucket is None:
            bucket = TokenBucket(self.settings.api_rate, self.settings.api_burst)
            self.buckets[(tenant, scope)] = bucket
        return bucket.take(time.monotonic())

    async def publish(
        self,
        topic: str,
        records: Sequence[tuple[bytes, bytes | None]],
        headers: Sequence[list[tuple[str, bytes]]] = (),
    ) -> None:
        """Produce (key, value) records (with ``headers[i]`` for the i-th, if given) and wait
        until Kafka acknowledged all of them; a record too large for the pipeline raises
        RecordTooLargeError before any is sent."""
        with tracing.producer_span(topic, len(records)):
            # each record carries the publish span (the request's trace goes on at the gate)
            await self.producer.send_all(
                topic,
                [
                    (key, value, tracing.with_context(headers[i] if headers else ()))
                    for i, (key, value) in enumerate(records)
                ],
            )

    async def publish_requests(self, caller: Caller, records: Sequence[EmailRequest]) -> None:
        """The caller's requests onto ``requests``, each signed by the ingress for its key id."""
        tenant, key_id, signing_key = caller.tenant, caller.key_id, self._signing_key
        values = [self.codec.encode("EmailRequest", r) for r in records]
        total = sum(map(len, values))
        if total > self.settings.api_max_body:
            raise RequestTooLargeError(len(values), total, self.settings.api_max_body)
        headers = [
            ingress_headers(v, tenant=tenant, key_id=key_id, ingress_key=signing_key)
            for v in values
        ]
        key = tenant.encode()
        await self.publish(self.settings.topics.requests, [(key, v) for v in values], headers)

    def guard(self, scope: str, handler: Handler) -> Callable[[web.Request], Awaitable[Any]]:
        """The aiohttp handler: authenticate for ``scope``, rate-limit per tenant, run, and
        answer every expected failure with its status instead of a 500."""

        async def run(request: web.Request) -> web.StreamResponse:
            try:
                caller = await self.authorize(request, scope)
            except AuthError as exc:
                if exc.code == "auth.scope":
                    return problem(403, (None, str(exc)))
                return problem(401, (None, BAD_GRANT))
            wait = self.over_rate(caller.tenant, scope)
            if wait > 0:
                retry = str(max(1, math.ceil(wait)))
                return problem(429, (None, "too many requests"), **{"Retry-After": retry})
            try:
                return await handler(self, request, caller)
            except IngressValidationError as exc:
                return problem(400, *exc.problems)
            except web.HTTPRequestEntityTooLarge:
                limit = self.settings.api_max_body
                return problem(413, (None, f"the request body is larger than {limit} bytes"))
            except RequestTooLargeError as exc:
                return problem(413, ("personalizations", str(exc)))
            except RecordTooLargeError as exc:
                # what Kafka would refuse, or the gate could not pass on: never sent
                return problem(
                    413, (None, f"{exc}; store large attachments elsewhere and link them")
                )
            except (KafkaError, TimeoutError) as exc:
                # nothing is promised: the caller retries (safely, with an Idempotency-Key)
                log.warning("api: Kafka did not acknowledge %s: %s", request.path, exc)
                return problem(503, (None, "the request could not be stored; retry"))
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("api: the database is unavailable for %s: %s", request.path, exc)
                return problem(503, (None, "the database is unavailable; retry"))

        return run
