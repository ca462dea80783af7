from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from streams.contract.signing import sign
from streams.db.dkim_keys import DkimKeyInfo
from streams.db.tenants import api_key_digest, create_api_key, create_tenant
from streams.deliver.senders import add_sender, rotate_key
from streams.settings import Settings
from tests.conftest import SENDER_DOMAIN
from tests.peers.world import World

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
    settings: Settings,
    prefix: str = "tenant",
    settle: bool = False,
    senders: tuple[str, ...] = (SENDER_DOMAIN,),
) -> tuple[str, str]:
    """A fresh tenant and API key, allowed to send from ``senders`` (the suite's mail comes from
    acme.example: the operator vouches for it for every test tenant, shared, without a DKIM
    key; `install_dkim_key` adds one). ``settle``: wait for the gate's directory refresh too (a
    brand-new key or sender is otherwise looked up on first use, which also works)."""
    tenant = f"{prefix}-{uuid.uuid4().hex[:6]}"
    conn = await asyncpg.connect(settings.dsn)
    try:
        await create_tenant(conn, tenant)
        _, key = await create_api_key(conn, tenant, secret=settings.secret)
        for sender in senders:
            await add_sender(
                conn, settings.secret, tenant, sender, dkim=None, operator=True, shared=True
            )
    finally:
        await conn.close()
    if settle:
        await asyncio.sleep(settings.directory_refresh * 2)
    return tenant, key


async def install_dkim_key(
    settings: Settings, world: World, tenant: str, domain: str = SENDER_DOMAIN
) -> DkimKeyInfo:
    """A new RSA key of the tenant's ``domain`` (sealed in PostgreSQL, as `postwire dkim keygen`
    makes it), its public half served by the world's DNS under the key's own selector."""
    conn = await asyncpg.connect(settings.dsn)
    try:
        key = await rotate_key(conn, settings.secret, tenant, domain, "rsa")
    finally:
        await conn.close()
    world.dns.zone.txt[key.record_name] = key.public_txt
    # every worker's directory holds the key before the test sends (a rotation signs from the
    # next refresh; the tenant's senders were known before, so nothing looks it up earlier)
    await asyncio.sleep(settings.directory_refresh * 2)
    return key


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


async def sendgrid_call(endpoint: Any, method: str, **kw: Any) -> tuple[int, Any]:
    """One call of the official ``sendgrid`` client (blocking) on a thread: its status and its
    parsed body; a 429 (the stack's tight test rate) waits and retries."""
    from python_http_client.exceptions import TooManyRequestsError

    while True:
        try:
            response = await asyncio.to_thread(getattr(endpoint, method), **kw)
            break
        except TooManyRequestsError:
            await asyncio.sleep(1.0)
    body = response.body
    return response.status_code, json.loads(body) if body else None
