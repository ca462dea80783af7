"""How large a record the pipeline can carry, as the cluster says.

Kafka refuses a record batch larger than its topic's ``max.message.bytes`` (by default the
broker's ``message.max.bytes``, 1,048,588 bytes), and a producer one larger than its
``max_request_size``. A refusal by the broker costs more than the one request: aiokafka's
idempotent producer has already counted the batch's sequence numbers, so every later record to
that partition is refused too (``OutOfOrderSequenceNumber``) until the producer is replaced. So
both doors measure each record before producing it: the ingress refuses a request whose record
would not fit (413), the gate dead-letters one a direct producer wrote (``limits.record_size``).

The limit is the smallest ``max.message.bytes`` of the topics a request's bytes travel through:
the gate copies a request to ``accepted`` or ``deferred``, makes a DeliveryTask of it per
recipient for a delivery lane, or dead-letters it on ``rejections``, and each of those is the
request's bytes plus a little (ids, a domain, an error text of at most 2,000 characters, Kafka
headers): :data:`HEADROOM` is kept for that little.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from streams.errors import RecordTooLargeError
from streams.kafka.config import TopicNames

__all__ = [
    "DEFAULT_LIMIT",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "HEADROOM",
    "MAX_BATCH_BYTES",
    "LimitReader",
    "RecordLimit",
    "flow_topics",
    "limit_of",
    "max_message_bytes",
    "read_or_default",
    "read_record_limit",
    "record_size",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES: Final = 1_048_588  # Kafka's message.max.bytes default
HEADROOM: Final = 16 * 1024
MAX_BATCH_BYTES: Final = 256 * 1024  # what our producers put in one batch at most
_CONFIG: Final = "max.message.bytes"


def record_size(key: bytes | None, value: bytes | None, headers: Iterable[Any] = ()) -> int:
    """The size of a batch holding only this record, as aiokafka estimates it (an upper bound
    of what the broker measures against ``max.message.bytes``)."""
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, list(headers))
    return size


@dataclass(frozen=True)
class RecordLimit:
    """The largest batch the flow's topics take, where that limit comes from, and what it
    leaves a request's record."""

    max_message_bytes: int
    topic: str

    @property
    def request_bytes(self) -> int:
        """The largest request record, Kafka's framing included."""
        return max(self.max_message_bytes - HEADROOM, 0)

    def reason(self) -> str:
        return (
            f"max.message.bytes of {self.topic} is {self.max_message_bytes:,}, less "
            f"{HEADROOM:,} for what the pipeline adds to a request's record"
        )

    def check(self, key: bytes | None, value: bytes | None, headers: Iterable[Any] = ()) -> None:
        """RecordTooLargeError when a request record of these bytes would not fit."""
        size = record_size(key, value, headers)
        if size > self.request_bytes:
            raise RecordTooLargeError(size, self.request_bytes, self.reason())

    def stage_producer_config(self) -> dict[str, int]:
        """A stage producer's sizes: it lives as long as its worker, so the requests it may make
        are left to the broker (a limit raised on the cluster works without a restart; a record
        over a lowered one is the broker's refusal), while batches keep to today's limit."""
        return {
            "max_request_size": max(self.max_message_bytes, STAGE_REQUEST_CEILING),
            "max_batch_size": min(MAX_BATCH_BYTES, self.max_message_bytes),
        }

    def producer_config(self) -> dict[str, int]:
        """What a producer of the flow's records needs: requests as large as a topic takes,
        and batches never larger (the broker measures a whole batch against the limit)."""
        return {
            "max_request_size": self.max_message_bytes,
            "max_batch_size": min(MAX_BATCH_BYTES, self.max_message_bytes),
        }


DEFAULT_LIMIT: Final = RecordLimit(DEFAULT_MAX_MESSAGE_BYTES, "the broker default")
STAGE_REQUEST_CEILING: Final = 64 * 1024 * 1024
REREAD_EVERY: Final = 1.0  # seconds: how often a refusal may make a reader ask the cluster again


