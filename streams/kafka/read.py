"""Read a topic from its start without a consumer group: to its current end (a compacted topic's
latest value per key: the queue index; or every value in order), or for as long as the process
runs (``Follower``: the control feed, the shaping feed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from streams.errors import KafkaRefusedError, StackError
from streams.kafka.config import KafkaSettings, client_options
from streams.kafka.connect import start_client

__all__ = ["Follower", "read_all", "read_compacted"]

log = logging.getLogger("postwire.kafka")


async def read_all(kafka: KafkaSettings, topic: str) -> list[bytes]:
    """Every value of ``topic`` from its start to its current end, in order per partition."""
    values: list[bytes] = []

    def keep(raw: bytes) -> bytes:
        values.append(raw)
        return raw

    await read_compacted(kafka, topic, keep, keyed=False)
    return values


async def read_compacted(
    kafka: KafkaSettings,
    topic: str,
    decode: Callable[[bytes], Any] = orjson.loads,
    *,
    keyed: bool = True,
) -> dict[bytes, Any]:
    """Latest value per key of ``topic`` from its start to its current end; tombstones remove."""
    options = client_options(kafka)
    consumer = AIOKafkaConsumer(**options, enable_auto_commit=False, group_id=None)
    latest: dict[bytes, Any] = {}
    try:
        await start_client(consumer, options)
        # a consumer's own metadata covers only the topics it asked about: ask the cluster
        cluster = await consumer._client.fetch_all_metadata()
        partitions = cluster.partitions_for_topic(topic)
        if not partitions:
            raise StackError(f"topic {topic} does not exist on {kafka.bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        while pending:
            batches = await consumer.getmany(*pending, timeout_ms=1000)
            for tp, records in batches.items():
                for rec in records:
                    _fold(latest, rec.key, rec.value, decode, keyed=keyed)
                    if rec.offset + 1 >= ends[tp]:
                        pending.discard(tp)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
    except KafkaError as exc:
        raise StackError(f"cannot read {topic} from {kafka.bootstrap}: {exc}") from exc
    finally:
        await consumer.stop()
    return latest


def _fold(
    latest: dict[bytes, Any],
    key: bytes | None,
    value: bytes | None,
    decode: Callable[[bytes], Any],
    *,
    keyed: bool,
) -> None:
    """One record into ``latest``: a value replaces its key's, a tombstone removes it; unkeyed
    reading only hands every value to ``decode``."""
    if not keyed:
        if value is not None:
            decode(value)
    elif key is None:
        return
    elif value is None:
        latest.pop(key, None)
    else:
        latest[key] = decode(value)


class Follower:
    """Follows partition 0 of a one-partition topic (the queue commands, the shaping states) from
    its start for as long as the process runs, handing every record to ``apply(key, value)``;
    ``ready`` is set once the records that were there at start are applied. Kafka trouble means
    a new consumer a second later, from the start again (the records are idempotent state)."""

    def __init__(
        self,
        kafka: KafkaSettings,
        topic: str,
        apply: Callable[[bytes | None, bytes | None], None],
        name: str,
    ) -> None:
        self.kafka = kafka
        self.topic = topic
        self.apply = apply
        self.name = name
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"postwire-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        tp = TopicPartition(self.topic, 0)
        while True:
            options = client_options(self.kafka)
            consumer = AIOKafkaConsumer(**options, enable_auto_commit=False, group_id=None)
            try:
                await start_client(consumer, options)
                consumer.assign([tp])
                await consumer.seek_to_beginning(tp)
                end = (await consumer.end_offsets([tp]))[tp]
                while True:
                    if not self.ready.is_set() and await consumer.position(tp) >= end:
                        self.ready.set()
                    batches = await consumer.getmany(tp, timeout_ms=500)
                    for rec in batches.get(tp, []):
                        self.apply(rec.key, rec.value)
            except (KafkaError, KafkaRefusedError) as exc:
                log.warning("%s: %s; reconnecting", self.name, exc)
                await asyncio.sleep(1.0)
            finally:
                await consumer.stop()
