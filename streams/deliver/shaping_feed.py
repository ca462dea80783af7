"""Shaping across processes: the compacted shaping topic (key = site, value = ``SiteState``).

A process whose rule fires writes the site's new state there (through the stage's producer, with
its batch); every delivery process reads the topic from its start and folds each state into its
``Shaping`` (``ShapingFeed``), so a suspension holds in the tx lane, the bulk lane and every
worker slot. An operator's ``postwire queue resume-site`` writes a tombstone: every process
forgets the site's state. ``read_sites`` is what ``postwire queue sites`` lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from streams.deliver.shaping import Shaping, SiteState, normalise_site
from streams.errors import KafkaRefusedError, StackError
from streams.kafka.config import KafkaSettings, client_options
from streams.kafka.connect import start_client
from streams.kafka.read import read_compacted
from streams.obs.metrics import shaping_sites

__all__ = ["ShapingFeed", "preload_sites", "publish_site", "read_sites"]

log = logging.getLogger("postwire.deliver")


def _decode(raw: bytes) -> SiteState | None:
    try:
        return SiteState.decode(raw)
    except ValueError as exc:
        log.warning("ignoring a shaping record: %s", exc)
        return None


async def read_sites(kafka: KafkaSettings) -> list[SiteState]:
    """Every site's latest state on the topic, expired ones included."""
    found = await read_compacted(kafka, kafka.topics.shaping, _decode)
    return [state for state in found.values() if state is not None]


async def publish_site(kafka: KafkaSettings, site: str, state: SiteState | None) -> None:
    """Write ``state`` for ``site``, or a tombstone (None): every process lifts the site."""
    options = client_options(kafka)
    producer = AIOKafkaProducer(**options, acks="all", enable_idempotence=True)
    try:
        await start_client(producer, options)
        value = state.encode() if state is not None else None
        await producer.send_and_wait(kafka.topics.shaping, value, key=normalise_site(site).encode())
    except KafkaError as exc:
        raise StackError(f"cannot publish to {kafka.topics.shaping}: {exc}") from exc
    finally:
        await producer.stop()


def preload_sites(kafka: KafkaSettings, shaping: Shaping) -> None:
    """Fold in every site's state before the worker delivers anything (blocking, own loop), so a
    restarted worker does not knock on a suspended site while its feed catches up."""
    try:
        states = asyncio.run(read_sites(kafka))
    except StackError as exc:
        log.warning("shaping states not loaded at start, the feed brings them: %s", exc)
        return
    for state in states:
        shaping.apply(state)
    shaping_sites(*shaping.counts(time.time()))


class ShapingFeed:
    """Every state on the shaping topic, folded into ``shaping`` while the process runs."""

    def __init__(self, kafka: KafkaSettings, shaping: Shaping) -> None:
        self.kafka = kafka
        self.shaping = shaping
        self.ready = asyncio.Event()  # the topic's backlog is read
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="postwire-shaping-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        site = normalise_site(key.decode("utf-8", "replace"))
        if value is None:
            self.shaping.lift(site)
            log.info("shaping: %s lifted by an operator", site)
        else:
            state = _decode(value)
            if state is None or state.site != site:
                return
            self.shaping.apply(state)
        shaping_sites(*self.shaping.counts(time.time()))

    async def _run(self) -> None:
        tp = TopicPartition(self.kafka.topics.shaping, 0)
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
                log.warning("shaping feed: %s; reconnecting", exc)
                await asyncio.sleep(1.0)
            finally:
                await consumer.stop()
