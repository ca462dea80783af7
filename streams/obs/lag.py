"""Consumer lag of every postwire consumer group, as Kafka sees it.

Lag is measured from the committed offsets (what survives a crash), not from what a consumer
has fetched, so it also shows a group whose workers are all down - the case that matters most
and the one no worker can report about itself. That is why one process asks the cluster about
every group instead of each worker reporting its own partitions: the sinks process runs it
(one per install, already a plain aiokafka client, and its groups are among those measured). If
several sinks processes run, each reports the same figures: the dashboard takes ``max by
(group, topic)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from streams.errors import KafkaRefusedError
from streams.kafka.config import KafkaSettings, client_options
from streams.kafka.connect import start_client
from streams.obs.metrics import CONSUMER_LAG

__all__ = ["LagMonitor", "ours", "topic_lag"]

log = logging.getLogger("postwire.obs.lag")


def ours(group: str, app_id: str) -> bool:
    """The faust group is the app id, the bulk workers' is ``<app>-bulk``, each sink's
    ``<app>-sink-<table>``; another pipeline on the cluster (``postwire2``) is not ours."""
    return group == app_id or group.startswith(f"{app_id}-")


def topic_lag(
    committed: Mapping[TopicPartition, int],
    partitions: Iterable[TopicPartition],
    starts: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
) -> dict[str, int]:
    """Records behind per topic, over ``partitions`` (all of each topic the group reads). A
    partition the group never committed on is behind by everything still in it (it would
    start from the earliest offset); a negative difference (a commit racing the end offset
    read) counts as none."""
    lag: dict[str, int] = {}
    for tp in partitions:
        end = ends.get(tp, 0)
        position = committed.get(tp, -1)
        if position < 0:
            position = starts.get(tp, 0)
        lag[tp.topic] = lag.get(tp.topic, 0) + max(end - position, 0)
    return lag


class LagMonitor:
    def __init__(self, kafka: KafkaSettings, interval: float) -> None:
        self.kafka = kafka
        self.interval = interval
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reported: set[tuple[str, str]] = set()

    async def _start(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._consumer is None:
            options = client_options(self.kafka)
            self._admin = AIOKafkaAdminClient(**options)
            self._consumer = AIOKafkaConsumer(**options, group_id=None, enable_auto_commit=False)
            await start_client(self._admin, options)
            await start_client(self._consumer, options)
        return self._admin, self._consumer

    async def close(self) -> None:
        admin, consumer, self._admin, self._consumer = self._admin, self._consumer, None, None
        if consumer is not None:
            await consumer.stop()
        if admin is not None:
            await admin.close()

    async def measure(self) -> dict[tuple[str, str], int]:
        """Lag per (group, topic) of every group of this app that has committed anything."""
        admin, consumer = await self._start()
        groups = sorted(
            g for g, *_ in await admin.list_consumer_groups() if ours(g, self.kafka.app_id)
        )
        committed: dict[str, dict[TopicPartition, int]] = {}
        for group in groups:
            offsets = await admin.list_consumer_group_offsets(group)
            committed[group] = {tp: meta.offset for tp, meta in offsets.items()}
        topics = {tp.topic for offsets in committed.values() for tp in offsets}
        if not topics:
            return {}
        # the consumer's own metadata covers only topics it asked about: ask for all of them
        cluster = await consumer._client.fetch_all_metadata()
        partitions = [
            TopicPartition(topic, p)
            for topic in sorted(topics)
            for p in sorted(cluster.partitions_for_topic(topic) or ())
        ]
        starts = await consumer.beginning_offsets(partitions)
        ends = await consumer.end_offsets(partitions)
        found: dict[tuple[str, str], int] = {}
        for group, offsets in committed.items():
            read = {tp.topic for tp in offsets}
            mine = [tp for tp in partitions if tp.topic in read]
            for topic, lag in topic_lag(offsets, mine, starts, ends).items():
                found[(group, topic)] = lag
        return found

    async def report(self) -> None:
        """Measure and set the gauge; series of groups and topics that went away are removed."""
        found = await self.measure()
        for (group, topic), lag in found.items():
            CONSUMER_LAG.labels(group, topic).set(lag)
        for gone in self._reported - found.keys():
            with contextlib.suppress(KeyError):
                CONSUMER_LAG.remove(*gone)
        self._reported = set(found)

    async def run(self, stop: asyncio.Event) -> None:
        """Report every ``interval`` seconds until ``stop``; a failed round is logged and the
        last figures stay (a gap in the graph would hide the outage it is caused by)."""
        try:
            while not stop.is_set():
                try:
                    await self.report()
                except (KafkaError, KafkaRefusedError, OSError, TimeoutError) as exc:
                    log.warning("consumer lag not measured this round: %s", exc)
                    await self.close()  # start over with fresh connections
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.interval)
        finally:
            await self.close()
