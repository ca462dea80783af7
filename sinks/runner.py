"""The sink loop: consume one topic under its own group, buffer, write a batch per transaction,
commit offsets only after the commit. If PostgreSQL is down the batch is kept and retried with
backoff while fetching is paused; nothing is committed until it lands."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from opentelemetry.trace import Link

from sinks.batching import Batch, BatchBuffer
from sinks.mapping import dead_letter_row, map_record, origin_of
from sinks.tables import TableSpec, sink_feeds, table_specs
from sinks.writer import PostgresWriter
from streams.contract.codec import Codec, default_codec
from streams.errors import SinkUnavailableError
from streams.kafka.commit import commit_owned
from streams.kafka.config import client_options
from streams.kafka.connect import start_client
from streams.kafka.metadata import wait_for_cluster
from streams.obs import tracing
from streams.obs.health import Check, Probe, phase_checks, verdict
from streams.obs.http import metrics_app, serve
from streams.obs.lag import LagMonitor
from streams.obs.metrics import (
    SINK_BATCH_ROWS,
    SINK_FLUSH_SECONDS,
    SINK_WRITE_FAILURES,
    EndToEnd,
    StageMeter,
)
from streams.runtime.probes import kafka_probe, postgres_probe
from streams.settings import Settings

__all__ = ["SinkRunner", "run_sinks"]

log = logging.getLogger("postwire.sinks")
SINK_FETCH_MIN_BYTES = 64 * 1024
# the record field holding its request's created_at, for tables whose rows end a request's path
BORN = {
    "EmailRequest": "created_at",
    "VerificationResult": "requested_at",
    "VerifyTask": "requested_at",
}


def _now() -> datetime:
    return datetime.now(UTC)


class _Assignments(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: SinkRunner) -> None:
        self.runner = runner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.runner.assigned = None

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.runner.assigned = frozenset(tp.partition for tp in assigned)
        self.runner._was_assigned = True


class SinkRunner:
    def __init__(
        self,
        settings: Settings,
        spec: TableSpec,
        codec: Codec,
        writer: PostgresWriter,
        name: str | None = None,
    ) -> None:
        self.settings = settings
        self.spec = spec
        self.codec = codec
        self.writer = writer
        self.name = name or spec.table
        self.group = f"{settings.app_id}-sink-{self.name}"
        self.buffer = BatchBuffer(settings.sink_batch_size, settings.sink_linger)
        self.rows_written = 0
        self.started = False
        self.failing = False  # PostgreSQL refused the last write; the batch waits
        self.assigned: frozenset[int] | None = None  # None: in no rebalance's answer yet
        self._was_assigned = False
        # epoch seconds of the requests behind the buffered rows, for end-to-end latency
        self._born: list[float] = []
        self._born_field = BORN.get(spec.record)
        self._links: list[Link] = []  # to the spans of the buffered records (tracing on)
        self._row_latency = EndToEnd(f"row.{spec.table}")
        self._meter = StageMeter(f"sink.{spec.table}")
        self._batch_rows = SINK_BATCH_ROWS.labels(spec.table)
        self._flush_seconds = SINK_FLUSH_SECONDS.labels(spec.table)
        self._write_failures = SINK_WRITE_FAILURES.labels(spec.table)

    @property
    def phase(self) -> str:
        """For /healthz: starting, rebalancing, failing (PostgreSQL refused a write) or
        running."""
        if self.failing:
            return "failing"
        if self.started and self.assigned is not None:
            return "running"
        return "rebalancing" if self._was_assigned else "starting"

    def _dead_letter(self, table: str, origin: Any, exc: Exception) -> tuple[object, ...] | None:
        return dead_letter_row(table, origin, exc, _now)

    def _map(self, msg: ConsumerRecord[bytes, bytes]) -> tuple[str, tuple[object, ...] | None]:
        mapped = map_record(self.spec, self.codec, msg, _now)
        born = (
            mapped.record.get(self._born_field)
            if self._born_field and mapped.record is not None and mapped.row
            else None
        )
        if born is not None:
            self._born.append(born.timestamp())
        return mapped.table, mapped.row

    async def run(self, stop: asyncio.Event) -> None:
        options = client_options(self.settings.kafka)
        consumer = AIOKafkaConsumer(
            **options,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.settings.sink_batch_size,
            # a sink writes in batches anyway: the broker holds each fetch until it has a batch's
            # worth or the linger passed, rather than answering every few records (under load,
            # the broker's busiest work was answering the sinks' fetches)
            fetch_min_bytes=SINK_FETCH_MIN_BYTES,
            fetch_max_wait_ms=max(int(self.settings.sink_linger * 1000), 1),
            session_timeout_ms=int(self.settings.session_timeout * 1000),
            heartbeat_interval_ms=int(self.settings.heartbeat_interval * 1000),
        )
        # subscribed with a listener: no partitions yet is "starting", a revoke "rebalancing"
        consumer.subscribe([self.spec.topic], listener=_Assignments(self))
        await start_client(consumer, options)
        self.started = True
        try:
            while not stop.is_set():
                fetched = await consumer.getmany(timeout_ms=int(self.settings.sink_linger * 1000))
                now = time.monotonic()
                traced = tracing.enabled()
                for tp, messages in fetched.items():
                    for msg in messages:
                        table, row = self._map(msg)
                        origin = origin_of(msg)
                        self.buffer.add(tp, msg.offset, table, row, now, origin)
                        if traced:
                            self._link(msg)
                if self.buffer.due(time.monotonic()):
                    await self._flush(consumer, stop)
            if self.buffer.due(float("inf")):
                await self._flush(consumer, stop)
        finally:
            self.started = False
            self.assigned = None
            await consumer.stop()
            log.info("sink %s stopped after %d rows", self.spec.table, self.rows_written)

    def _link(self, msg: ConsumerRecord[bytes, bytes]) -> None:
        link = tracing.link_of(msg.headers)
        if link is not None:
            self._links.append(link)

    async def _flush(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        batch = self.buffer.take()
        born, self._born = self._born, []
        links, self._links = self._links, []
        with tracing.write_span(self.spec.table, self.spec.topic, len(batch), links):
            await self._write(consumer, stop, batch, born)

    async def _write(
        self, consumer: AIOKafkaConsumer, stop: asyncio.Event, batch: Batch, born: list[float]
    ) -> None:
        delay = 0.5
        while True:
            try:
                began = time.perf_counter()
                await self.writer.write(batch, self._dead_letter)
                self._flush_seconds.observe(time.perf_counter() - began)
                self.failing = False
                break
            except SinkUnavailableError as exc:
                self.failing = True
                self._write_failures.inc()
                if stop.is_set():
                    log.warning(
                        "sink %s stopping with an unwritten batch; it will be re-read",
                        self.spec.table,
                    )
                    return
                wait = min(max(delay, exc.retry_after), self.settings.sink_retry_max)
                log.warning("sink %s: %s; retrying in %.1fs", self.spec.table, exc, wait)
                await self._idle(consumer, wait)
                delay = min(delay * 2, self.settings.sink_retry_max)
        await self._commit(consumer, batch)
        self.rows_written += len(batch)
        self._observe(batch, born)

    def _observe(self, batch: Batch, born: list[float]) -> None:
        self._batch_rows.observe(len(batch))
        written = len(batch.rows.get(self.spec.table, ()))
        self._meter.count("written", written)
        self._meter.count("dead_lettered", len(batch) - written)
        now = time.time()
        for created in born:
            self._row_latency.since_epoch(created, now)

    async def _idle(self, consumer: AIOKafkaConsumer, seconds: float) -> None:
        # keep polling (paused) so the group does not think this consumer died
        assigned = consumer.assignment()
        consumer.pause(*assigned)
        try:
            await consumer.getmany(timeout_ms=int(seconds * 1000))
        finally:
            consumer.resume(*[tp for tp in assigned if tp in consumer.assignment()])

    async def _commit(self, consumer: AIOKafkaConsumer, batch: Batch) -> None:
        offsets = {tp: off for tp, off in batch.offsets.items() if isinstance(tp, TopicPartition)}
        await commit_owned(consumer, offsets, f"sink {self.name}")


async def run_sinks(
    settings: Settings, tables: tuple[str, ...] | None = None, stop: asyncio.Event | None = None
) -> None:
    specs = table_specs(settings)
    feeds = sink_feeds(settings)
    chosen = tables or tuple(specs)
    unknown = set(chosen) - set(feeds)
    if unknown:
        raise ValueError(f"unknown sink table(s) {sorted(unknown)}; known: {', '.join(specs)}")
    stop = stop or asyncio.Event()
    await wait_for_cluster(client_options(settings.kafka), settings.kafka.start_wait)
    codec = default_codec()
    writer = PostgresWriter(settings.dsn, specs)
    # a table named runs every feed into it (requests: from accepted and from verify)
    runners = [
        SinkRunner(settings, spec, codec, writer, name)
        for name, spec in feeds.items()
        if name in chosen or spec.table in chosen
    ]
    probes = [
        kafka_probe(
            client_options(settings.kafka),
            interval=settings.health_interval,
            timeout=settings.health_timeout,
        ),
        postgres_probe(
            settings.dsn, interval=settings.health_interval, timeout=settings.health_timeout
        ),
    ]
    web = None
    if settings.sinks_web_port:

        def live() -> tuple[bool, dict[str, Any]]:
            return not stop.is_set(), {"pid": os.getpid(), "stopping": stop.is_set()}

        web = await serve(
            metrics_app(lambda: sinks_health(runners, probes), live),
            settings.web_host,
            settings.sinks_web_port,
        )
    work = [runner.run(stop) for runner in runners]
    work.extend(probe.run(stop) for probe in probes)
    if settings.lag_interval:
        work.append(LagMonitor(settings.kafka, settings.lag_interval).run(stop))
    try:
        await asyncio.gather(*work)
    finally:
        if web is not None:
            await web.cleanup()
        for probe in probes:
            await probe.stop()
        await writer.close()


def sinks_health(runners: list[SinkRunner], probes: list[Probe]) -> tuple[bool, dict[str, Any]]:
    """Ready when every sink has its partitions and none is waiting for PostgreSQL to come
    back, and Kafka and PostgreSQL answer the probes."""
    phases = {r.name: r.phase for r in runners}
    found = verdict(
        [
            *phase_checks("sink", phases),
            *(p.check() for p in probes),
            Check("sinks", True, detail=phases),
        ]
    )
    return found.ok, {"reasons": found.reasons, **found.details}
