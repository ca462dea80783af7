"""The record limit: the tightest topic of the flow, less the headroom the gate needs."""

from __future__ import annotations

import pytest

from streams.errors import RecordTooLargeError
from streams.kafka.config import TopicNames
from streams.kafka.limits import (
    DEFAULT_LIMIT,
    HEADROOM,
    MAX_BATCH_BYTES,
    RecordLimit,
    flow_topics,
    limit_of,
    record_size,
)


def test_the_tightest_topic_sets_the_limit() -> None:
    limit = limit_of({"p.requests": 1_048_588, "p.deliveries": 500_000, "p.rejections": 2_000_000})
    assert limit == RecordLimit(500_000, "p.deliveries")
    assert limit.request_bytes == 500_000 - HEADROOM
    assert "p.deliveries" in limit.reason()
    assert limit_of({}) is DEFAULT_LIMIT


def test_every_topic_a_request_travels_is_asked() -> None:
    topics = TopicNames("p")
    assert set(flow_topics(topics)) == {
        topics.requests,
        topics.accepted,
        topics.deferred,
        topics.deliveries,
        topics.deliveries_tx,
        topics.rejections,
    }


def test_check_counts_kafkas_framing_key_and_headers() -> None:
    limit = RecordLimit(HEADROOM + 1000, "t")
    value = b"v" * (limit.request_bytes - record_size(b"key", b""))
    while record_size(b"key", value) > limit.request_bytes:  # the length's varint grew
        value = value[:-1]
    limit.check(b"key", value)
    with pytest.raises(RecordTooLargeError):
        limit.check(b"key", value + b"v" * 2)
    with pytest.raises(RecordTooLargeError) as raised:
        limit.check(b"key", value, [("postwire-signature", b"s" * 10)])
    assert raised.value.limit == limit.request_bytes
    assert raised.value.size > limit.request_bytes
    assert raised.value.code == "limits.record_size"


def test_producers_are_sized_by_the_limit() -> None:
    assert RecordLimit(100_000, "t").producer_config() == {
        "max_request_size": 100_000,
        "max_batch_size": 100_000,  # a batch is measured whole against max.message.bytes
    }
    assert DEFAULT_LIMIT.producer_config()["max_batch_size"] == MAX_BATCH_BYTES
