"""aiohttp pieces for /metrics and /healthz: the handler and middleware the ingress mounts, and
the small server the sinks process runs (faust workers serve theirs through faust's web, see
``streams/worker/web.py``)."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.aiohttp import make_aiohttp_handler

from streams.errors import ConfigError
from streams.obs.metrics import HTTP_REQUESTS, HTTP_SECONDS

__all__ = [
    "Health",
    "alive",
    "health_handler",
    "metrics_app",
    "metrics_handler",
    "metrics_middleware",
    "route_of",
    "serve",
]

# Prometheus text (or OpenMetrics when the scraper asks for it) of this process's registry
metrics_handler: Callable[[web.Request], Awaitable[web.StreamResponse]] = make_aiohttp_handler(
    REGISTRY, disable_compression=True
)

# a client can send any method name; a label value must not be up to the client
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_of(request: web.Request) -> str:
    """The route pattern that matched (``/v3/messages/{id}``), never the path itself: paths
    carry ids and scanners' junk, and every distinct value would be a series of its own."""
    resource = request.match_info.route.resource
    return UNMATCHED if resource is None else resource.canonical


@web.middleware
async def metrics_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Count and time every request by route, method and status, errors included."""
    started = time.perf_counter()
    status = 500  # an exception that is not an HTTP answer becomes a 500 in aiohttp
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        status = exc.status
        raise
    else:
        status = response.status
        return response
    finally:
        route = route_of(request)
        method = request.method if request.method in _METHODS else "OTHER"
        HTTP_REQUESTS.labels(route, method, str(status)).inc()
        HTTP_SECONDS.labels(route).observe(time.perf_counter() - started)


# a health check: (healthy, details for the body)
Health = Callable[[], tuple[bool, Mapping[str, Any]]]


def health_handler(health: Health) -> _Handler:
    async def healthz(_request: web.Request) -> web.Response:
        ok, details = health()
        return web.json_response({"ok": ok, **details}, status=200 if ok else 503)

    return healthz


def metrics_app(health: Health, live: Health | None = None) -> web.Application:
    """/metrics, /healthz (ready) and /livez (alive), for a process that has no web server of
    its own; ``live`` unset: alive while it answers."""
    app = web.Application(middlewares=[metrics_middleware])
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", health_handler(health))
    app.router.add_get("/livez", health_handler(live or alive))
    return app


def alive() -> tuple[bool, Mapping[str, Any]]:
    """The event loop answered this request: the process is alive."""
    return True, {"pid": os.getpid()}


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start ``app`` on ``host:port``; the caller stops it with ``await runner.cleanup()``."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
    return runner
