"""The ingress's Kafka producer, kept usable for every tenant.

One idempotent producer serves every request. When the broker refuses a batch (a record larger
than the topic takes, say), aiokafka has already counted the batch's sequence numbers, and from
then on every record to that partition is refused with ``OutOfOrderSequenceNumber``: one tenant's
request would turn every other tenant sharing the partition away until a restart. So:

- each record is measured first against the record limit the cluster states (the flow's topics'
  ``max.message.bytes``, :mod:`streams.kafka.limits`); a record over it is a 413 naming the limit
  and never reaches Kafka. Before a 413 the limit is read again (at most once a second), so a
  limit raised on the cluster is honoured at once;
- a refused acknowledgement other than a timeout replaces the producer (a new producer id,
  sequence numbers from zero); records the broker refused without writing them (the ones
  ``OutOfOrderSequenceNumber`` turned away) are sent once more on the new one, so a request that
  only shared the partition still gets its 202. A broker refusing a record as too large means the
  limit changed under us: it is read again and the request answered 413;
- when no new producer can be started, the state is ``down`` (``/healthz`` 503 says why), a new
  one is tried every second, and requests meanwhile wait up to the produce timeout, then get 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordListTooLargeError,
)

from streams.errors import KafkaRefusedError, RecordTooLargeError
from streams.kafka.connect import start_client
from streams.kafka.limits import DEFAULT_LIMIT, LimitReader, RecordLimit, record_size

__all__ = ["Failure", "IngressProducer", "Record", "classify"]

log = logging.getLogger(__name__)

Record = tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes]]]  # key, value, headers
Failure = Literal["timeout", "too_large", "unwritten", "failed"]

RETRY_EVERY: Final = 1.0  # seconds between attempts at a new producer while down
LIMIT_REREAD: Final = 1.0  # at most one re-read of the limit per second before a 413
CLOSE_TIMEOUT: Final = 5.0


def classify(exc: BaseException) -> Failure:
    """What a failed acknowledgement says: ``timeout`` (the producer may be fine, the record
    may even be written), ``too_large`` (the broker refused the record's size), ``unwritten``
    (refused for the producer's state, not written: safe to send again) or ``failed``."""
    if isinstance(exc, KafkaTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, MessageSizeTooLargeError | RecordListTooLargeError):
        return "too_large"
    unwritten = (
        OutOfOrderSequenceNumber,
        InvalidProducerEpoch,
        InvalidProducerIdMapping,
        ProducerFenced,
    )
    return "unwritten" if isinstance(exc, unwritten) else "failed"


class IngressProducer:
    """``send_all`` produces records and waits for Kafka's acknowledgement of all of them."""

    def __init__(
        self,
        client: Mapping[str, Any],
        flow: Sequence[str],
        config: Mapping[str, Any],
        *,
        timeout: float,
    ) -> None:
        self.client = dict(client)  # how to reach the cluster (client_options)
        self.flow = tuple(flow)
        self._limits = LimitReader(client, self.flow)
        self.config = dict(config)
        self.timeout = timeout
        self.limit: RecordLimit = DEFAULT_LIMIT
        self.state: Literal["stopped", "ready", "replacing", "down"] = "stopped"
        self.reason: str | None = None
        self.replaced = 0  # producers replaced since start
        self._producer: AIOKafkaProducer | None = None
        self._sized_for = 0  # the max.message.bytes the producer was made for
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._refused: KafkaRefusedError | None = None  # why the cluster last refused us

    async def start(self) -> None:
        """Read the record limit and start a producer; KafkaError when none can be started."""
        await self._read_limit()
        async with self._lock:
            if not await self._open():
                if self._refused is not None:
                    raise self._refused  # the cluster refused our settings: say which
                raise KafkaError(f"no Kafka producer could be started: {self.reason}")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        producer, self._producer = self._producer, None
        self.state = "stopped"
        if producer is not None:
            await producer.stop()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def health(self) -> tuple[bool, dict[str, Any]]:
        found: dict[str, Any] = {
            "state": self.state,
            "record_limit": self.limit.request_bytes,
            "replaced": self.replaced,
        }
        if self.reason is not None and self.state != "ready":
            found["reason"] = self.reason
        return self.state == "ready", found

    async def send_all(self, topic: str, records: Sequence[Record]) -> None:
        """Produce ``records`` (all measured first) and wait for every acknowledgement.

        Raises RecordTooLargeError (a 413) before anything is produced when a record does not
        fit; KafkaError or TimeoutError (a 503) when Kafka did not take them all."""
        for key, value, headers in records:
            await self._measure(key, value, headers)
        async with asyncio.timeout(self.timeout):
            pending = list(records)
            for attempt in range(2):
                producer = await self._current()
                failures = await self._produce(producer, topic, pending)
                if not failures:
                    return
                pending = await self._after(producer, pending, failures, retried=attempt > 0)

    async def _after(
        self,
        producer: AIOKafkaProducer,
        records: list[Record],
        failures: list[tuple[int, BaseException]],
        *,
        retried: bool,
    ) -> list[Record]:
        """What to send again after ``failures`` (index, error); raises when nothing is.

        A batch the broker refused as too large may hold small records of other requests
        (they were batched with it): only a record over the limit read afresh is a 413, the
        others were not written and go again, as those refused for the producer's state do."""
        kinds = {classify(exc) for _, exc in failures}
        first = failures[0][1]
        if kinds == {"timeout"}:
            raise first
        if "too_large" in kinds:
            await self._read_limit(force=True)  # replaces the producer when the limit changed
        await self._replace(producer, first)
        sizes = [record_size(*records[i]) for i, _ in failures]
        if max(sizes) > self.limit.request_bytes:
            raise RecordTooLargeError(max(sizes), self.limit.request_bytes, self.limit.reason())
        if retried or not kinds <= {"unwritten", "too_large"}:
            raise first
        log.info("sending %d record(s) the broker refused unwritten again", len(failures))
        return [records[i] for i, _ in failures]

    async def _produce(
        self, producer: AIOKafkaProducer, topic: str, records: Sequence[Record]
    ) -> list[tuple[int, BaseException]]:
        futures: list[asyncio.Future[Any]] = []
        for key, value, headers in records:
            try:
                futures.append(
                    await producer.send(topic, value, key=key, headers=list(headers) or None)
                )
            except MessageSizeTooLargeError as exc:
                # refused before it left: nothing is poisoned, but nothing of it is sent either
                size = record_size(key, value, headers)
                raise RecordTooLargeError(
                    size, self.limit.request_bytes, self.limit.reason()
                ) from exc
        results = await asyncio.gather(*futures, return_exceptions=True)
        return [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]

    async def _measure(
        self, key: bytes | None, value: bytes | None, headers: Sequence[tuple[str, bytes]]
    ) -> None:
        if record_size(key, value, headers) <= self.limit.request_bytes:
            return
        # confirm against the cluster before refusing: the limit may have been raised
        if time.monotonic() - self._limits.read_at > LIMIT_REREAD:
            await self._read_limit()
        self.limit.check(key, value, headers)

    async def _read_limit(self, *, force: bool = False) -> None:
        # requests queued behind another's read take its answer (read under 0.1 s ago)
        limit = await self._limits.reread(self.limit, fresh_for=LIMIT_REREAD / 10, force=force)
        self.limit = limit
        if self._producer is not None and self._sized_for != limit.max_message_bytes:
            # a producer made for another limit would refuse records that now fit, or send
            # batches the broker refuses
            await self._replace(self._producer, None)

    async def _current(self) -> AIOKafkaProducer:
        while self.state != "ready" or self._producer is None:
            if self.state == "stopped":
                raise KafkaError("the producer is not started")
            await self._ready.wait()
        return self._producer

    async def _replace(self, old: AIOKafkaProducer, why: BaseException | None) -> None:
        async with self._lock:
            if self._producer is not old:
                return  # another request replaced it already
            self.replaced += 1
            if why is not None:
                log.warning("replacing the Kafka producer after %s: %s", type(why).__name__, why)
            self._producer = None
            self.state = "replacing"
            self._spawn(self._close(old))
            if not await self._open():
                self._spawn(self._reopen())

    async def _open(self) -> bool:
        """Start a producer sized for the current limit; False (and state ``down``) when it
        does not start."""
        self._ready.clear()
        limit = self.limit
        # self.config holds the client options (cluster, SASL, TLS) and the producer's own
        config = {**self.config, **limit.producer_config()}
        producer = AIOKafkaProducer(**config)
        try:
            await start_client(producer, self.client)
        except (KafkaError, OSError, KafkaRefusedError) as exc:
            self._refused = exc if isinstance(exc, KafkaRefusedError) else None
            with contextlib.suppress(KafkaError, OSError):
                await producer.stop()
            self.state, self.reason = "down", f"{type(exc).__name__}: {exc}"
            log.warning("no Kafka producer: %s", self.reason)
            return False
        self._producer, self._sized_for = producer, limit.max_message_bytes
        self.state, self.reason = "ready", None
        self._ready.set()
        return True

    async def _reopen(self) -> None:
        while True:
            await asyncio.sleep(RETRY_EVERY)
            async with self._lock:
                if self.state != "down" or await self._open():
                    return

    async def _close(self, producer: AIOKafkaProducer) -> None:
        # stopping flushes what it still holds, which Kafka refuses too: never wait long
        try:
            await asyncio.wait_for(producer.stop(), CLOSE_TIMEOUT)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("the replaced Kafka producer did not stop cleanly: %s", exc)

    def _spawn(self, job: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
