"""The stage runtime against the real broker: a store rebuilt from its changelog equals the one
that wrote it, and a changelog whose early records compaction or retention removed still
recovers (it finishes at the end offset instead of waiting for a record that never comes)."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaProducer

from streams.kafka.config import client_options
from streams.runtime.producer import BatchProducer
from streams.runtime.recovery import recover
from streams.runtime.state import Store, ensure_changelogs
from streams.settings import Settings

pytestmark = pytest.mark.integration


async def test_a_store_comes_back_from_its_changelog(stack: Settings) -> None:
    topic = f"{stack.app_id}-rt{uuid.uuid4().hex[:6]}-changelog"
    written = Store("rt", topic)
    assert await ensure_changelogs(client_options(stack.kafka), [written], 2, 1) == [topic]
    assert await ensure_changelogs(client_options(stack.kafka), [written], 2, 1) == []  # idempotent
    for i in range(500):
        written.put(i % 2, f"k{i % 50}", {"n": i})
    written.put(0, "gone", 1)
    producer = BatchProducer(client_options(stack.kafka))
    await producer.start()
    try:
        await producer.settle(await producer.send(written.changes()))
        written.delete(0, "gone")
        await producer.settle(await producer.send(written.changes()))
    finally:
        await producer.stop()
    recovered = Store("rt", topic)
    read = await recover(client_options(stack.kafka), [recovered], {0, 1})
    assert read == 52  # one record per key per flush: 50 keys, "gone", its tombstone
    for p in (0, 1):
        assert dict(recovered.items(p)) == dict(written.items(p))
    assert recovered.get(0, "gone") is None


async def test_recovery_of_a_partition_with_nothing_left_finishes(stack: Settings) -> None:
    topic = f"{stack.app_id}-rt{uuid.uuid4().hex[:6]}-changelog"
    store = Store("rt", topic)
    await ensure_changelogs(client_options(stack.kafka), [store], 1, 1)
    # records whose value is not JSON for this store: recovery must still end at the end offset
    producer = AIOKafkaProducer(**client_options(stack.kafka), acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"a": 1}', key=b"a", partition=0)
    finally:
        await producer.stop()
    assert await recover(client_options(stack.kafka), [store], {0}) == 1
    assert store.get(0, "a") == {"a": 1}
    assert await recover(client_options(stack.kafka), [Store("x", topic)], set()) == 0
