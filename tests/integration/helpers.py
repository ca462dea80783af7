from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from streams.contract.signing import sign
from streams.db.tenants import api_key_digest, create_api_key, create_tenant
from streams.settings import Settings

T = TypeVar("T")
Headers = list[tuple[str, bytes]]


async def eventually(
    probe: Callable[[], Awaitable[T]], done: Callable[[T], bool], timeout: float = 60.0
) -> T:
    """Poll ``probe`` until ``done`` holds; return the last value either way so the caller's
    assert shows what was there."""
    deadline = time.monotonic() + timeout
    value = await probe()
    while not done(value) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        value = await probe()
    return value


async def new_tenant(
    settings: Settings, prefix: str = "tenant", settle: bool = False
) -> tuple[str, str]:
    """A fresh tenant and API key. ``settle``: wait for the gate's directory refresh too (a
    brand-new key is otherwise looked up on first use, which also works)."""
    tenant = f"{prefix}-{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(settings.dsn)
    try:
        await create_tenant(conn, tenant)
        _, key = await create_api_key(conn, tenant, secret=settings.secret)
    finally:
        await conn.close()
    if settle:
        await asyncio.sleep(settings.directory_refresh * 2)
    return tenant, key


async def key_id_of(settings: Settings, key: str) -> str:
    """The id of an API key (a direct producer is configured with both)."""
    conn = await asyncpg.connect(settings.dsn)
    try:
        key_id = await conn.fetchval(
            "SELECT key_id FROM api_keys WHERE key_sha256 = $1", api_key_digest(key)
        )
    finally:
        await conn.close()
    if key_id is None:
        raise LookupError("no such API key")
    return str(key_id)


async def signer(settings: Settings, tenant: str, key: str) -> Callable[[bytes], Headers]:
    """What a direct producer of ``tenant`` holding ``key`` attaches to each record value: the
    signing headers."""
    key_id = await key_id_of(settings, key)

    def headers(value: bytes) -> Headers:
        return sign(value, tenant=tenant, key_id=key_id, api_key=key)

    return headers
