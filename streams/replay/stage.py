"""`postwire replay --stage verify`: drive the stage object the live worker runs
(streams/stages/verify.py ``VerifyStage``) over a time range of its input topic, under a consumer
group of its own (``<app_id>-replay-verify-<unix time>``), committing after each batch's outputs are
acknowledged, and stop at the end of the range. The live group is never joined, so its offsets
and its members are untouched."""

from __future__ import annotations

import time
from datetime import datetime

import asyncpg
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from streams.clock import Clock, wall_clock
from streams.contract.codec import default_codec
from streams.db.directory import DirectoryHolder
from streams.db.tenants import load_directory
from streams.errors import SinkUnavailableError, StackError
from streams.kafka.config import client_options
from streams.replay.plan import ReplaySummary, replay_group, stage_input
from streams.replay.reader import Progress, Records, open_consumer, plan_offsets, read_range
from streams.runtime.producer import BatchProducer
from streams.runtime.records import Consumed
from streams.settings import Settings

__all__ = ["replay_stage"]


async def _directory(settings: Settings) -> DirectoryHolder:
    """The live tenant directory (the verify stage checks suppressions), loaded once."""
    holder = DirectoryHolder(settings.database)
    try:
        conn = await asyncpg.connect(settings.dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise SinkUnavailableError(f"cannot connect to PostgreSQL: {exc}", retry_after=1.0) from exc
    try:
        holder.current = await load_directory(conn, settings.database.tenant_defaults)
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
    from streams.stages.verify import VerifyStage, build_verifier

    topic = stage_input(stage, settings.topics)
    began = time.monotonic()
    group = replay_group(settings.app_id, stage, clock())
    # fresh caches and no store: a replay re-resolves MX hosts (and re-probes where asked)
    verifier = build_verifier(settings.verify, await _directory(settings))
    runtime_stage = VerifyStage(
        default_codec(),
        settings.topics,
        verifier,
        None,
        concurrency=settings.verify_concurrency,
    )
    consumer = await open_consumer(settings, group_id=group)
    producer = BatchProducer(client_options(settings.kafka), linger_ms=settings.producer_linger_ms)

    async def handle(records: Records) -> None:
        batch = [
            Consumed(m.topic, m.partition, m.offset, m.key, m.value, tuple(m.headers or ()))
            for m in records
        ]
        step = await runtime_stage.process(batch, clock())
        await producer.settle(await producer.send(step.outputs))
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
    summary.produced = dict(producer.sent)
    summary.dead_lettered = producer.sent.get(settings.topics.rejections, 0)
    summary.seconds = time.monotonic() - began
    return summary
