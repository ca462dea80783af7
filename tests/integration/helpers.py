from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from streams.db.tenants import create_api_key, create_tenant
from streams.settings import Settings

T = TypeVar("T")


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
        _, key = await create_api_key(conn, tenant)
    finally:
        await conn.close()
    if settle:
        await asyncio.sleep(settings.directory_refresh * 2)
    return tenant, key
