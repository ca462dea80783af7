"""/metrics and /healthz on a faust worker's own web server (``web_port``).

faust serves ``/`` ({"status": "OK"} once its web server runs, which is after the first table
recovery) and JSON statistics, but nothing Prometheus reads and no health answer that turns
503 when the worker cannot do its job; these two pages add that."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from streams.obs.http import metrics_handler

__all__ = ["install_pages", "worker_health"]

Check = Callable[[], bool]


def worker_health(app: Any, checks: Mapping[str, Check]) -> tuple[bool, dict[str, Any]]:
    """Healthy: the app runs (not crashed, not stopping) and every named check holds (the
    tenant directory is loaded, the queue-control feed has been read)."""
    results = {name: bool(check()) for name, check in checks.items()}
    running = bool(app.started) and not app.should_stop
    details: dict[str, Any] = {
        "state": str(app.state),
        "rebalancing": bool(app.rebalancing),
        "recovering": bool(getattr(app, "in_recovery", False)),
        **results,
    }
    return running and all(results.values()), details


def install_pages(app: Any, checks: Mapping[str, Check] | None = None) -> None:
    """Add the pages to ``app`` (before the worker starts its web server)."""
    named = dict(checks or {})

    async def metrics(_view: Any, request: Any) -> Any:
        return await metrics_handler(request)

    async def healthz(view: Any, _request: Any) -> Any:
        ok, details = worker_health(app, named)
        return view.json({"ok": ok, **details}, status=200 if ok else 503)

    app.page("/metrics", name="postwire-metrics")(metrics)
    app.page("/healthz", name="postwire-healthz")(healthz)
