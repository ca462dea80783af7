"""Fixtures of the HTTP API tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from streams.settings import Settings
from tests.integration.api_client import ApiClient, healthy_client


@pytest.fixture
async def api(stack: Settings) -> AsyncIterator[ApiClient]:
    """A client of the session stack's API, without a key (``api.as_key(key)`` adds one)."""
    async with aiohttp.ClientSession() as session:
        yield await healthy_client(stack.api_base, session)


@pytest.fixture
async def db(stack: Settings) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(stack.dsn)
    yield conn
    await conn.close()
