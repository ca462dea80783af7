"""/metrics, /healthz and /livez on a faust worker's own web server (``web_port``).

faust serves ``/`` ({"status": "OK"} once its web server runs) and JSON statistics, but nothing
Prometheus reads and no answer that turns 503 when the worker cannot do its job; these pages
add that. ``/healthz`` (ready): the worker runs and every check holds (each stage assigned and
recovered, the directory loaded, Kafka answering); ``/livez`` (alive): the event loop answers
and the worker is not stopping, whatever its dependencies say."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from streams.obs.health import Check, Verdict, verdict
from streams.obs.http import metrics_handler

__all__ = ["install_pages", "worker_health", "worker_live"]

Checks = Callable[[], Iterable[Check]]


def _faust(app: Any) -> dict[str, Any]:
    return {
        "state": str(app.state),
        "rebalancing": bool(app.rebalancing),
        "recovering": bool(getattr(app, "in_recovery", False)),
    }


def worker_health(app: Any, checks: Checks) -> Verdict:
    """Ready: the app runs (not crashed, not stopping) and every check holds."""
    running = bool(app.started) and not app.should_stop
    state = "stopping" if app.should_stop else "starting"
    found = [Check("worker", running, f"worker {state}", _faust(app)), *checks()]
    return verdict(found)


def worker_live(app: Any) -> tuple[bool, dict[str, Any]]:
    alive = not app.should_stop and not getattr(app, "crashed", False)
    return alive, {"ok": alive, "pid": os.getpid(), "state": str(app.state)}


def install_pages(app: Any, checks: Checks | None = None) -> None:
    """Add the pages to ``app`` (before the worker starts its web server)."""
    named: Checks = checks or (lambda: ())

    async def metrics(_view: Any, request: Any) -> Any:
        return await metrics_handler(request)

    async def healthz(view: Any, _request: Any) -> Any:
        found = worker_health(app, named)
        return view.json(found.body(), status=200 if found.ok else 503)

    async def livez(view: Any, _request: Any) -> Any:
        alive, body = worker_live(app)
        return view.json(body, status=200 if alive else 503)

    app.page("/metrics", name="postwire-metrics")(metrics)
    app.page("/healthz", name="postwire-healthz")(healthz)
    app.page("/livez", name="postwire-livez")(livez)
