"""The HTTP API on one port: SendGrid's mail/send, verification, message status, the event
feed and webhook, suppressions, domain authentication; ``/healthz``, ``/metrics``,
``/openapi.json``.

Keys are checked here against the same tenant directory the gate uses, so a bad key is a 401
rather than a dead letter; the requests published carry the key id and the ingress's signature,
and the gate checks both again (a key revoked meanwhile is refused there).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from streams.api.asm_routes import ASM_ROUTES
from streams.api.conditional import conditional_middleware
from streams.api.context import Api, Handler
from streams.api.mail import mail_send
from streams.api.openapi import SPEC
from streams.api.read_routes import event_feed, message_status, tracking_webhook
from streams.api.sender_routes import (
    RESOLVER,
    add_domain,
    delete_domain,
    get_domain,
    list_domains,
    validate_domain,
)
from streams.api.sendgrid_suppressions import NAMES as SUPPRESSION_LISTS
from streams.api.sendgrid_suppressions import delete_kind, delete_one, get_one, list_kind
from streams.api.suppression_routes import (
    add_suppressions,
    get_suppression,
    list_suppressions,
    remove_suppression,
)
from streams.api.track_routes import click_redirect, open_pixel
from streams.api.unsubscribe_routes import confirm_page, one_click_post
from streams.api.verify_routes import (
    WAITER,
    ResultWaiter,
    validate_email,
    verify_batch,
    verify_job,
    verify_one,
)
from streams.api.webhook_routes import (
    get_settings,
    get_signed,
    patch_settings,
    patch_signed,
    send_test,
)
from streams.kafka.config import client_options
from streams.mail.dns import MxResolver
from streams.obs import tracing
from streams.obs.health import Check, Probe, Verdict, verdict
from streams.obs.http import metrics_handler, metrics_middleware
from streams.obs.logs import configure_logging
from streams.runtime.eventloop import install_fast_loop, stop_on_signals
from streams.runtime.probes import kafka_probe, postgres_probe
from streams.settings import Settings

__all__ = ["ROUTES", "Ingress", "run_api"]

log = logging.getLogger(__name__)

TrackHandler = Callable[[Api, web.Request], Awaitable[web.StreamResponse]]

# (method, path, scope, handler): the scope an API key needs for the route
ROUTES: tuple[tuple[str, str, str, Handler], ...] = (
    ("POST", "/v3/mail/send", "send", mail_send),
    ("POST", "/v1/verify", "verify", verify_one),
    ("POST", "/v1/verify/batch", "verify", verify_batch),
    ("GET", "/v1/verify/batch/{job_id}", "verify", verify_job),
    ("POST", "/v3/validations/email", "verify", validate_email),
    ("GET", "/v1/messages/{message_id}", "read", message_status),
    ("GET", "/v1/events", "read", event_feed),
    ("POST", "/v1/events/webhook", "send", tracking_webhook),
    ("GET", "/v1/suppressions", "read", list_suppressions),
    ("POST", "/v1/suppressions", "send", add_suppressions),
    ("GET", "/v1/suppressions/{email}", "read", get_suppression),
    ("DELETE", "/v1/suppressions/{email}", "send", remove_suppression),
    # SendGrid's five suppression lists, views of the one suppressions table
    *(
        route
        for name in SUPPRESSION_LISTS
        for route in (
            ("GET", f"/v3/suppression/{name}", "read", list_kind),
            ("DELETE", f"/v3/suppression/{name}", "send", delete_kind),
            ("GET", f"/v3/suppression/{name}/{{email}}", "read", get_one),
            ("DELETE", f"/v3/suppression/{name}/{{email}}", "send", delete_one),
        )
    ),
    # SendGrid's suppression groups and global unsubscribes
    *ASM_ROUTES,
    ("POST", "/v3/whitelabel/domains", "send", add_domain),
    ("GET", "/v3/whitelabel/domains", "send", list_domains),
    ("GET", "/v3/whitelabel/domains/{id}", "send", get_domain),
    ("DELETE", "/v3/whitelabel/domains/{id}", "send", delete_domain),
    ("POST", "/v3/whitelabel/domains/{id}/validate", "send", validate_domain),
    ("GET", "/v3/user/webhooks/event/settings", "send", get_settings),
    ("PATCH", "/v3/user/webhooks/event/settings", "send", patch_settings),
    ("GET", "/v3/user/webhooks/event/settings/signed", "send", get_signed),
    ("PATCH", "/v3/user/webhooks/event/settings/signed", "send", patch_signed),
    ("POST", "/v3/user/webhooks/event/test", "send", send_test),
)


class Ingress(Api):
    probes: tuple[Probe, ...] = ()
    stopping = False

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.api_max_body,
            middlewares=[tracing.http_middleware, metrics_middleware, conditional_middleware],
        )
        for method, path, scope, handler in ROUTES:
            app.router.add_route(method, path, self.guard(scope, handler))
        # no API key: the token is the credential (streams/api/unsubscribe_routes.py)
        app.router.add_get("/u/{token}", self.unsubscribe_page)
        app.router.add_post("/u/{token}", self.unsubscribe_post)
        app.router.add_get("/t/o/{token}", self._tracking(open_pixel))
        app.router.add_get("/t/c/{token}", self._tracking(click_redirect))
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/livez", self.livez)
        app.router.add_get("/metrics", metrics_handler)
        app.router.add_get("/openapi.json", self.openapi)
        app[WAITER] = ResultWaiter(self)
        s = self.settings
        app[RESOLVER] = MxResolver(s.nameservers, s.dns_timeout, s.dns_tries)
        app.on_startup.append(self._start)
        app.on_shutdown.append(self._shutdown)
        app.on_cleanup.append(self._stop)
        return app

    def _tracking(self, handler: TrackHandler) -> Callable[[web.Request], Awaitable[Any]]:
        async def run(request: web.Request) -> web.StreamResponse:
            return await handler(self, request)

        return run

    async def _start(self, _app: web.Application) -> None:
        await self.start()
        s = self.settings
        self.probes = (
            kafka_probe(
                client_options(s.kafka), interval=s.health_interval, timeout=s.health_timeout
            ),
            postgres_probe(s.dsn, interval=s.health_interval, timeout=s.health_timeout),
        )
        for probe in self.probes:
            probe.start()

    async def _shutdown(self, _app: web.Application) -> None:
        self.stopping = True

    async def _stop(self, app: web.Application) -> None:
        self.stopping = True
        app[WAITER].stop()
        for probe in self.probes:
            await probe.stop()
        await self.stop()

    def readiness(self) -> Verdict:
        """Ready: the producer can produce, the pool and the directory are up, and Kafka and
        PostgreSQL (keys missing from the directory, reads, verify jobs) answer the probes."""
        producing, producer = self.producer.health()
        state = producer["state"]
        checks = [
            Check("api", not self.stopping, "api stopping"),
            Check("producer", producing, f"kafka producer {state}", producer),
            Check("database_pool", self.pool is not None, "database pool not started"),
            Check("directory_loaded", self.directory.ready.is_set(), "directory loaded: not yet"),
            *(p.check() for p in self.probes),
        ]
        if not self.probes:
            checks.append(Check("probes", False, "dependency probes not started"))
        return verdict(checks)

    async def unsubscribe_page(self, request: web.Request) -> web.Response:
        return await confirm_page(self, request)

    async def unsubscribe_post(self, request: web.Request) -> web.Response:
        return await one_click_post(self, request)

    async def healthz(self, _request: web.Request) -> web.Response:
        found = self.readiness()
        return web.json_response(found.body(), status=200 if found.ok else 503)

    async def livez(self, _request: web.Request) -> web.Response:
        alive = not self.stopping
        body = {"ok": alive, "pid": os.getpid()}
        return web.json_response(body, status=200 if alive else 503)

    async def openapi(self, _request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(SPEC), content_type="application/json")


def run_api(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM."""
    configure_logging(settings.logs, "api")
    tracing.setup(settings.tracing, "api")

    async def main() -> None:
        runner = web.AppRunner(Ingress(settings).app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, settings.api_host, settings.api_port)
        await site.start()
        log.info("ingress on http://%s:%d", settings.api_host, settings.api_port)
        stop = stop_on_signals()
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    install_fast_loop(kafka_tls=settings.kafka.security.tls)
    asyncio.run(main())
