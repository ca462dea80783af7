"""One transaction per batch: COPY each table's rows into a session temp table, then
``INSERT ... SELECT ... ON CONFLICT`` on the natural key, so replays change nothing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from sinks.batching import Batch
from sinks.tables import REJECTION_COLUMNS, TableSpec
from streams.errors import SinkUnavailableError

__all__ = ["PostgresWriter", "newest_per_key", "upsert_sql"]

_REJECTIONS_KEY = ("source_topic", "source_partition", "source_offset")
log = logging.getLogger("postwire.sinks")
# the row is at fault, not the database: retrying the batch would fail forever
ROW_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
# (table, origin of the row, the error) -> a rejections row, or None to skip with a log line
DeadLetter = Callable[[str, Any, Exception], tuple[Any, ...] | None]


def upsert_sql(
    table: str,
    columns: tuple[str, ...],
    key: tuple[str, ...],
    update: tuple[str, ...],
    newest: str | None = None,
) -> str:
    # identifiers come from the TableSpec constants in sinks/tables.py, never from input
    cols, keys = ", ".join(columns), ", ".join(key)
    if update:
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in update)
        # DISTINCT ON: a key twice in one batch would make ON CONFLICT DO UPDATE fail
        select = f"SELECT DISTINCT ON ({keys}) {cols} FROM _pw_{table}"  # noqa: S608
        conditions = [f"{table}.{newest} <= EXCLUDED.{newest}"] if newest else []
        if "tenant_id" in columns and "tenant_id" not in key:
            # a row one tenant owns is never changed by a record about another tenant (a
            # message id is unguessable, and the doors check ownership; this is the last line)
            conditions.append(f"{table}.tenant_id = EXCLUDED.tenant_id")
        guard = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        return (
            f"INSERT INTO {table} ({cols}) {select} "
            f"ON CONFLICT ({keys}) DO UPDATE SET {sets}{guard}"
        )
    return (
        f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _pw_{table} "  # noqa: S608
        f"ON CONFLICT ({keys}) DO NOTHING"
    )


def newest_per_key(
    rows: list[tuple[Any, ...]], columns: tuple[str, ...], key: tuple[str, ...], newest: str | None
) -> list[tuple[Any, ...]]:
    """One row per key: the newest by ``newest`` (ties: the later one), else the last one."""
    at = [columns.index(k) for k in key]
    by = columns.index(newest) if newest else None
    kept: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for row in rows:
        k = tuple(row[i] for i in at)
        old = kept.get(k)
        if old is None or by is None or row[by] >= old[by]:
            kept[k] = row
    return list(kept.values())


class PostgresWriter:
    def __init__(self, dsn: str, specs: dict[str, TableSpec]) -> None:
        self.dsn = dsn
        self._columns = {name: (s.columns, s.key, s.update, s.newest) for name, s in specs.items()}
        # every sink may dead-letter rows it cannot map into rejections
        self._columns.setdefault("rejections", (REJECTION_COLUMNS, _REJECTIONS_KEY, (), None))
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

    async def write(self, batch: Batch, dead_letter: DeadLetter | None = None) -> dict[str, int]:
        """Write the batch in one transaction. If a row is bad (a value PostgreSQL refuses), write
        the batch again row by row, each under a savepoint, and dead-letter the rows that fail,
        still in one transaction: one poison record never blocks a partition.

        Returns the rows each table reported inserted or updated (a replay of rows already there
        reports 0, except where ``update`` lets an equally new row overwrite its twin)."""
        if not batch.rows:
            return {}
        await self.start()
        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn:
                try:
                    async with conn.transaction():
                        return {
                            table: await self._upsert(conn, table, rows)
                            for table, rows in batch.rows.items()
                        }
                except ROW_ERRORS as exc:
                    log.warning("a batch holds a bad row (%s); writing it row by row", exc)
                    return await self._write_each(conn, batch, dead_letter)
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

    async def _upsert(self, conn: Any, table: str, rows: list[tuple[Any, ...]]) -> int:
        columns, key, update, newest = self._columns[table]
        if update:
            rows = newest_per_key(rows, columns, key, newest)
        await conn.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS _pw_{table} "
            f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        await conn.copy_records_to_table(f"_pw_{table}", records=rows, columns=columns)
        status = await conn.execute(upsert_sql(table, columns, key, update, newest))
        # rows stay in the temp table until commit; a savepoint-per-row pass must not see them
        await conn.execute(f"TRUNCATE _pw_{table}")
        return int(str(status).rsplit(" ", 1)[-1])  # "INSERT 0 <rows>"

    async def _write_each(
        self, conn: Any, batch: Batch, dead_letter: DeadLetter | None
    ) -> dict[str, int]:
        rejected: list[tuple[Any, ...]] = []
        written: dict[str, int] = {}
        async with conn.transaction():
            for table, rows in batch.rows.items():
                origins = batch.origins.get(table) or [None] * len(rows)
                for row, origin in zip(rows, origins, strict=True):
                    try:
                        async with conn.transaction():
                            changed = await self._upsert(conn, table, [row])
                        written[table] = written.get(table, 0) + changed
                    except ROW_ERRORS as exc:
                        dead = dead_letter(table, origin, exc) if dead_letter else None
                        if dead is None or table == "rejections":
                            log.exception("dropping a %s row PostgreSQL refuses", table)
                        else:
                            rejected.append(dead)
            if rejected:
                changed = await self._upsert(conn, "rejections", rejected)
                written["rejections"] = written.get("rejections", 0) + changed
        return written

    async def _reset(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()