def flow_topics(topics: TopicNames) -> tuple[str, ...]:
    """The topics a request's bytes travel through, as they came or grown a little."""
    return (
        topics.requests,
        topics.accepted,
        topics.deferred,
        topics.deliveries,
        topics.deliveries_tx,
        topics.rejections,
    )


def limit_of(found: Mapping[str, int]) -> RecordLimit:
    """The tightest of the topics' limits (the default when none was read)."""
    if not found:
        return DEFAULT_LIMIT
    topic = min(found, key=lambda name: (found[name], name))
    return RecordLimit(found[topic], topic)


def max_message_bytes(responses: Sequence[Any]) -> dict[str, int]:
    """``max.message.bytes`` per topic from DescribeConfigs responses; topics the cluster does
    not know (not created yet) are left out."""
    found: dict[str, int] = {}
    for response in responses:
        for resource in response.resources:
            error_code, _message, _kind, name, entries = resource[:5]
            if error_code != 0:
                continue
            for entry in entries:
                if entry[0] == _CONFIG and entry[1] is not None:
                    found[name] = int(entry[1])
    return found


async def read_record_limit(
    client: Mapping[str, Any], topics: Sequence[str], *, timeout_ms: int = 10_000
) -> RecordLimit:
    """The flow's limit as the cluster states it now (``client``: the options of
    ``client_options``). KafkaError when it cannot be asked."""
    admin = AIOKafkaAdminClient(**client, request_timeout_ms=timeout_ms)
    try:
        await admin.start()
        resources = [
            ConfigResource(ConfigResourceType.TOPIC, name, {_CONFIG: None}) for name in topics
        ]
        found = max_message_bytes(await admin.describe_configs(resources))
    finally:
        await admin.close()
    missing = sorted(set(topics) - set(found))
    if missing:
        log.warning("no max.message.bytes for %s (not created yet?)", ", ".join(missing))
    return limit_of(found)


async def read_or_default(client: Mapping[str, Any], topics: Sequence[str]) -> RecordLimit:
    """:func:`read_record_limit`, or the default (logged) when the cluster cannot be asked."""
    try:
        return await read_record_limit(client, topics)
    except (KafkaError, OSError) as exc:
        log.warning("could not read the record limit, assuming Kafka's default: %s", exc)
        return DEFAULT_LIMIT


class LimitReader:
    """The flow's limit, asked of the cluster again when a record over the known one arrives:
    a limit raised on the cluster must not turn away records the other door already accepts.
    The gate and the ingress both read it through one of these. Reads are serialised, and one
    made less than ``fresh_for`` s ago answers for the callers that queued behind it."""

    def __init__(self, client: Mapping[str, Any], topics: Sequence[str]) -> None:
        self.client = dict(client)
        self.topics = tuple(topics)
        self.read_at = -REREAD_EVERY  # monotonic time of the last read (or attempt)
        self._last: RecordLimit | None = None
        self._lock = asyncio.Lock()

    async def reread(
        self, known: RecordLimit, *, fresh_for: float = REREAD_EVERY, force: bool = False
    ) -> RecordLimit:
        """The limit now; the last one read (or ``known``) when it was read within
        ``fresh_for`` s (unless ``force``), or when the cluster cannot be asked: a limit that
        flipped to a default whenever the cluster did not answer would turn requests away."""
        async with self._lock:
            last = self._last or known
            if not force and time.monotonic() - self.read_at < fresh_for:
                return last
            try:
                fresh = await read_record_limit(self.client, self.topics)
            except (KafkaError, OSError) as exc:
                log.warning("could not read the record limit again, keeping the last: %s", exc)
                fresh = last
            self.read_at = time.monotonic()
            if fresh != last:
                log.info(
                    "record limit now %s bytes (%s)", f"{fresh.request_bytes:,}", fresh.reason()
                )
            self._last = fresh
            return fresh
