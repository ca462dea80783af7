"""``SELECT 1`` on a fresh connection, for the health probe. Fresh, because a frozen postmaster
(SIGSTOP, a paused VM) leaves the backends of open connections answering while no new
connection can be made, and a pool busy with handlers is not PostgreSQL being away."""

from __future__ import annotations

import asyncpg

__all__ = ["PostgresPing"]


class PostgresPing:
    """Call it to check PostgreSQL takes a new connection and answers; it raises otherwise.
    The caller bounds the wait (``Probe`` does); a connection cut short is terminated, never
    waited on."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def __call__(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.fetchval("SELECT 1")
        except BaseException:
            conn.terminate()
            raise
        await conn.close(timeout=1.0)
