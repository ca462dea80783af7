"""Reading exactly a planned offset range per partition with a plain aiokafka consumer: partitions
assigned by hand (no group membership, so no rebalance touches anyone), offsets located with the
broker's time index (``offsets_for_times``)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streams.errors import StackError
from streams.kafka.config import client_options
from streams.kafka.connect import start_client
from streams.replay.plan import PartitionRange, RangeTracker, plan_ranges, resolve_topic, to_ms
from streams.settings import Settings

__all__ = ["Progress", "open_consumer", "plan_offsets", "read_range"]

Progress = Callable[[int, int], None]  # (offsets done, offsets in the range)
Records = list[ConsumerRecord[bytes, bytes]]
# a partition that yields nothing for this long while short of its end offset is stuck
STALL_SECONDS = 60.0


async def open_consumer(settings: Settings, group_id: str | None = None) -> AIOKafkaConsumer:
    options = client_options(settings.kafka)
    consumer = AIOKafkaConsumer(
        **options,
        group_id=group_id,
        enable_auto_commit=False,
        # a start offset deleted by retention since planning: begin at what is left
        auto_offset_reset="earliest",
        max_poll_records=settings.sink_batch_size,
    )
    try:
        await start_client(consumer, options)
    except KafkaError as exc:
        await consumer.stop()
        raise StackError(f"cannot reach Kafka at {settings.bootstrap}: {exc}") from exc
    return consumer


async def _partitions(settings: Settings, topic: str) -> tuple[str, list[int]]:
    """The topic's full name and its partitions (the consumer's metadata only covers topics it
    was given, so ask the cluster)."""
    options = client_options(settings.kafka)
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=10000)
    try:
        await start_client(admin, options)
        name = resolve_topic(topic, settings.topic_prefix, await admin.list_topics())
        described = await admin.describe_topics([name])
    except KafkaError as exc:
        raise StackError(f"cannot describe {topic} on {settings.bootstrap}: {exc}") from exc
    finally:
        await admin.close()
    found = [p["partition"] for t in described if t["topic"] == name for p in t["partitions"]]
    return name, sorted(found)


async def plan_offsets(
    consumer: AIOKafkaConsumer, settings: Settings, topic: str, start: datetime, end: datetime
) -> tuple[str, list[PartitionRange]]:
    """The topic's full name and, per partition, the offsets stamped in [start, end)."""
    name, partitions = await _partitions(settings, topic)
    tps = [TopicPartition(name, p) for p in partitions]
    try:
        high = await consumer.end_offsets(tps)
        first = await consumer.offsets_for_times({tp: to_ms(start) for tp in tps})
        after = await consumer.offsets_for_times({tp: to_ms(end) for tp in tps})
    except KafkaError as exc:
        raise StackError(f"cannot read the offsets of {name}: {exc}") from exc
    ranges = plan_ranges(
        {tp.partition: (found.offset if found else None) for tp, found in first.items()},
        {tp.partition: (found.offset if found else None) for tp, found in after.items()},
        {tp.partition: high[tp] for tp in tps},
    )
    return name, ranges


async def read_range(
    consumer: AIOKafkaConsumer,
    topic: str,
    ranges: list[PartitionRange],
    handle: Callable[[Records], Awaitable[None]],
    progress: Progress,
) -> int:
    """Hand every record of the ranges to ``handle``, one fetch at a time, in offset order per
    partition; return how many. Progress counts offsets whose records ``handle`` returned from."""
    tracker = RangeTracker(r for r in ranges if r.count > 0)
    tps = {p: TopicPartition(topic, p) for p in tracker.ranges}
    if not tps:
        progress(0, 0)
        return 0
    consumer.assign(list(tps.values()))
    for p, tp in tps.items():
        consumer.seek(tp, tracker.ranges[p].start)
    handled = 0
    moved_at = time.monotonic()
    progress(0, tracker.total)
    while tracker.pending:
        try:
            fetched = await consumer.getmany(*(tps[p] for p in tracker.pending), timeout_ms=1000)
            records = [
                msg
                for tp, batch in fetched.items()
                for msg in batch
                if tracker.wanted(tp.partition, msg.offset)
            ]
            if records:
                await handle(records)
                handled += len(records)
            before = tracker.done
            for p in tracker.pending:
                # the position covers offsets without records; it can pass the end, the
                # tracker clamps it
                tracker.advance(p, await consumer.position(tps[p]))
        except KafkaError as exc:
            raise StackError(f"reading {topic} failed: {exc}") from exc
        if tracker.done > before or records:
            moved_at = time.monotonic()
        elif time.monotonic() - moved_at > STALL_SECONDS:
            stuck = ", ".join(f"{p} at {tracker.position[p]}" for p in tracker.pending)
            raise StackError(f"reading {topic} stalled (partition {stuck}) for {STALL_SECONDS}s")
        finished = [tps[p] for p in tracker.ranges if tracker.finished(p)]
        if finished:
            consumer.pause(*finished)
        progress(tracker.done, tracker.total)
    return handled
