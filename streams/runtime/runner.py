"""The one batch loop for every stage: consume a batch under the stage's consumer group, hand it
to the stage, send its outputs and its stores' changes, wait until Kafka acknowledged all of
them, then commit the batch's offsets. A crash anywhere before the commit means the batch is
read again; the stages are written so that a repeated batch decides the same way.

Rebalances: the revoke callback waits for the batch in flight (it holds the lock), partitions
that stay are kept, partitions that leave drop their state, partitions that arrive are recovered
from their changelogs before any of their records is processed.

A batch that raises is retried record by record; a record that raises on its own is dead-lettered
(``stage.crashed``) and the rest of the batch goes on."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from streams.clock import Clock, wall_clock
from streams.kafka.commit import commit_owned
from streams.kafka.config import ClientOptions
from streams.kafka.connect import start_client
from streams.obs import tracing
from streams.obs.metrics import (
    BATCH_RECORDS,
    RECORDS,
    SINCE_COMMIT,
    STAGE_SECONDS,
    STATE_ENTRIES,
    UNCOMMITTED,
)
from streams.runtime.cadence import CommitBudget, Group
from streams.runtime.producer import BatchProducer
from streams.runtime.records import Consumed
from streams.runtime.recovery import recover
from streams.runtime.stage import Admitting, Stage, Step
from streams.runtime.state import Store

__all__ = ["RunnerConfig", "StageRunner"]

log = logging.getLogger("postwire.runtime")
SLOW_BATCH = 10.0
PIPELINE = 4  # batches a stage may have sent and not yet seen acknowledged
ADMIT_ROUNDS = 8  # fetches a concurrent stage may admit between two flushes


@dataclass(frozen=True)
class RunnerConfig:
    """What the runner needs to reach Kafka (a part of the settings, built by the worker):
    ``client`` is ``streams.kafka.config.client_options`` (the cluster, SASL and TLS)."""

    client: ClientOptions = field(repr=False)  # it holds the SASL password
    group: str
    session_timeout: float = 10.0
    heartbeat_interval: float = 1.0
    housekeeping_interval: float = 5.0  # a slice of each store per call (Store.sweep)
    fetch_wait: float = 0.1
    # how much work a crash can make a batch stage repeat; also how often its stores' changes
    # are written (coalesced over every batch in between)
    commit_interval: float = 0.5
    # at most this much processed and not committed (records, seconds since the oldest was
    # processed): past either the stage stops fetching until Kafka has caught up, so a crash
    # repeats at most about this much (streams/runtime/cadence.py)
    max_uncommitted_records: int = 10_000
    max_uncommitted_seconds: float = 5.0
    recovery_stall_timeout: float = 60.0
    # concurrent stages: how long a finished record may wait for others to share its flush
    # (one produce of the outputs, one changelog write, one offset commit for all of them)
    flush_wait: float = 0.02


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, runner: StageRunner) -> None:
        self.runner = runner

    # aiokafka logs and swallows what a listener raises: a recovery that stalled or a flush
    # Kafka refused would leave the stage unowned and waiting forever. The runner keeps the
    # failure and its loop raises it, so the process ends and its supervisor restarts it.
    async def on_partitions_revoked(self, revoked: Any) -> None:
        try:
            async with self.runner.lock:  # the batch in flight finishes and commits first
                await self.runner.drain()
                self.runner.ready = False
        except Exception as exc:  # noqa: BLE001 - kept and raised by the runner's loop
            self.runner.fail(exc)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        try:
            await self.runner.assigned({tp.partition for tp in assigned})
        except Exception as exc:  # noqa: BLE001 - kept and raised by the runner's loop
            self.runner.fail(exc)


class StageRunner:
    def __init__(
        self,
        stage: Stage,
        config: RunnerConfig,
        producer: BatchProducer,
        clock: Clock = wall_clock,
    ) -> None:
        self.stage = stage
        self.config = config
        self.producer = producer
        self.clock = clock
        self.lock = asyncio.Lock()
        self.owned: set[int] = set()
        self.ready = False  # assigned and recovered: records are being processed
        self.fatal: BaseException | None = None  # what a rebalance callback failed with
        self.recovering: frozenset[int] = frozenset()  # arriving partitions being rebuilt
        self._was_assigned = False  # a rebalance after it is "rebalancing", not "starting"
        self.batches = 0
        self._paused: dict[TopicPartition, float] = {}
        self._wake = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._last_housekeeping = time.monotonic()
        self._seconds = STAGE_SECONDS.labels(stage.name)
        self._sizes = BATCH_RECORDS.labels(stage.name)
        self._outcomes: dict[str, Any] = {}
        # concurrent stages: records admitted and not finished (their futures), the finished
        # ones waiting for the next flush, and per partition the offsets admitted in order
        # (the first not finished is the commit point), the finished ones among them, the
        # highest finished and the next to admit
        self._ahead = stage.read_ahead if isinstance(stage, Admitting) else stage.concurrency
        self._open: set[asyncio.Future[Step]] = set()
        self._finished: list[tuple[Consumed, asyncio.Future[Step]]] = []
        self._finished_event = asyncio.Event()
        self._order: dict[TopicPartition, deque[int]] = {}
        self._done: dict[TopicPartition, set[int]] = {}
        self._high: dict[TopicPartition, int] = {}
        self._started: dict[TopicPartition, int] = {}
        self._first_finished: float | None = None  # when the oldest unflushed one finished
        self._commit_seen = asyncio.Event()  # set by the committer after each commit
        # batch stages: batches sent but not yet acknowledged and committed (bounded)
        self._pending: asyncio.Queue[_Checkpoint] = asyncio.Queue(maxsize=PIPELINE)
        self._committer: asyncio.Future[None] | None = None
        # sent since the last checkpoint: their futures, and the offsets they complete
        self._unsettled: list[Any] = []
        self._uncommitted: dict[TopicPartition, int] = {}
        self._last_commit = time.monotonic()
        self.budget = CommitBudget(
            config.max_uncommitted_records, config.max_uncommitted_seconds, time.monotonic()
        )
        self._uncommitted_gauge = UNCOMMITTED.labels(stage.name)
        self._since_commit_gauge = SINCE_COMMIT.labels(stage.name)
        # concurrent stages: partitions paused because too much behind their commit point
        self._span_paused: set[TopicPartition] = set()

    @property
    def phase(self) -> str:
        """For /healthz: ``starting`` (not in its group yet), ``rebalancing`` (waiting for its
        partitions), ``recovering [0, 1]`` (rebuilding their state) or ``running``."""
        if self.ready:
            return "running"
        if self.recovering:
            return f"recovering {sorted(self.recovering)}"
        return "rebalancing" if self._was_assigned else "starting"

    def wake(self) -> None:
        """Resume held partitions now (a queue command may have made their records due)."""
        self._wake.set()

    def fail(self, exc: BaseException) -> None:
        """A rebalance callback failed: the loop raises ``exc`` at its next turn."""
        log.error("stage %s: rebalance failed, stopping: %s", self.stage.name, exc)
        self.ready = False
        if self.fatal is None:
            self.fatal = exc

    def _raise_if_failed(self) -> None:
        if self.fatal is not None:
            raise self.fatal

    async def assigned(self, partitions: set[int]) -> None:
        for p in self.owned - partitions:
            for store in self.stage.stores:
                store.drop(p)
        arriving = partitions - self.owned
        if arriving and self.stage.stores:
            self.recovering = frozenset(arriving)
            try:
                await recover(
                    self.config.client,
                    self.stage.stores,
                    arriving,
                    stall_timeout=self.config.recovery_stall_timeout,
                )
            finally:
                self.recovering = frozenset()
        self.owned = partitions
        self._paused.clear()  # positions restart from the committed offsets
        self._span_paused.clear()
        for store in self.stage.stores:  # a stage that gets no traffic still shows its state
            STATE_ENTRIES.labels(store.name).set(store.entries())
        self.ready = True
        self._was_assigned = True
        log.info(
            "stage %s: partitions %s assigned and recovered", self.stage.name, sorted(partitions)
        )

    async def run(self, stop: asyncio.Event) -> None:
        consumer = AIOKafkaConsumer(
            **self.config.client,
            group_id=self.config.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.stage.max_batch,
            session_timeout_ms=int(self.config.session_timeout * 1000),
            heartbeat_interval_ms=int(self.config.heartbeat_interval * 1000),
        )
        consumer.subscribe(list(self.stage.inputs), listener=_Rebalance(self))
        await start_client(consumer, self.config.client)
        self._consumer = consumer
        self._committer = asyncio.ensure_future(self._commit_in_order(consumer))
        try:
            if self.stage.concurrency:
                await self._run_concurrent(consumer, stop)
                return
            while not stop.is_set():
                self._raise_if_failed()
                if self._committer.done():
                    self._committer.result()  # Kafka refused a batch: stop here
                self._resume_due(consumer)
                if self.budget.exceeded(time.monotonic()):
                    async with self.lock:
                        await self._catch_up()
                fetched = await consumer.getmany(
                    timeout_ms=self._fetch_wait_ms(), max_records=self.stage.max_batch
                )
                async with self.lock:
                    if fetched:
                        await self._batch(consumer, fetched)
                    elif self._uncommitted or self._stores_changed():
                        await self._checkpoint()  # nothing more came: commit what is done
                    await self._housekeeping()
            await self.settled()
        finally:
            self._committer.cancel()
            self.ready = False
            self._consumer = None
            await consumer.stop()

    async def _run_concurrent(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        """For stages that wait on the network per record (SMTP): up to the stage's read-ahead
        (its ``read_ahead``, or ``concurrency`` records each in a task of its own) admitted and
        not finished; what finished within ``flush_wait`` of each other is flushed together
        (one produce of the outputs, one changelog write, the commit shared with the flushes
        waiting behind it), and a partition is committed up to its oldest record not finished,
        so a slow destination delays only its own records (and the commit point), never the
        records behind it. A record counts against the read-ahead until its flush is committed,
        and a stage that schedules its own sends hears of that commit (``flushed``): the lane
        holds each send's slot until then, so a crash repeats at most ``concurrency`` sends."""
        assert self._committer is not None
        while not stop.is_set():
            self._raise_if_failed()
            if self._committer.done():
                self._committer.result()  # Kafka refused a flush: stop here
            room = self._ahead - len(self._open) - self.budget.records
            wait = 1 if self._open else self._fetch_wait_ms()
            # a backlog is admitted several batches at a time, not one per flush: the records
            # behind it (another tenant's) reach the scheduler sooner
            for _ in range(ADMIT_ROUNDS):
                if room <= 0:
                    break
                fetched = await consumer.getmany(
                    timeout_ms=wait, max_records=min(room, self.stage.max_batch)
                )
                if not fetched:
                    break
                async with self.lock:
                    await self._admit(consumer, fetched)
                room, wait = self._ahead - len(self._open) - self.budget.records, 0
            await self._next_finish_or_commit(room > 0)
            async with self.lock:
                if self._flush_due():
                    await self._flush_finished(consumer)
                await self._housekeeping()
        async with self.lock:
            await self.drain()

            async with self.lock:
                if self._flush_due():
                    await self._flush_finished(consumer)
                await self._housekeeping()
        async with self.lock:
            await self.drain()

    async def _next_finish_or_commit(self, room: bool) -> None:
        """Wait until a record finishes, a flush is due or a commit makes room; with room to
        read ahead, only briefly (a password reset behind a slow session)."""
        finished = len(self._finished)
        if finished and (len(self._open) == finished or self._until_flush() <= 0):
            return
        timeout = self._until_flush() if finished else self.config.fetch_wait
        if room and self._open:
            timeout = min(timeout, 0.01)
        waits: list[asyncio.Future[Any]] = []
        if len(self._open) > finished:
            self._finished_event.clear()
            waits.append(asyncio.ensure_future(self._finished_event.wait()))
        if self.budget.records:
            self._commit_seen.clear()
            waits.append(asyncio.ensure_future(self._commit_seen.wait()))
        if not waits:
            return
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()

    def _until_flush(self) -> float:
        """Seconds to wait for more records to finish before the finished ones are flushed."""
        if self._first_finished is None:
            return self.config.fetch_wait
        return max(self._first_finished + self.config.flush_wait - time.monotonic(), 0.0)

    def _flush_due(self) -> bool:
        finished = len(self._finished)
        if not finished:
            return False
        # nothing else admitted (or everything done) is worth no wait; so is a full flush
        return (
            len(self._open) == finished
            or finished >= max(self.stage.concurrency // 4, 1)
            or self._until_flush() <= 0
        )

    async def _admit(self, consumer: AIOKafkaConsumer, fetched: dict[Any, list[Any]]) -> None:
        batch = self._owned_records(consumer, fetched)
        if not batch:
            return
        for record in batch:
            tp = TopicPartition(record.topic, record.partition)
            self._order.setdefault(tp, deque()).append(record.offset)
            self._started[tp] = max(self._started.get(tp, 0), record.offset + 1)
        with tracing.batch_span(self.stage.name, batch[0].topic, batch):
            futures = await self._admitted(batch)
        for record, future in zip(batch, futures, strict=True):
            self._open.add(future)
            future.add_done_callback(functools.partial(self._on_finished, record))
        self._limit_spans(consumer)

    async def _admitted(self, batch: list[Consumed]) -> list[asyncio.Future[Step]]:
        """The stage's futures for ``batch``; a stage without ``admit`` gets a task per record."""
        stage = self.stage
        if not isinstance(stage, Admitting):
            return [asyncio.ensure_future(self._one(record)) for record in batch]
        try:
            return await stage.admit(batch, self.clock())
        except Exception:
            log.exception(
                "stage %s: admitting %d records raised; admitting them one by one",
                stage.name,
                len(batch),
            )
        futures: list[asyncio.Future[Step]] = []
        for record in batch:
            try:
                futures.extend(await stage.admit([record], self.clock()))
            except Exception as exc:  # noqa: BLE001 - the record would be lost: its dead letter
                failed: asyncio.Future[Step] = asyncio.get_running_loop().create_future()
                failed.set_result(stage.crashed(record, exc, self.clock()))
                futures.append(failed)
        return futures

    def _on_finished(self, record: Consumed, future: asyncio.Future[Step]) -> None:
        if not self._finished:
            self._first_finished = time.monotonic()
        self._finished.append((record, future))
        self._finished_event.set()

    def _limit_spans(self, consumer: AIOKafkaConsumer) -> None:
        """A partition commits up to its oldest record not finished; one slow record (an SMTP
        session up to its timeouts) with many finished behind it would leave all of them to
        be repeated after a crash. Past ``max_uncommitted_records`` (or the stage's read-ahead,
        if larger: what it reads ahead is meant to wait) between the two, the partition admits
        no new records until the slow one is done."""
        limit = max(self.config.max_uncommitted_records, self._ahead)
        assigned = consumer.assignment()
        for tp, started in self._started.items():
            order = self._order.get(tp)
            span = started - order[0] if order else 0
            if span >= limit and tp not in self._span_paused and tp in assigned:
                self._span_paused.add(tp)
                consumer.pause(tp)
                log.warning(
                    "stage %s: %s[%d] has %d records past its oldest not finished; paused",
                    self.stage.name,
                    tp.topic,
                    tp.partition,
                    span,
                )
            elif span < limit and tp in self._span_paused:
                self._span_paused.discard(tp)
                if tp in assigned:
                    consumer.resume(tp)

    async def _one(self, record: Consumed) -> Step:
        started = time.perf_counter()
        step = await self._guarded(record)
        self._seconds.observe(time.perf_counter() - started)
        return step

    async def _guarded(self, record: Consumed) -> Step:
        """One record on its own; if it raises, its dead letter instead."""
        try:
            return await self.stage.process([record], self.clock())
        except Exception as exc:  # a stage that raises would lose the record: dead-letter
            log.exception(
                "stage %s: record %s:%d:%d raised",
                self.stage.name,
                record.topic,
                record.partition,
                record.offset,
            )
            return self.stage.crashed(record, exc, self.clock())

    async def _flush_finished(self, consumer: AIOKafkaConsumer) -> None:
        finished, self._finished = self._finished, []
        self._first_finished = None
        if not finished:
            return
        step = Step()
        touched: set[TopicPartition] = set()
        settled: list[asyncio.Future[Step]] = []
        for record, future in finished:
            self._open.discard(future)
            if future.cancelled():
                continue  # given up by the stage: not finished, read again from the commit
            error = future.exception()
            if error is not None:
                log.error(
                    "stage %s: record %s:%d:%d raised",
                    self.stage.name,
                    record.topic,
                    record.partition,
                    record.offset,
                    exc_info=error,
                )
                error = error if isinstance(error, Exception) else RuntimeError(str(error))
                step.extend(self.stage.crashed(record, error, self.clock()))
            else:
                step.extend(future.result())
            settled.append(future)
            tp = TopicPartition(record.topic, record.partition)
            self._done.setdefault(tp, set()).add(record.offset)
            self._high[tp] = max(record.offset + 1, self._high.get(tp, 0))
            touched.add(tp)
        if not settled:
            return  # all given up: nothing to write, nothing to commit
        futures = await self.producer.send(step.outputs)
        acks = await self._send_changes()
        offsets = {}
        for tp in touched:
            order, done = self._order[tp], self._done[tp]
            while order and order[0] in done:
                done.discard(order.popleft())
            offsets[tp] = order[0] if order else self._high[tp]
        self.budget.processed(len(settled), time.monotonic())
        checkpoint = _Checkpoint(
            [*futures, *(f for _, fs in acks for f in fs)],
            offsets,
            acks,
            self.budget.seal(),
            settled,
        )
        self._last_commit = time.monotonic()
        await self._enqueue(checkpoint)
        self._limit_spans(consumer)
        self._observe(step, len(finished), None)

    async def drain(self) -> None:
        """Finish the work started and commit (before a rebalance or a stop): a stage that reads
        ahead gives up what has not started, and its partitions are read again from the
        commit point."""
        await self.settled()
        if isinstance(self.stage, Admitting):
            self.stage.release()
        if self._open:
            await asyncio.wait(self._open)
        await asyncio.sleep(0)  # the done callbacks of what was just cancelled
        if self._consumer is not None:
            await self._flush_finished(self._consumer)
            await self.settled()
            assigned = self._consumer.assignment()
            for tp, order in self._order.items():
                if order and tp in assigned:
                    self._consumer.seek(tp, order[0])
        self._open.clear()
        self._finished.clear()
        self._order.clear()
        self._done.clear()
        self._high.clear()
        self._started.clear()

    def _fetch_wait_ms(self) -> int:
        wait = self.config.fetch_wait
        if self._paused:
            wait = min(wait, max(min(self._paused.values()) - self.clock().timestamp(), 0.001))
        return max(int(wait * 1000), 1)

    def _resume_due(self, consumer: AIOKafkaConsumer) -> None:
        if not self._paused:
            return
        now = self.clock().timestamp()
        woken = self._wake.is_set()
        self._wake.clear()
        due = [tp for tp, until in self._paused.items() if woken or until <= now]
        for tp in due:
            del self._paused[tp]
        assigned = consumer.assignment()
        consumer.resume(*[tp for tp in due if tp in assigned])

    def _owned_records(
        self, consumer: AIOKafkaConsumer, fetched: dict[Any, list[Any]]
    ) -> list[Consumed]:
        assigned = consumer.assignment()
        batch: list[Consumed] = []
        for tp, messages in fetched.items():
            if tp not in assigned or not messages:
                continue  # revoked meanwhile: the new owner reads them from the commit
            if tp.partition not in self.owned:
                # fetched before its state was recovered: read it again once it is
                consumer.seek(tp, messages[0].offset)
                continue
            batch.extend(
                Consumed(
                    msg.topic,
                    msg.partition,
                    msg.offset,
                    msg.key,
                    msg.value,
                    tuple(msg.headers or ()),
                    msg.timestamp,
                )
                for msg in messages
            )
        return batch

    async def _batch(self, consumer: AIOKafkaConsumer, fetched: dict[Any, list[Any]]) -> None:
        batch = self._owned_records(consumer, fetched)
        if not batch:
            return
        started = time.perf_counter()
        with tracing.batch_span(self.stage.name, batch[0].topic, batch):
            step = await self._watched(self._process(batch), len(batch))
        # outputs leave at once (the next stage is waiting for them); the next batch is fetched
        # and decided while Kafka acknowledges these
        self._unsettled.extend(await self.producer.send(step.outputs))
        self._uncommitted.update(self._offsets(consumer, batch, step))
        self.budget.processed(len(batch), time.monotonic())
        self._observe(step, len(batch), started)
        if time.monotonic() - self._last_commit >= self.config.commit_interval:
            await self._checkpoint()

    async def _checkpoint(self) -> None:
        """Write the stores' changes since the last checkpoint (one record per changed key,
        however many batches changed it) and hand everything sent since to the committer, which
        commits the offsets once Kafka has acknowledged all of it."""
        self._last_commit = time.monotonic()
        if not self._uncommitted and not self._unsettled and not self._stores_changed():
            return
        acks = await self._send_changes()
        futures = [*self._unsettled, *(f for _, fs in acks for f in fs)]
        offsets, self._uncommitted, self._unsettled = self._uncommitted, {}, []
        await self._enqueue(_Checkpoint(futures, offsets, acks, self.budget.seal()))

    async def _send_changes(self) -> list[tuple[Store, list[asyncio.Future[Any]]]]:
        """Send every store's changes; per store, the futures of its changelog records."""
        acks = []
        for store in self.stage.stores:
            changes = store.changes()
            if changes:
                acks.append((store, await self.producer.send(changes)))
        return acks

    async def _commit_in_order(self, consumer: AIOKafkaConsumer) -> None:
        """Commit the checkpoints in order, each once Kafka acknowledged all its records; the
        ones already waiting behind it share its commit (the later offsets include theirs)."""
        while True:
            checkpoints = [await self._pending.get()]
            try:
                await self._settle(checkpoints[0])
                while not self._pending.empty():
                    checkpoints.append(self._pending.get_nowait())
                    await self._settle(checkpoints[-1])
                offsets: dict[TopicPartition, int] = {}
                for checkpoint in checkpoints:
                    offsets.update(checkpoint.offsets)
                await commit_owned(consumer, offsets, f"stage {self.stage.name}")
                now = time.monotonic()
                for checkpoint in checkpoints:
                    self.budget.committed(checkpoint.group, now)
                    if checkpoint.settled and isinstance(self.stage, Admitting):
                        self.stage.flushed(checkpoint.settled)
                self._uncommitted_gauge.set(self.budget.records)
                self._since_commit_gauge.set(0.0)
                self._commit_seen.set()
            finally:
                for _ in checkpoints:
                    self._pending.task_done()

    async def _settle(self, checkpoint: _Checkpoint) -> None:
        await self.producer.settle(checkpoint.futures)
        # the tables take the changes only now that the changelog has them (and in the order
        # they were sent): a table never holds what its changelog does not
        _acknowledge(checkpoint.acks)

    async def _catch_up(self) -> None:
        """Over the commit budget: fetch nothing more until everything is committed."""
        log.warning(
            "stage %s: %d records uncommitted, the oldest %.1fs ago; waiting for Kafka to "
            "acknowledge them before fetching more",
            self.stage.name,
            self.budget.records,
            self.budget.age(time.monotonic()),
        )
        began = time.monotonic()
        await self.settled()
        log.info("stage %s: caught up in %.1fs", self.stage.name, time.monotonic() - began)

    async def _enqueue(self, checkpoint: _Checkpoint) -> None:
        assert self._committer is not None
        put = asyncio.ensure_future(self._pending.put(checkpoint))
        await asyncio.wait([put, self._committer], return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            self._committer.result()  # it stopped on a failure: raise it here

    async def settled(self) -> None:
        """Wait until every batch sent so far is acknowledged and committed."""
        self._raise_if_failed()
        if self._committer is None:
            return
        if not self._committer.done():
            await self._checkpoint()
        joined = asyncio.ensure_future(self._pending.join())
        await asyncio.wait([joined, self._committer], return_when=asyncio.FIRST_COMPLETED)
        if self._committer.done():
            joined.cancel()
            self._committer.result()  # the failure that stopped it

    async def _watched(self, work: Any, n: int) -> Step:
        """Run ``work``, logging where it waits whenever it has taken ``SLOW_BATCH`` s more (a
        batch that never ends holds its partitions' offsets and every rebalance)."""
        task: asyncio.Task[Step] = asyncio.ensure_future(work)
        waited = 0.0
        while True:
            done, _ = await asyncio.wait({task}, timeout=SLOW_BATCH)
            if done:
                return task.result()
            waited += SLOW_BATCH
            frames = (
                "".join(traceback.format_stack(task.get_stack(limit=8)[-1]))
                if task.get_stack()
                else ""
            )
            log.warning(
                "stage %s: a batch of %d records has run %.0fs; waiting at:\n%s",
                self.stage.name,
                n,
                waited,
                frames,
            )

    async def _process(self, batch: Sequence[Consumed]) -> Step:
        now = self.clock()
        try:
            return await self.stage.process(batch, now)
        except Exception:
            log.exception(
                "stage %s: a batch of %d raised; retrying record by record",
                self.stage.name,
                len(batch),
            )
        step = Step()
        for record in batch:
            step.extend(await self._guarded(record))
        return step

    def _offsets(
        self, consumer: AIOKafkaConsumer, batch: Sequence[Consumed], step: Step
    ) -> dict[TopicPartition, int]:
        offsets: dict[TopicPartition, int] = {}
        for record in batch:
            offsets[TopicPartition(record.topic, record.partition)] = record.offset + 1
        for (topic, partition), held in step.held.items():
            tp = TopicPartition(topic, partition)
            offsets[tp] = held.offset
            consumer.seek(tp, held.offset)
            consumer.pause(tp)
            self._paused[tp] = held.until
        return offsets

    def _observe(self, step: Step, n: int, started: float | None) -> None:
        self.batches += 1
        if started is not None:  # concurrent stages time each record where it ran
            self._seconds.observe((time.perf_counter() - started) / n)
        self._sizes.observe(n)
        for outcome, count in step.outcomes.items():
            counter = self._outcomes.get(outcome)
            if counter is None:
                counter = self._outcomes[outcome] = RECORDS.labels(self.stage.name, outcome)
            counter.inc(count)
        for store in self.stage.stores:
            STATE_ENTRIES.labels(store.name).set(store.entries())
        now = time.monotonic()
        self._uncommitted_gauge.set(self.budget.records)
        self._since_commit_gauge.set(now - self.budget.last_commit if self.budget.records else 0)

    async def _housekeeping(self) -> None:
        if time.monotonic() - self._last_housekeeping < self.config.housekeeping_interval:
            return
        self._last_housekeeping = time.monotonic()
        # what it deletes goes with the next checkpoint (or flush), in order with every other
        # change: waiting here for the commit pipeline to drain stalled the stage every few
        # seconds (the p99 of the verify bench at 2,000/s)
        self.stage.housekeeping(self.clock())

    def _stores_changed(self) -> bool:
        return any(store.has_changes() for store in self.stage.stores)


@dataclass
class _Checkpoint:
    """Sent and waiting for Kafka: the futures of every record, the offsets to commit after,
    the stores' changelog futures (their tables take the changes once acknowledged), and the
    records it commits."""

    futures: list[Any]
    offsets: dict[TopicPartition, int]
    acks: list[tuple[Store, list[asyncio.Future[Any]]]]
    group: Group
    # a concurrent stage's records this checkpoint settles (told once it is committed)
    settled: list[asyncio.Future[Step]] = field(default_factory=list)


def _acknowledge(acks: list[tuple[Store, list[asyncio.Future[Any]]]]) -> None:
    """Hand each store the last changelog offset per partition of its acknowledged changes."""
    for store, futures in acks:
        offsets: dict[int, int] = {}
        for future in futures:
            meta = future.result()
            if meta.offset > offsets.get(meta.partition, -1):
                offsets[meta.partition] = meta.offset
        store.acknowledged(offsets)
