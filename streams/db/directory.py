"""The tenant directory a process serves from: a snapshot of tenants, keys, suppressions,
templates and sender identities reloaded from PostgreSQL every ``directory_refresh`` s, with
lookups for keys created and senders verified since the last reload. Free of faust, so the API
and the batch runtime share it.

Given ``key_secret`` (the gate is), the holder opens the API keys' sealed copies into memory at
each load; the API, which finds keys by the digest of what callers present, is not given it."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg

from streams.db.config import DatabaseSettings
from streams.db.senders import load_senders
from streams.db.tenants import ApiKey, Directory, api_key_digest, load_credentials, load_directory
from streams.secret import ServerSecret

__all__ = ["DirectoryHolder"]

log = logging.getLogger("postwire.directory")
MISS_MEMORY = 1.0
MISS_LOOKUPS_PER_SECOND = 50


class _Budget:
    """At most ``per_second`` takes in any one-second slot."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._slot = 0
        self._used = 0

    def take(self, now: float) -> bool:
        slot = int(now)
        if slot != self._slot:
            self._slot, self._used = slot, 0
        if self._used >= self.per_second:
            return False
        self._used += 1
        return True


class DirectoryHolder:
    """The current tenant directory, reloaded from PostgreSQL every ``directory_refresh`` s.

    ``key_secret``: open the API keys' sealed copies too (the gate, which checks signatures);
    ``dkim_secret``: open the tenants' DKIM keys too (only the processes that sign mail)."""

    def __init__(
        self,
        database: DatabaseSettings,
        *,
        key_secret: ServerSecret | None = None,
        dkim_secret: ServerSecret | None = None,
    ) -> None:
        self.database = database
        self.key_secret = key_secret
        self.dkim_secret = dkim_secret
        self.current = Directory()
        self.ready = asyncio.Event()
        self.refreshed_at: float | None = None  # monotonic time of the last snapshot loaded
        self._pool: asyncpg.Pool[Any] | None = None
        # key digest or key id -> monotonic time it was not found
        self._misses: dict[bytes | str, float] = {}
        self._lookups = _Budget(MISS_LOOKUPS_PER_SECOND)
        # a budget of its own: a flood of bad bearer tokens (no authentication needed to send
        # one) must not turn a newly verified sender away
        self._sender_budget = _Budget(MISS_LOOKUPS_PER_SECOND)
        self._sender_lookups: dict[str, float] = {}  # tenant -> monotonic time last looked up
        self._sender_pending: dict[str, asyncio.Future[bool]] = {}  # lookups under way

    async def _connections(self) -> asyncpg.Pool[Any]:
        if self._pool is None:
            self._pool = await asyncpg.create_pool(self.database.dsn, min_size=1, max_size=1)
        return self._pool

    async def lookup_miss(self, api_key: str) -> ApiKey | None:
        """Fetch one key the snapshot lacks (a key created a moment ago must work at once) and
        add it with its tenant; the key when found, else None. A digest not found is not looked
        up again for ``MISS_MEMORY`` s, and lookups are capped per second, so a flood of bad keys
        cannot hammer PostgreSQL."""
        digest = api_key_digest(api_key)
        return await self._lookup(digest, key_sha256=digest)

    async def lookup_key_id(self, key_id: str, *, vouched: bool = False) -> ApiKey | None:
        """``lookup_miss`` for the key id a signed record names (the gate's lookup).
        ``vouched``: the ingress signed the record, so the key exists and the lookup is owed
        whatever the miss memory and the budget say (a forger cannot make such records)."""
        return await self._lookup(key_id, key_id=key_id, vouched=vouched)

    async def _lookup(
        self,
        marker: bytes | str,
        *,
        key_sha256: bytes | None = None,
        key_id: str | None = None,
        vouched: bool = False,
    ) -> ApiKey | None:
        now = time.monotonic()
        recently_missed = now - self._misses.get(marker, -MISS_MEMORY) < MISS_MEMORY
        if not vouched and (recently_missed or not self._lookups.take(now)):
            return None
        try:
            async with (await self._connections()).acquire() as conn:
                found = await load_credentials(
                    conn,
                    self.database.tenant_defaults,
                    key_sha256=key_sha256,
                    key_id=key_id,
                    secret=self.key_secret,
                )
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("api key lookup failed: %s", exc)
            return None
        if found is None:
            if len(self._misses) > 100_000:
                self._misses.clear()
            self._misses[marker] = now
            return None
        key, tenant = found
        self.current.add_key(key)
        self.current.tenants[tenant.tenant_id] = tenant
        return key

    async def lookup_senders(self, tenant: str, *, vouched: bool = False) -> bool:
        """Reload one tenant's verified senders (and keys) that the snapshot may lack: a sender
        verified a moment ago must work at once. True when that changed what the snapshot
        holds. A tenant is looked up at most once per ``MISS_MEMORY`` s, within a per-second
        budget, so a flood of forged From addresses cannot hammer PostgreSQL; ``vouched`` (the
        ingress signed the request, having found the sender) skips both."""
        pending = self._sender_pending.get(tenant)
        if pending is not None:
            # a request arriving while another one's lookup runs shares its answer instead of
            # being turned away by the lookup memory
            return await asyncio.shield(pending)
        now = time.monotonic()
        if not vouched:
            if now - self._sender_lookups.get(tenant, -MISS_MEMORY) < MISS_MEMORY:
                return False
            if not self._sender_budget.take(now):
                return False
        if len(self._sender_lookups) > 100_000:
            self._sender_lookups.clear()
        self._sender_lookups[tenant] = now
        pending = asyncio.get_running_loop().create_future()
        self._sender_pending[tenant] = pending
        changed = False
        try:
            changed = await self._lookup_senders(tenant)
        finally:
            del self._sender_pending[tenant]
            pending.set_result(changed)
        return changed

    async def _lookup_senders(self, tenant: str) -> bool:
        try:
            async with (await self._connections()).acquire() as conn:
                found = await load_senders(conn, self.dkim_secret, tenant)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("sender lookup failed: %s", exc)
            return False
        fresh = found.get(tenant)
        if fresh == self.current.senders.get(tenant):
            return False
        if fresh is None:
            self.current.senders.pop(tenant, None)
        else:
            self.current.senders[tenant] = fresh
        return True

    async def _load(self, conn: Any) -> Directory:
        return await load_directory(
            conn, self.database.tenant_defaults, self.dkim_secret, key_secret=self.key_secret
        )

    async def refresh(self) -> None:
        try:
            async with (await self._connections()).acquire() as conn:
                self.current = await self._load(conn)
            self.refreshed_at = time.monotonic()
            self.ready.set()
        except (OSError, asyncpg.PostgresError) as exc:
            # keep serving the last snapshot; a gate without any snapshot waits on `ready`
            log.warning("tenant directory refresh failed, keeping the previous one: %s", exc)

    async def refresh_forever(self) -> None:
        """The refresh loop of a process without faust timers (the API)."""
        while True:
            await asyncio.sleep(self.database.directory_refresh)
            await self.refresh()

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def preload(self) -> None:
        """Load the first snapshot before the worker consumes anything (blocking, own loop).

        Requests that arrive while a fresh worker recovers its tables would otherwise wait on
        ``ready`` inside the agent, and faust's seek to the committed offsets at the end of
        recovery can leave such a stream stalled."""

        async def load() -> None:
            conn = await asyncpg.connect(self.database.dsn)
            try:
                self.current = await self._load(conn)
            finally:
                await conn.close()

        try:
            asyncio.run(load())
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("tenant directory not loaded at start, the gate waits for it: %s", exc)
            return
        self.refreshed_at = time.monotonic()
        self.ready.set()

    def age(self) -> float | None:
        """Seconds since the snapshot in use was loaded (None: none yet)."""
        return None if self.refreshed_at is None else time.monotonic() - self.refreshed_at
