"""/metrics and the HTTP middleware over real HTTP on loopback, with a small app of our own
(what the ingress mounts), and the stand-alone metrics server the sinks process runs."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from streams.errors import ConfigError
from streams.obs.http import metrics_app, metrics_handler, metrics_middleware, serve


async def _item(request: web.Request) -> web.Response:
    return web.json_response({"id": request.match_info["item_id"]})


async def _refuse(_request: web.Request) -> web.Response:
    raise web.HTTPTooManyRequests()


async def _crash(_request: web.Request) -> web.Response:
    raise RuntimeError("boom")


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
async def base() -> AsyncIterator[str]:
    app = web.Application(middlewares=[metrics_middleware])
    app.router.add_get("/items/{item_id}", _item)
    app.router.add_post("/refuse", _refuse)
    app.router.add_get("/crash", _crash)
    app.router.add_get("/metrics", metrics_handler)
    runner = await serve(app, "127.0.0.1", 0)
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_requests_are_counted_by_route_pattern_method_and_status(base: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/metrics") as r:
            before = await r.text()
        for item in ("a1", "b2", "c3"):
            async with http.get(f"{base}/items/{item}") as r:
                assert r.status == 200
        async with http.post(f"{base}/refuse") as r:
            assert r.status == 429
        async with http.get(f"{base}/crash") as r:
            assert r.status == 500
        async with http.get(f"{base}/no/such/page") as r:
            assert r.status == 404
        async with http.request("TRACE", f"{base}/items/x") as r:
            assert r.status == 405
        async with http.get(f"{base}/metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=")
            after = await r.text()

    def moved(**labels: str) -> float:
        name = "postwire_http_requests_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved(route="/items/{item_id}", method="GET", status="200") == 3
    assert moved(route="/refuse", method="POST", status="429") == 1
    assert moved(route="/crash", method="GET", status="500") == 1
    assert moved(route="unmatched", method="GET", status="404") == 1
    assert moved(route="unmatched", method="OTHER", status="405") == 1
    # the path itself, with its ids, never becomes a label value
    assert "a1" not in after
    assert "/no/such/page" not in after
    seconds = "postwire_http_request_seconds_count"
    assert (
        value(after, seconds, route="/items/{item_id}")
        - value(before, seconds, route="/items/{item_id}")
        == 3
    )


async def test_openmetrics_is_served_when_the_scraper_asks_for_it(base: str) -> None:
    accept = "application/openmetrics-text; version=1.0.0"
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{base}/metrics", headers={"Accept": accept}) as r,
    ):
        assert r.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await r.text()).rstrip().endswith("# EOF")


async def test_the_stand_alone_server_answers_health_by_its_check() -> None:
    healthy = {"ok": True}
    app = metrics_app(lambda: (healthy["ok"], {"sinks": {"requests": "running"}}))
    runner = await serve(app, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
                assert await r.json() == {"ok": True, "sinks": {"requests": "running"}}
            healthy["ok"] = False
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 503
            async with http.get(f"{base}/livez") as r:  # alive whatever readiness says
                assert r.status == 200
                assert (await r.json())["ok"] is True
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
                assert (
                    value(
                        text,
                        "postwire_http_requests_total",
                        route="/healthz",
                        method="GET",
                        status="503",
                    )
                    >= 1
                )
    finally:
        await runner.cleanup()


async def test_a_port_in_use_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="cannot serve metrics"):
            await serve(metrics_app(lambda: (True, {})), "127.0.0.1", port)
