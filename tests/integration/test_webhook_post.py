"""The poster against a real aiohttp server on loopback: what each answer (or none) becomes,
and that private addresses are refused unless allowed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from sendgrid.helpers.eventwebhook import EventWebhook

from streams.webhooks.post import Poster
from streams.webhooks.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, EndpointKey, generate_key
from tests.conftest import free_port

PAYLOAD = b'[{"email":"a@b.example","event":"processed","sg_event_id":"e1","timestamp":1}]'


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[web.Request], list[bytes]]]:
    seen: list[web.Request] = []
    bodies: list[bytes] = []
    hang = asyncio.Event()

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        bodies.append(await request.read())
        kind = request.match_info["kind"]
        if kind == "hang":
            await hang.wait()
        if kind == "redirect":
            raise web.HTTPFound("/ok")
        return web.Response(status=500 if kind == "fail" else 200)

    app = web.Application()
    app.router.add_post("/{kind}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", seen, bodies
    finally:
        hang.set()
        await runner.cleanup()


async def test_each_answer_becomes_its_outcome(
    server: tuple[str, list[web.Request], list[bytes]],
) -> None:
    base, seen, bodies = server
    key = EndpointKey(generate_key())
    poster = Poster(0.5, allow_private=True)
    try:
        ok = await poster.post(f"{base}/ok", PAYLOAD, key, 1_765_000_000)
        assert ok.ok
        assert ok.status == 200
        request = seen[-1]
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers[TIMESTAMP_HEADER] == "1765000000"
        assert bodies[-1] == PAYLOAD
        assert EventWebhook(key.public_key).verify_signature(
            bodies[-1].decode(), request.headers[SIGNATURE_HEADER], "1765000000"
        )
        failed = await poster.post(f"{base}/fail", PAYLOAD, None, 1)
        assert (failed.outcome, failed.status) == ("rejected", 500)
        assert failed.reason.startswith("HTTP 500")
        assert SIGNATURE_HEADER not in seen[-1].headers  # unsigned endpoint
        moved = await poster.post(f"{base}/redirect", PAYLOAD, None, 1)
        assert (moved.outcome, moved.status) == ("rejected", 302)
        assert len(seen) == 3  # the redirect was not followed
        hung = await poster.post(f"{base}/hang", PAYLOAD, None, 1)
        assert hung.outcome == "timeout"
        assert 0.4 < hung.seconds < 2.0
        closed = await poster.post(f"http://127.0.0.1:{free_port()}/x", PAYLOAD, None, 1)
        assert closed.outcome == "refused"
    finally:
        await poster.close()


async def test_private_addresses_are_refused_unless_allowed(
    server: tuple[str, list[web.Request], list[bytes]],
) -> None:
    base, seen, _ = server
    poster = Poster(1.0)
    try:
        literal = await poster.post(f"{base}/ok", PAYLOAD, None, 1)
        assert literal.outcome == "refused"
        assert "not a public address" in literal.reason
        port = base.rsplit(":", 1)[1]
        named = await poster.post(f"http://localhost:{port}/ok", PAYLOAD, None, 1)
        assert named.outcome == "refused"
        assert "no public address" in named.reason
        mapped = await poster.post(f"http://[::ffff:127.0.0.1]:{port}/ok", PAYLOAD, None, 1)
        assert mapped.outcome == "refused"
        assert seen == []  # nothing reached the server
    finally:
        await poster.close()
