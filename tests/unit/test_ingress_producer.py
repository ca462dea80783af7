"""The ingress producer's failure classes, and its state when no producer can be started."""

from __future__ import annotations

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NotLeaderForPartitionError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordListTooLargeError,
)

from streams.api.producer import IngressProducer, classify
from tests.conftest import free_port


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (KafkaTimeoutError(), "timeout"),
        (TimeoutError(), "timeout"),
        (MessageSizeTooLargeError(), "too_large"),
        (RecordListTooLargeError(), "too_large"),
        (OutOfOrderSequenceNumber(), "unwritten"),
        (ProducerFenced(), "unwritten"),
        (NotLeaderForPartitionError(), "failed"),
        (KafkaConnectionError(), "failed"),
    ],
)
def test_failures_are_classified(error: BaseException, kind: str) -> None:
    assert classify(error) == kind


async def test_without_kafka_it_does_not_start_and_says_why() -> None:
    bootstrap = f"127.0.0.1:{free_port()}"  # nobody listens there
    client = {"bootstrap_servers": bootstrap}
    producer = IngressProducer(client, ["t.requests"], client, timeout=1.0)
    with pytest.raises(KafkaError, match="no Kafka producer"):
        await producer.start()
    ok, health = producer.health()
    assert not ok
    assert health["state"] == "down"
    assert "KafkaConnectionError" in health["reason"]
    await producer.stop()
