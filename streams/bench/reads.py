"""`postwire bench reads`: what ETags and gzip save on a large read, a verify job page of 10,000
results served by the real API from the rows the pipeline wrote.

A job of ``addresses`` addresses goes through the whole verify pipeline (API, gate, verify with
a loopback DNS server, sinks); then the same page is fetched three ways, each ``rounds`` times:
in full and uncompressed (the answer before ETags and gzip), in full with gzip, and revalidated
with ``If-None-Match`` (304, no body). Bytes are counted on the wire (before the client
decompresses)."""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from streams.bench.dns_server import ZoneServer, bench_zone
from streams.bench.load_stack import wait_healthy
from streams.bench.stacks import bench_settings
from streams.db.tenants import create_api_key, create_tenant
from streams.errors import BenchError
from streams.stack.stack import Stack

__all__ = ["ReadWay", "ReadsBenchResult", "run_reads_bench"]

DOMAINS = 50


@dataclass(frozen=True)
class ReadWay:
    name: str
    status: int
    wire_bytes: int
    p50_ms: float
    max_ms: float


@dataclass
class ReadsBenchResult:
    results: int
    ways: list[ReadWay]

    def way(self, name: str) -> ReadWay:
        return next(w for w in self.ways if w.name == name)


async def _fetch(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], rounds: int
) -> tuple[int, int, list[float]]:
    """(status, bytes on the wire, latencies in ms) of ``rounds`` GETs of ``url``."""
    latencies: list[float] = []
    status = size = 0
    for _ in range(rounds):
        began = time.perf_counter()
        async with session.get(url, headers=headers, auto_decompress=False) as r:
            raw = await r.read()
            status, size = r.status, len(raw)
        latencies.append((time.perf_counter() - began) * 1000)
    return status, size, latencies


async def _job_done(session: aiohttp.ClientSession, url: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        async with session.get(f"{url}?limit=1") as r:
            body = await r.json()
        if body.get("status") == "done":
            return body
        await asyncio.sleep(0.5)
    raise BenchError(
        f"the verify job was not done within {timeout:.0f}s: {body.get('done')} of"
        f" {body.get('total')} results"
    )


async def run_reads_bench(addresses: int, rounds: int, progress: Any = None) -> ReadsBenchResult:
    say = progress or (lambda _m: None)
    data_dir = Path(tempfile.mkdtemp(prefix="postwire-bench-reads-"))
    dns = ZoneServer(bench_zone(DOMAINS), host="127.0.0.1")
    dns.start()
    settings = bench_settings(data_dir, dns_nameservers=dns.nameserver)
    stack = Stack(settings, workers=True)
    api = stack.process("api", "api")
    try:
        await stack.start(detach=False)
        conn = await asyncpg.connect(settings.dsn)
        try:
            await create_tenant(conn, "bench")
            _, key = await create_api_key(conn, "bench", secret=settings.secret)
        finally:
            await conn.close()
        api.start(detach=False)
        await wait_healthy(settings.api_base)
        emails = [f"user{i}@d{i % DOMAINS}.bench.example" for i in range(addresses)]
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.post(
                f"{settings.api_base}/v1/verify/batch", json={"emails": emails, "smtp_probe": False}
            ) as r:
                if r.status != 202:
                    raise BenchError(f"the API answered {r.status}: {await r.text()}")
                job = await r.json()
            url = f"{settings.api_base}{job['url']}"
            say(f"verifying {addresses:,} addresses through the pipeline")
            await _job_done(session, url, timeout=600)
            page = f"{url}?limit={addresses}"
            ways: list[ReadWay] = []
            plain = {"Accept-Encoding": "identity"}
            status, size, ms = await _fetch(session, page, plain, rounds)
            ways.append(ReadWay("full, identity", status, size, statistics.median(ms), max(ms)))
            gzip = {"Accept-Encoding": "gzip"}
            status, size, ms = await _fetch(session, page, gzip, rounds)
            ways.append(ReadWay("full, gzip", status, size, statistics.median(ms), max(ms)))
            async with session.get(page, headers=gzip, auto_decompress=False) as r:
                etag = r.headers["ETag"]
                await r.read()
            status, size, ms = await _fetch(session, page, {**gzip, "If-None-Match": etag}, rounds)
            ways.append(ReadWay("If-None-Match", status, size, statistics.median(ms), max(ms)))
    finally:
        await asyncio.to_thread(api.stop)
        await asyncio.to_thread(stack.stop)
        dns.stop()
        await asyncio.to_thread(shutil.rmtree, data_dir, True)
    return ReadsBenchResult(addresses, ways)
