"""`postwire replay --stage verify`: run the stage's own per-record code (streams/stages/verify.py
``process``) over a time range of its input topic, outside faust, under a consumer group of its
own (``<app_id>-replay-verify-<unix time>``), committing after each batch's outputs are
acknowledged, and stop at the end of the range. The live group is never joined, so its offsets
and its members are untouched."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any, cast

import asyncpg
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from streams.codec import default_codec
from streams.deadletter import SourcePosition
from streams.errors import SinkUnavailableError, StackError
from streams.replay.plan import ReplaySummary, replay_group, stage_input
from streams.replay.reader import Progress, Records, open_consumer, plan_offsets, read_range
from streams.settings import Settings
from streams.stages.shell import Clock, DirectoryHolder, Outputs, wall_clock
from streams.tenants import load_directory

__all__ = ["replay_stage"]


class _Producer:
    """What ``Outputs`` expects of faust's producer, on a plain aiokafka producer; it counts what
    each topic was sent and keeps the delivery futures, so a failed send is not missed."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self.sent: dict[str, int] = {}
        self._pending: list[asyncio.Future[Any]] = []

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: int | None,
        headers: Mapping[str, bytes] | None,
    ) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = await self.producer.send(
            topic,
            value,
            key=key,
            partition=partition,
            timestamp_ms=timestamp,
            headers=list(headers.items()) if headers else None,
        )
        self.sent[topic] = self.sent.get(topic, 0) + 1
        self._pending.append(future)
        return future

    async def settle(self) -> None:
        """Wait until Kafka acknowledged everything sent so far (acks=all); raise if it did not."""
        await self.producer.flush()
        pending, self._pending = self._pending, []
        await asyncio.gather(*pending)


class _App:
    """The one attribute of a faust app that ``Outputs`` uses."""

    def __init__(self, producer: _Producer) -> None:
        self.producer = producer


async def _directory(settings: Settings) -> DirectoryHolder:
    """The live tenant directory (the verify stage checks suppressions), loaded once."""
    holder = DirectoryHolder(settings)
    try:
        conn = await asyncpg.connect(settings.dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise SinkUnavailableError(f"cannot connect to PostgreSQL: {exc}", retry_after=1.0) from exc
    try:
        holder.current = await load_directory(conn, settings)
    finally:
        await conn.close()
    holder.ready.set()
    return holder


async def replay_stage(
    settings: Settings,
    stage: str,
    start: datetime,
    end: datetime,
    progress: Progress,
    clock: Clock = wall_clock,
) -> ReplaySummary:
    from streams.stages.verify import build_verifier, process

    topic = stage_input(stage, settings.topics)
    began = time.monotonic()
    group = replay_group(settings.app_id, stage, clock())
    codec = default_codec()
    # fresh caches: a replay re-resolves MX hosts (and re-probes where a task asked for it)
    verifier = build_verifier(settings, {}, {}, await _directory(settings))
    consumer = await open_consumer(settings, group_id=group)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=settings.producer_linger_ms,
    )
    shim = _Producer(producer)
    # Outputs is typed for a faust app but uses only its producer
    outputs = Outputs(cast(Any, _App(shim)), settings, codec)
    limit = asyncio.Semaphore(settings.verify_concurrency)

    async def one(msg: Any) -> None:
        async with limit:
            source = SourcePosition(msg.topic, msg.partition, msg.offset)
            await process(codec, verifier, outputs, clock, msg.key, msg.value, source)

    async def handle(records: Records) -> None:
        await asyncio.gather(*(one(msg) for msg in records))
        await shim.settle()
        done: dict[TopicPartition, int] = {}
        for msg in records:
            tp = TopicPartition(msg.topic, msg.partition)
            done[tp] = max(done.get(tp, 0), msg.offset + 1)
        await consumer.commit(done)

    try:
        await producer.start()
        name, ranges = await plan_offsets(consumer, settings, topic, start, end)
        summary = ReplaySummary(name, "stage", start, end, ranges, stage=stage, group=group)
        summary.records = await read_range(consumer, name, ranges, handle, progress)
        # the end of every range, also where its last offsets held no record
        ends = {TopicPartition(name, r.partition): r.end for r in ranges if r.count > 0}
        if ends:
            await consumer.commit(ends)
    except KafkaError as exc:
        raise StackError(f"replaying {stage} failed: {exc}") from exc
    finally:
        await consumer.stop()
        await producer.stop()
    summary.produced = dict(shim.sent)
    summary.dead_lettered = shim.sent.get(settings.topics.rejections, 0)
    summary.seconds = time.monotonic() - began
    return summary
