"""``SELECT 1`` on a connection of its own, for the health probe: a pool busy with handlers is
not PostgreSQL being away, and a frozen server must not hold one of their connections."""

from __future__ import annotations

from typing import Any

import asyncpg

__all__ = ["PostgresPing"]


class PostgresPing:
    """Call it to check PostgreSQL answers; it raises otherwise. The caller bounds the wait
    (``Probe`` does); a check that failed or was cut short drops its connection, so the next
    one starts clean."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: asyncpg.Connection[Any] | None = None

    async def __call__(self) -> None:
        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self.dsn)
            await self._conn.fetchval("SELECT 1")
        except BaseException:
            self.drop()
            raise

    def drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()  # never waits on the server

    async def close(self) -> None:
        self.drop()
