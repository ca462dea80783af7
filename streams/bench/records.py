"""Kafka records a benchmark run cost, read from the broker (end offsets of every topic, committed
offsets of every consumer group) rather than from our own counters, so nothing the pipeline
forgot to count is missed: table changelogs, dead letters, retries, every sink's reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.kafka.config import KafkaSettings, client_options

__all__ = ["RecordCounts", "kafka_counts", "records_per_request"]


@dataclass
class RecordCounts:
    produced: dict[str, int] = field(default_factory=dict)  # topic -> end offsets summed
    consumed: dict[str, int] = field(default_factory=dict)  # "group topic" -> committed summed

    def minus(self, before: RecordCounts) -> RecordCounts:
        def diff(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
            return {k: v - b.get(k, 0) for k, v in a.items() if v - b.get(k, 0)}

        return RecordCounts(
            diff(self.produced, before.produced), diff(self.consumed, before.consumed)
        )


def _ours(name: str, prefix: str) -> bool:
    # the raw baselines' own topics and groups are not the pipeline's
    return name.startswith(prefix) and not name.startswith((f"{prefix}-src", f"{prefix}-dst"))


async def kafka_counts(kafka: KafkaSettings, prefix: str) -> RecordCounts:
    """Totals for every topic and group whose name starts with ``prefix``."""
    admin = AIOKafkaAdminClient(**client_options(kafka))
    consumer = AIOKafkaConsumer(**client_options(kafka))
    await admin.start()
    await consumer.start()
    counts = RecordCounts()
    try:
        topics = [t for t in await admin.list_topics() if _ours(t, prefix)]
        parts = [
            TopicPartition(d["topic"], p["partition"])
            for d in await admin.describe_topics(topics)
            for p in d["partitions"]
        ]
        for tp, end in (await consumer.end_offsets(parts)).items():
            counts.produced[tp.topic] = counts.produced.get(tp.topic, 0) + end
        for group, *_ in await admin.list_consumer_groups():
            if not _ours(group, prefix):
                continue
            for tp, meta in (await admin.list_consumer_group_offsets(group)).items():
                if meta.offset >= 0:
                    key = f"{group} {tp.topic}"
                    counts.consumed[key] = counts.consumed.get(key, 0) + meta.offset
    finally:
        await consumer.stop()
        await admin.close()
    return counts


def records_per_request(
    delta: RecordCounts, units: int, client_records: int | None = None
) -> dict[str, float]:
    """Records produced and consumed per unit (a request, or a message of a many-recipient
    request); the ``client_records`` the client published (default: one per unit) are left out
    of ``produced``, as the pipeline did not write them."""
    produced = sum(delta.produced.values()) - (units if client_records is None else client_records)
    consumed = sum(delta.consumed.values())
    return {
        "produced": produced / units,
        "consumed": consumed / units,
        "total": (produced + consumed) / units,
    }
