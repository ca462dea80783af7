"""Rebuild stores from their changelogs: read each assigned changelog partition from its beginning
up to the end offset taken when recovery starts, and stop there.

Done means *position reached the end offset*, never "saw the record at end - 1": compaction and
retention leave gaps, so a record at a given offset may never arrive (the faust recovery hang,
faust-streaming #597/#651). A recovery that makes no progress for ``stall_timeout`` raises
instead of waiting forever, so the process exits and its supervisor restarts it."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.errors import RecoveryStalledError
from streams.kafka.connect import start_client
from streams.runtime.state import Store

__all__ = ["recover"]

log = logging.getLogger("postwire.runtime")


async def recover(
    client: Mapping[str, Any],
    stores: Iterable[Store],
    partitions: Iterable[int],
    *,
    stall_timeout: float = 60.0,
) -> int:
    """Reload ``partitions`` of every store; return the number of changelog records read.
    ``client``: the options of ``streams.kafka.config.client_options``."""
    by_tp: dict[TopicPartition, Store] = {}
    parts = sorted(set(partitions))
    for store in stores:
        for p in parts:
            by_tp[TopicPartition(store.topic, p)] = store
            store.begin_recovery(p)
    if not by_tp:
        return 0
    # earliest: with no group there is no committed offset, and a reset to "latest" that is
    # still pending would win over a seek made right after assign() (seen with aiokafka 0.14)
    consumer = AIOKafkaConsumer(
        **client,
        enable_auto_commit=False,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await start_client(consumer, client)
    read = 0
    try:
        consumer.assign(list(by_tp))
        ends = await consumer.end_offsets(list(by_tp))
        for tp, start in (await consumer.beginning_offsets(list(by_tp))).items():
            consumer.seek(tp, start)
        todo = {tp for tp, end in ends.items() if end > 0}
        last_progress = time.monotonic()
        while todo:
            fetched = await consumer.getmany(*todo, timeout_ms=500, max_records=10_000)
            read += _restore(fetched, by_tp, ends)
            if fetched:
                last_progress = time.monotonic()
            for tp in list(todo):
                if await consumer.position(tp) >= ends[tp]:
                    todo.discard(tp)
            if todo and time.monotonic() - last_progress > stall_timeout:
                raise _stalled(todo, stall_timeout)
    finally:
        await consumer.stop()
    if read:
        log.info("recovered %d changelog records for partitions %s", read, parts)
    return read


def _restore(
    fetched: Mapping[TopicPartition, Sequence[Any]],
    by_tp: Mapping[TopicPartition, Store],
    ends: Mapping[TopicPartition, int],
) -> int:
    """Put fetched changelog records (up to each partition's end at the start) into their
    stores; returns how many."""
    read = 0
    for tp, records in fetched.items():
        store = by_tp[tp]
        for rec in records:
            if rec.offset < ends[tp]:
                store.restore(tp.partition, rec.key, rec.value)
                read += 1
    return read


def _stalled(todo: Iterable[TopicPartition], stall_timeout: float) -> RecoveryStalledError:
    names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(todo))
    return RecoveryStalledError(
        f"state recovery made no progress for {stall_timeout:.0f}s on {names}"
    )
