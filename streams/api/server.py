"""The HTTP ingress: SendGrid's ``POST /v3/mail/send`` onto ``postwire.requests``.

A 202 means Kafka (acks=all) has the request: from there the pipeline owns it. Keys are checked
here against the same tenant directory the gate uses (the gate checks again), so a bad key is a
401 rather than a dead letter.
"""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.api.openapi import SPEC
from streams.api.sendgrid import message_id_for, translate
from streams.codec import Codec, default_codec
from streams.deliver.throttle import TokenBucket
from streams.errors import AuthError, IngressValidationError
from streams.settings import Settings
from streams.stages.shell import DirectoryHolder
from streams.tenants import hash_key

__all__ = ["Ingress", "run_api"]

log = logging.getLogger(__name__)

MAX_IDEMPOTENCY_KEY = 255
_BAD_GRANT = "The provided authorization grant is invalid, expired, or revoked"


def _errors(status: int, *problems: tuple[str | None, str], **headers: str) -> web.Response:
    """SendGrid's error body: ``{"errors": [{"field", "message", "help"}]}``."""
    body = {"errors": [{"field": f, "message": m, "help": None} for f, m in problems]}
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


class Ingress:
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
        self.directory = directory or DirectoryHolder(settings)
        self.clock = clock
        self.producer: AIOKafkaProducer | None = None
        self.buckets: dict[str, TokenBucket] = {}
        self._refresher: asyncio.Task[None] | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.settings.api_max_body)
        app.router.add_post("/v3/mail/send", self.mail_send)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/openapi.json", self.openapi)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _app: web.Application) -> None:
        self.producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=1,
            max_request_size=self.settings.api_max_body + 1024 * 1024,
        )
        await self.producer.start()
        await self.directory.refresh()
        self._refresher = asyncio.create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.directory_refresh)
            await self.directory.refresh()

    async def _stop(self, _app: web.Application) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        if self.producer is not None:
            await self.producer.stop()

    async def healthz(self, _request: web.Request) -> web.Response:
        ok = self.producer is not None and self.directory.ready.is_set()
        return web.json_response({"ok": ok}, status=200 if ok else 503)

    async def openapi(self, _request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(SPEC), content_type="application/json")

    async def _tenant(self, request: web.Request, operation: str) -> tuple[str, str]:
        """(tenant, key) for the request's bearer key; AuthError when it is not good."""
        header = request.headers.get("Authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthError("auth.missing_key", "no Authorization: Bearer <API key> header")
        key = key.strip()
        found = self.directory.current.keys.get(hash_key(key))
        if found is None and await self.directory.lookup_miss(key):
            found = self.directory.current.keys.get(hash_key(key))
        if found is None:
            raise AuthError("auth.bad_key", _BAD_GRANT)
        self.directory.current.authenticate(found.tenant_id, key, operation)
        return found.tenant_id, key

    def _over_rate(self, tenant: str) -> float:
        bucket = self.buckets.get(tenant)
        if bucket is None:
            bucket = TokenBucket(self.settings.api_rate, self.settings.api_burst)
            self.buckets[tenant] = bucket
        return bucket.take(time.monotonic())

    async def mail_send(self, request: web.Request) -> web.Response:
        try:
            tenant, key = await self._tenant(request, "send")
        except AuthError as exc:
            status = 403 if exc.code == "auth.scope" else 401
            return _errors(status, (None, _BAD_GRANT if status == 401 else str(exc)))
        wait = self._over_rate(tenant)
        if wait > 0:
            return _errors(
                429,
                (None, "too many requests"),
                **{"Retry-After": str(max(1, math.ceil(wait)))},
            )
        idempotency_key = request.headers.get("Idempotency-Key")
        if idempotency_key is not None and not 0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY:
            return _errors(400, ("Idempotency-Key", "must be 1 to 255 characters"))
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = self.settings.api_max_body
            return _errors(413, (None, f"the request body is larger than {limit} bytes"))
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _errors(400, (None, f"the request body is not valid JSON: {exc}"))
        message_id = message_id_for(tenant, idempotency_key)
        priority = request.headers.get("X-Postwire-Priority", self.settings.api_priority)
        try:
            records = translate(
                body,
                tenant=tenant,
                api_key=key,
                message_id=message_id,
                idempotency_key=idempotency_key,
                priority=priority.lower(),
                now=self.clock(),
            )
        except IngressValidationError as exc:
            return _errors(400, *exc.problems)
        try:
            await self._publish(tenant, records)
        except (KafkaError, TimeoutError) as exc:
            # nothing is promised: the caller retries (safely, with an Idempotency-Key)
            log.warning("ingress: Kafka did not acknowledge %s: %s", message_id, exc)
            return _errors(503, (None, "the request could not be stored; retry"))
        return web.Response(status=202, headers={"X-Message-Id": message_id})

    async def _publish(self, tenant: str, records: list[dict[str, Any]]) -> None:
        producer = self.producer
        if producer is None:
            raise KafkaError("the producer is not started")
        topic = self.settings.topics.requests
        sends = [
            await producer.send(topic, self.codec.encode("EmailRequest", r), key=tenant.encode())
            for r in records
        ]
        async with asyncio.timeout(self.settings.api_produce_timeout):
            await asyncio.gather(*sends)


def run_api(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM."""

    async def main() -> None:
        runner = web.AppRunner(Ingress(settings).app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.api_host, settings.api_port)
        await site.start()
        log.info("ingress on http://%s:%d", settings.api_host, settings.api_port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    asyncio.run(main())
