"""Rebuild stores from their changelogs: read each assigned changelog partition up to the end
offset taken when recovery starts, and stop there. A table kept on disk whose mark can be
trusted (``streams.runtime.checkpoint``) is read from its mark on; any other is emptied and read
from the changelog's start.

Done means *position reached the end offset*, never "saw the record at end - 1": compaction and
retention leave gaps, so a record at a given offset may never arrive (the faust recovery hang,
faust-streaming #597/#651), and a changelog whose start moved past the mark (retention,
deleteRecords while the worker was down) is read from its new start. A recovery that makes no
progress for ``stall_timeout`` raises instead of waiting forever, so the process exits and its
supervisor restarts it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.errors import RecoveryStalledError
from streams.kafka.connect import start_client
from streams.runtime.checkpoint import Mark, Resume, resume_from
from streams.runtime.state import Store
from streams.runtime.tables import Table, TableBusyError

__all__ = ["recover"]

log = logging.getLogger("postwire.runtime")
# how long a table another process of this machine still holds is waited for (its last owner
# lets go as soon as its own rebalance callback runs) before a throwaway one is rebuilt
LOCK_WAIT = 15.0
_HORIZON = "delete.retention.ms"


async def recover(
    client: Mapping[str, Any],
    stores: Iterable[Store],
    partitions: Iterable[int],
    *,
    stall_timeout: float = 60.0,
    lock_wait: float = LOCK_WAIT,
) -> int:
    """Reload ``partitions`` of every store; return the number of changelog records read.
    ``client``: the options of ``streams.kafka.config.client_options``."""
    by_tp: dict[TopicPartition, Store] = {}
    parts = sorted(set(partitions))
    stores = list(stores)
    for store in stores:
        for p in parts:
            by_tp[TopicPartition(store.topic, p)] = store
    if not by_tp:
        return 0
    tables = {tp: await _open(store, tp.partition, lock_wait) for tp, store in by_tp.items()}
    cluster: str | None = None
    horizons: dict[str, float] = {}
    if any(table.persistent for table in tables.values()):
        cluster, horizons = await _changelog_facts(client, sorted({s.topic for s in stores}))
    for store in stores:
        store.cluster = cluster
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
    try:
        consumer.assign(list(by_tp))
        ends = await consumer.end_offsets(list(by_tp))
        resumed = await _seek(consumer, tables, ends, cluster, horizons)
        read = await _read_to_ends(consumer, by_tp, tables, ends, cluster, stall_timeout)
    finally:
        await consumer.stop()
    log.info(
        "recovered %d changelog records for partitions %s (%d of %d tables from their mark)",
        read,
        parts,
        resumed,
        len(tables),
    )
    return read


async def _seek(
    consumer: AIOKafkaConsumer,
    tables: Mapping[TopicPartition, Table],
    ends: Mapping[TopicPartition, int],
    cluster: str | None,
    horizons: Mapping[str, float],
) -> int:
    """Seek each changelog partition to its table's mark, or empty the table and seek to the
    start; returns how many went on from their mark."""
    starts = await consumer.beginning_offsets(list(tables))
    now = time.time()
    resumed = 0
    for tp, table in tables.items():
        resume = _resume(table, tp, cluster, starts[tp], ends[tp], now, horizons)
        if resume.offset is None:
            table.clear()
            consumer.seek(tp, starts[tp])
        else:
            resumed += 1
            consumer.seek(tp, resume.offset)
        log.info(
            "recovering %s[%d] from offset %d to %d: %s",
            tp.topic,
            tp.partition,
            starts[tp] if resume.offset is None else resume.offset,
            ends[tp],
            resume.reason,
        )
    return resumed


async def _read_to_ends(
    consumer: AIOKafkaConsumer,
    by_tp: Mapping[TopicPartition, Store],
    tables: Mapping[TopicPartition, Table],
    ends: Mapping[TopicPartition, int],
    cluster: str | None,
    stall_timeout: float,
) -> int:
    read = 0
    todo = {tp for tp in by_tp if await consumer.position(tp) < ends[tp]}
    last_progress = time.monotonic()
    while todo:
        fetched = await consumer.getmany(*todo, timeout_ms=500, max_records=10_000)
        read += _restore(fetched, by_tp, tables, ends, cluster)
        if fetched:
            last_progress = time.monotonic()
        for tp in list(todo):
            if await consumer.position(tp) >= ends[tp]:
                todo.discard(tp)
        if todo and time.monotonic() - last_progress > stall_timeout:
            raise _stalled(todo, stall_timeout)
    now = time.time()
    for tp, table in tables.items():
        # the table reflects the changelog up to its end now, also when compaction left the
        # last offsets empty: the owner's next changes are then contiguous with the mark
        # (Store.acknowledged moves a mark only over contiguous changes)
        mark = table.mark() if table.persistent else None
        if ends[tp] > 0 and table.persistent and (mark is None or mark.offset < ends[tp] - 1):
            table.write({}, Mark(tp.topic, tp.partition, ends[tp] - 1, cluster, now))
    return read


async def _open(store: Store, partition: int, lock_wait: float) -> Table:
    deadline = time.monotonic() + lock_wait
    while True:
        try:
            return store.open(partition)
        except TableBusyError as exc:
            if time.monotonic() >= deadline:
                log.warning("%s; rebuilding a table of this process only", exc)
                return store.open(partition, shared=False)
        await asyncio.sleep(0.05)


def _resume(
    table: Table,
    tp: TopicPartition,
    cluster: str | None,
    start: int,
    end: int,
    now: float,
    horizons: Mapping[str, float],
) -> Resume:
    if not table.persistent:
        return Resume(None, "a table in memory")
    return resume_from(
        table.mark(),
        topic=tp.topic,
        partition=tp.partition,
        cluster=cluster,
        start=start,
        end=end,
        now=now,
        tombstone_horizon=horizons.get(tp.topic),
    )


async def _changelog_facts(
    client: Mapping[str, Any], topics: list[str]
) -> tuple[str | None, dict[str, float]]:
    """The cluster id, and each changelog's delete.retention.ms in seconds."""
    admin = AIOKafkaAdminClient(**client, request_timeout_ms=10000)
    await start_client(admin, client)
    try:
        cluster = (await admin.describe_cluster()).get("cluster_id")
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, {_HORIZON: None}) for t in topics]
        )
    finally:
        await admin.close()
    horizons: dict[str, float] = {}
    for response in responses:
        for resource in response.resources:
            error_code, _message, _kind, name, entries = resource[:5]
            if error_code != 0:
                continue  # unknown: its tables are rebuilt from the start
            for entry in entries:
                if entry[0] == _HORIZON and entry[1] is not None:
                    horizons[name] = int(entry[1]) / 1000
    return (str(cluster) if cluster else None), horizons


def _restore(
    fetched: Mapping[TopicPartition, Sequence[Any]],
    by_tp: Mapping[TopicPartition, Store],
    tables: Mapping[TopicPartition, Table],
    ends: Mapping[TopicPartition, int],
    cluster: str | None,
) -> int:
    """Write fetched changelog records (up to each partition's end at the start) into their
    tables, one write per partition, marked with the last offset; returns how many."""
    read = 0
    now = time.time()
    for tp, records in fetched.items():
        changes: dict[str, Any] = {}
        last = -1
        for rec in records:
            if rec.offset >= ends[tp]:
                continue
            last = rec.offset
            read += 1
            if rec.key is not None:
                # a later record of a key replaces an earlier one of the same fetch
                changes[rec.key.decode()] = by_tp[tp].decode(rec.value)
        if last >= 0:
            tables[tp].write(changes, Mark(tp.topic, tp.partition, last, cluster, now))
    return read


def _stalled(todo: Iterable[TopicPartition], stall_timeout: float) -> RecoveryStalledError:
    names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(todo))
    return RecoveryStalledError(
        f"state recovery made no progress for {stall_timeout:.0f}s on {names}"
    )
