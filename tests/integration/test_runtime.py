"""The stage runtime against the real broker: a store rebuilt from its changelog equals the one
that wrote it, a table kept on disk reads only what came after its mark, a changelog whose early
records compaction or retention removed still recovers (it finishes at the end offset instead of
waiting for a record that never comes), and a recovery that cannot progress raises."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete

from streams.errors import RecoveryStalledError
from streams.kafka.config import client_options
from streams.kafka.topics import CHANGELOG_CONFIG
from streams.runtime.producer import BatchProducer
from streams.runtime.records import Consumed
from streams.runtime.recovery import recover
from streams.runtime.runner import RunnerConfig, StageRunner
from streams.runtime.stage import Step
from streams.runtime.state import Store, ensure_changelogs
from streams.runtime.tables import DiskTables, Table
from streams.settings import Settings
from streams.stack.stack import Stack
from tests.integration.helpers import eventually

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


async def _write(
    settings: Settings, store: Store, items: dict[str, object], partition: int
) -> None:
    """Changes through the runtime's producer, acknowledged into ``store``'s table (as the
    runner does after Kafka acknowledged a checkpoint)."""
    for key, value in items.items():
        store.put(partition, key, value)
    producer = BatchProducer(client_options(settings.kafka))
    await producer.start()
    try:
        futures = await producer.send(store.changes())
        await producer.settle(futures)
        store.acknowledged({partition: max(f.result().offset for f in futures)})
    finally:
        await producer.stop()


async def _changelog(settings: Settings, **config: str) -> str:
    topic = f"{settings.app_id}-rt{uuid.uuid4().hex[:6]}-changelog"
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=CHANGELOG_CONFIG | config)])
    finally:
        await admin.close()
    return topic


async def test_a_table_kept_on_disk_reads_only_what_came_after_its_mark(
    stack: Settings, tmp_path: Path
) -> None:
    client = client_options(stack.kafka)
    topic = await _changelog(stack)
    root = tmp_path / "state"
    first = Store("rt", topic, DiskTables(root, "app"))
    assert await recover(client, [first], {0}) == 0
    await _write(stack, first, {f"k{i}": i for i in range(300)}, 0)
    first.close()  # the worker stops (its table stays, marked)
    writer = Store("rt", topic)  # another owner meanwhile: 100 more records
    await _write(stack, writer, {f"k{i}": -i for i in range(250, 350)}, 0)
    again = Store("rt", topic, DiskTables(root, "app"))
    assert await recover(client, [again], {0}) == 100
    expected = {f"k{i}": i for i in range(250)} | {f"k{i}": -i for i in range(250, 350)}
    assert dict(again.items(0)) == expected
    assert len(again) == 350
    again.close()


async def test_recovery_after_the_changelog_start_moved_past_the_mark_finishes(
    stack: Settings, tmp_path: Path
) -> None:
    """The issue's hang: the changelog lost its beginning (retention, deleteRecords) while
    the worker was down. The table cannot go on from its mark; it is rebuilt from the new
    start, and recovery ends at the end offset."""
    client = client_options(stack.kafka)
    # the broker refuses deleteRecords on a compact-only log (ours): this one also has
    # retention, as an operator may set, or as faust's windowed changelogs have
    topic = await _changelog(stack, **{"cleanup.policy": "compact,delete"})
    root = tmp_path / "state"
    first = Store("rt", topic, DiskTables(root, "app"))
    await recover(client, [first], {0})
    await _write(stack, first, {f"old{i}": i for i in range(200)}, 0)  # offsets 0-199
    first.close()
    writer = Store("rt", topic)
    await _write(stack, writer, {f"new{i}": i for i in range(100)}, 0)  # offsets 200-299
    admin = AIOKafkaAdminClient(**client)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, 0): RecordsToDelete(250)})
    finally:
        await admin.close()
    again = Store("rt", topic, DiskTables(root, "app"))
    began = time.monotonic()
    assert await recover(client, [again], {0}, stall_timeout=10.0) == 50
    assert time.monotonic() - began < 10.0
    assert dict(again.items(0)) == {f"new{i}": i for i in range(50, 100)}
    again.close()


async def test_a_recovery_that_cannot_progress_raises_instead_of_hanging(
    pipeline: Stack, tmp_path: Path
) -> None:
    """The broker freezes (SIGSTOP) after the first records arrive: nothing more can be read,
    and recovery raises RecoveryStalledError after its stall timeout instead of waiting."""
    if pipeline.kafka is None or pipeline.kafka.process.pid is None:
        pytest.skip("needs the embedded broker (it is frozen for a few seconds)")
    broker = pipeline.kafka.process.pid
    stack = pipeline.settings
    client = client_options(stack.kafka)
    topic = await _changelog(stack)
    producer = AIOKafkaProducer(**client, acks="all", linger_ms=20)
    await producer.start()
    try:
        value = b'"' + b"x" * 2000 + b'"'
        futures = [
            await producer.send(topic, value, key=f"k{i}".encode(), partition=0)
            for i in range(6000)  # 12 MB: many fetches of at most 1 MB
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()

    class Freezing(Store):
        def decode(self, value: bytes | None) -> object:
            if not frozen:
                os.kill(broker, signal.SIGSTOP)
                frozen.append(True)
            return super().decode(value)

    frozen: list[bool] = []
    store = Freezing("rt", topic)
    began = time.monotonic()
    try:
        with pytest.raises(RecoveryStalledError, match=rf"no progress for 2s on {topic}\[0\]"):
            await recover(client, [store], {0}, stall_timeout=2.0)
    finally:
        os.kill(broker, signal.SIGCONT)
    assert frozen
    assert time.monotonic() - began < 30.0
    assert 0 < len(store) < 6000


class _Counting:
    """A batch stage that counts its records in its store, and notes how much its runner had
    processed and not committed when each batch came."""

    name = "count"
    max_batch = 5
    concurrency = 0
    writes: tuple[str, ...] = ()

    def __init__(self, topic: str, store: Store) -> None:
        self.inputs: tuple[str, ...] = (topic,)
        self.store = store
        self.stores: tuple[Store, ...] = (store,)
        self.runner: StageRunner | None = None
        self.uncommitted: list[int] = []

    async def process(self, batch: Sequence[Consumed], now: datetime) -> Step:
        assert self.runner is not None
        self.uncommitted.append(self.runner.budget.records)
        for record in batch:
            self.store.put(record.partition, "n", self.store.get(record.partition, "n", 0) + 1)
        return Step()

    def housekeeping(self, now: datetime) -> None:
        return None

    def crashed(self, record: Consumed, error: Exception, now: datetime) -> Step:
        raise error


async def test_a_stage_stops_fetching_when_too_much_is_uncommitted(
    stack: Settings, tmp_path: Path
) -> None:
    """A minute between checkpoints, yet never more than 10 records uncommitted: the budget
    checkpoints and waits for the commit before the next fetch. The table takes the count only
    with the changelog record's offset."""
    client = client_options(stack.kafka)
    source = await _changelog(stack)  # any one-partition topic will do as the input
    changelog = await _changelog(stack)
    producer = AIOKafkaProducer(**client, acks="all")
    await producer.start()
    try:
        for i in range(50):
            await producer.send(source, b"x", key=str(i).encode(), partition=0)
        await producer.flush()
    finally:
        await producer.stop()
    disk = DiskTables(tmp_path / "state", "app")
    stage = _Counting(source, Store("count", changelog, disk))
    output = BatchProducer(client)
    await output.start()
    config = RunnerConfig(
        client,
        f"{stack.app_id}-count-{uuid.uuid4().hex[:6]}",
        commit_interval=60.0,
        max_uncommitted_records=10,
        max_uncommitted_seconds=60.0,
    )
    runner = StageRunner(stage, config, output)
    stage.runner = runner
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:

        async def counted() -> object:
            return stage.store.get(0, "n")

        assert await eventually(counted, lambda n: n == 50) == 50
        assert len(stage.uncommitted) >= 10  # batches of 5
        assert max(stage.uncommitted) < 10  # without the budget: up to 45
    finally:
        stop.set()
        await asyncio.wait_for(task, 60.0)
        await output.stop()
    table = stage.store.open(0)
    found = table.mark()
    assert found is not None
    assert found.topic == changelog
    assert table.get("n") == 50
    stage.store.close()
    disk.close()


class _Unopenable:
    """Tables that cannot be opened (a full or read-only disk)."""

    def __call__(self, store: str, partition: int, *, shared: bool = True) -> Table:
        raise OSError(f"cannot open the table of {store}[{partition}]: read-only file system")


async def test_a_recovery_that_fails_ends_the_runner_instead_of_leaving_it_unowned(
    stack: Settings,
) -> None:
    """aiokafka swallows what a rebalance listener raises; the runner must not: its run ends
    with the failure (so the process exits and is restarted) instead of waiting unowned."""
    client = client_options(stack.kafka)
    source = await _changelog(stack)
    changelog = await _changelog(stack)
    stage = _Counting(source, Store("count", changelog, _Unopenable()))
    output = BatchProducer(client)
    await output.start()
    runner = StageRunner(
        stage, RunnerConfig(client, f"{stack.app_id}-x-{uuid.uuid4().hex[:6]}"), output
    )
    stage.runner = runner
    try:
        with pytest.raises(OSError, match="read-only file system"):
            await asyncio.wait_for(runner.run(asyncio.Event()), 60.0)
    finally:
        await output.stop()
    assert runner.fatal is not None
    assert not runner.ready
