"""One transaction per batch: COPY each table's rows into a session temp table, then
``INSERT ... SELECT ... ON CONFLICT`` on the natural key, so replays change nothing."""

from __future__ import annotations

from typing import Any

import asyncpg

from sinks.batching import Batch
from sinks.tables import REJECTION_COLUMNS, TableSpec
from streams.errors import SinkUnavailableError

__all__ = ["PostgresWriter", "upsert_sql"]

_REJECTIONS_KEY = ("source_topic", "source_partition", "source_offset")


def upsert_sql(
    table: str, columns: tuple[str, ...], key: tuple[str, ...], update: tuple[str, ...]
) -> str:
    # identifiers come from the TableSpec constants in sinks/tables.py, never from input
    cols, keys = ", ".join(columns), ", ".join(key)
    if update:
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in update)
        # DISTINCT ON: a key twice in one batch would make ON CONFLICT DO UPDATE fail
        select = f"SELECT DISTINCT ON ({keys}) {cols} FROM _pw_{table}"  # noqa: S608
        return f"INSERT INTO {table} ({cols}) {select} ON CONFLICT ({keys}) DO UPDATE SET {sets}"
    return (
        f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _pw_{table} "  # noqa: S608
        f"ON CONFLICT ({keys}) DO NOTHING"
    )


class PostgresWriter:
    def __init__(self, dsn: str, specs: dict[str, TableSpec]) -> None:
        self.dsn = dsn
        self._columns = {name: (s.columns, s.key, s.update) for name, s in specs.items()}
        # every sink may dead-letter rows it cannot map into rejections
        self._columns.setdefault("rejections", (REJECTION_COLUMNS, _REJECTIONS_KEY, ()))
        self._pool: asyncpg.Pool[Any] | None = None

    async def start(self) -> None:
        if self._pool is None:
            try:
                self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=2)
            except (OSError, asyncpg.PostgresError) as exc:
                raise SinkUnavailableError(
                    f"cannot connect to PostgreSQL: {exc}", retry_after=1.0
                ) from exc

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def write(self, batch: Batch) -> None:
        if not batch.rows:
            return
        await self.start()
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                for table, rows in batch.rows.items():
                    columns, key, update = self._columns[table]
                    await conn.execute(
                        f"CREATE TEMP TABLE IF NOT EXISTS _pw_{table} "
                        f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                    )
                    await conn.copy_records_to_table(f"_pw_{table}", records=rows, columns=columns)
                    await conn.execute(upsert_sql(table, columns, key, update))
        except (
            OSError,
            asyncpg.InterfaceError,
            asyncpg.PostgresConnectionError,
            asyncpg.CannotConnectNowError,
            asyncpg.AdminShutdownError,
            TimeoutError,
        ) as exc:
            # the pool may hold dead connections; start over on the next attempt
            await self._reset()
            raise SinkUnavailableError(f"PostgreSQL unavailable: {exc}", retry_after=1.0) from exc

    async def _reset(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()
