"""`postwire replay --into-sinks`: re-apply a time range of a topic to PostgreSQL through the same
mapping (sinks/mapping.py) and the same idempotent writer (sinks/writer.py) as the live sink."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import asyncpg

from sinks.batching import Batch, BatchBuffer
from sinks.mapping import dead_letter_row, map_record, origin_of
from sinks.tables import TableSpec, sink_feeds
from sinks.writer import PostgresWriter
from streams.contract.codec import default_codec
from streams.errors import NotReplayableError, SinkUnavailableError
from streams.replay.plan import ReplaySummary
from streams.replay.reader import Progress, Records, open_consumer, plan_offsets, read_range
from streams.settings import Settings

__all__ = ["replay_into_sinks", "sink_specs_for"]

WRITE_ATTEMPTS = 5


def sink_specs_for(topic: str, specs: dict[str, TableSpec]) -> list[TableSpec]:
    """Every table the live sinks build from ``topic`` (``events`` feeds two)."""
    chosen = [s for s in specs.values() if s.topic == topic]
    if not chosen:
        sunk = ", ".join(sorted({s.topic for s in specs.values()}))
        raise NotReplayableError(f"no sink reads {topic}; the sinks read {sunk}")
    return chosen


async def count_rows(dsn: str, tables: list[str]) -> dict[str, int]:
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise SinkUnavailableError(f"cannot connect to PostgreSQL: {exc}", retry_after=1.0) from exc
    try:
        # table names come from the TableSpec constants, never from input
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}")) for t in tables}  # noqa: S608
    finally:
        await conn.close()


class _Apply:
    """Map each record with every spec of its topic, buffer, write a batch per transaction."""

    def __init__(self, settings: Settings, specs: list[TableSpec], summary: ReplaySummary) -> None:
        self.specs = specs
        self.summary = summary
        self.codec = default_codec()
        self.writer = PostgresWriter(settings.dsn, {s.table: s for s in specs})
        self.buffer = BatchBuffer(settings.sink_batch_size, float("inf"))

    async def add(self, records: Records) -> None:
        for msg in records:
            dead = False
            for spec in self.specs:
                mapped = map_record(spec, self.codec, msg)
                if mapped.dead_lettered:
                    # one record, one dead letter, however many tables it feeds
                    if dead:
                        continue
                    dead = True
                    self.summary.dead_lettered += 1
                if mapped.row is not None:
                    self.summary.rows[mapped.table] = self.summary.rows.get(mapped.table, 0) + 1
                self.buffer.add(
                    msg.partition, msg.offset, mapped.table, mapped.row, 0.0, origin_of(msg)
                )
        if len(self.buffer) >= self.buffer.max_rows:
            await self.flush()

    def _dead_letter(self, table: str, origin: Any, exc: Exception) -> tuple[Any, ...] | None:
        row = dead_letter_row(table, origin, exc)
        if row is not None:
            self.summary.dead_lettered += 1
        return row

    async def flush(self) -> None:
        batch = self.buffer.take()
        if batch.rows:
            for table, changed in (await self._write(batch)).items():
                self.summary.changed[table] = self.summary.changed.get(table, 0) + changed

    async def _write(self, batch: Batch) -> dict[str, int]:
        delay, attempt = 0.5, 1
        while True:
            try:
                return await self.writer.write(batch, self._dead_letter)
            except SinkUnavailableError as exc:
                # unlike the live sink, a replay has someone waiting: give up after a few tries
                if attempt >= WRITE_ATTEMPTS:
                    raise
                await asyncio.sleep(max(delay, exc.retry_after))
                delay, attempt = delay * 2, attempt + 1


async def replay_into_sinks(
    settings: Settings, topic: str, start: datetime, end: datetime, progress: Progress
) -> ReplaySummary:
    began = time.monotonic()
    consumer = await open_consumer(settings)
    try:
        name, ranges = await plan_offsets(consumer, settings, topic, start, end)
        specs = sink_specs_for(name, sink_feeds(settings))
        tables = list(dict.fromkeys([*(s.table for s in specs), "rejections"]))
        summary = ReplaySummary(name, "into-sinks", start, end, ranges)
        summary.before = await count_rows(settings.dsn, tables)
        apply = _Apply(settings, specs, summary)
        try:
            summary.records = await read_range(consumer, name, ranges, apply.add, progress)
            await apply.flush()
        finally:
            await apply.writer.close()
        summary.after = await count_rows(settings.dsn, tables)
    finally:
        await consumer.stop()
    summary.seconds = time.monotonic() - began
    return summary
