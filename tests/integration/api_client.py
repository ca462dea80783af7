"""A small client of the HTTP API for tests: real requests over loopback."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDict

from tests.integration.helpers import eventually


@dataclass
class Answer:
    status: int
    headers: CIMultiDict[str]  # names compare case-insensitively, as HTTP's do
    body: Any


@dataclass
class ApiClient:
    session: aiohttp.ClientSession
    base: str
    key: str | None = None

    def as_key(self, key: str | None) -> ApiClient:
        return ApiClient(self.session, self.base, key)

    async def call(
        self, method: str, path: str, body: Any = None, *, patient: bool = True, **headers: str
    ) -> Answer:
        """One request; ``patient`` waits out a 429 as a well-behaved client does."""
        if self.key is not None:
            headers.setdefault("Authorization", f"Bearer {self.key}")
        data = body if isinstance(body, bytes) else None
        json = None if isinstance(body, bytes) else body
        while True:
            async with self.session.request(
                method, f"{self.base}{path}", json=json, data=data, headers=headers
            ) as r:
                payload = await r.json() if r.content_type == "application/json" else None
                answer = Answer(r.status, CIMultiDict(r.headers), payload)
            if answer.status != 429 or not patient:
                return answer
            await asyncio.sleep(float(answer.headers.get("Retry-After", "1")))

    async def until(self, path: str, done: Any, timeout: float = 60.0) -> Answer:
        """GET ``path`` until ``done(answer)``; the last answer either way."""

        async def probe() -> Answer:
            return await self.call("GET", path)

        return await eventually(probe, done, timeout=timeout)


async def healthy_client(base: str, session: aiohttp.ClientSession) -> ApiClient:
    client = ApiClient(session, base)

    async def healthy() -> bool:
        try:
            return (await client.call("GET", "/healthz")).status == 200
        except aiohttp.ClientError:
            return False

    assert await eventually(healthy, bool, timeout=60)
    return client
