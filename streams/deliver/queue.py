"""The mail queue as Kafka topics: the control feed every worker folds, and the queue index.

``ControlFeed`` reads the single-partition control topic from its start in every worker (no
consumer group: each worker must obey every command) and keeps a ``ControlState``.

The queue index (``postwire.queue``, compacted, key = task id) holds the latest state of each
deferred or held task, and for a held task the task itself, since a held task sits in no other
topic until it is released. ``postwire queue list`` is a read of it to its end, like mailq
scanning the queue directories.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from streams.contract.records import DeliveryTask
from streams.deliver.control import Command, ControlState, TaskMeta
from streams.errors import StackError
from streams.kafka.config import KafkaSettings, client_options
from streams.kafka.connect import start_client
from streams.kafka.read import Follower, read_all

__all__ = [
    "ControlFeed",
    "index_entry",
    "publish_command",
    "task_meta_of_entry",
]

log = logging.getLogger("postwire.deliver")


def index_entry(
    task: DeliveryTask,
    state: str,
    *,
    lane: str,
    reason: str | None,
    next_attempt_ms: int | None,
    raw: bytes | None = None,
) -> bytes:
    """The queue index value of a task: what mailq shows, plus the task itself when held."""
    entry: dict[str, Any] = {
        "state": state,
        "task_id": task["task_id"],
        "message_id": task["message_id"],
        "tenant": task["tenant"],
        "domain": task["domain"],
        "recipient": task["recipient"]["email"],
        "sender": task["from"]["email"],
        "lane": lane,
        "attempt": task["attempt"],
        "reason": reason,
        "next_attempt_ms": next_attempt_ms,
        "created_ms": int(task["created_at"].timestamp() * 1000),
    }
    if raw is not None:
        entry["task"] = base64.b64encode(raw).decode()
    return orjson.dumps(entry)


def task_meta_of_entry(entry: dict[str, Any]) -> TaskMeta:
    return TaskMeta(
        entry["task_id"], entry["message_id"], entry["tenant"], entry["domain"], entry["created_ms"]
    )


async def publish_command(kafka: KafkaSettings, command: Command) -> None:
    options = client_options(kafka)
    producer = AIOKafkaProducer(**options, acks="all", enable_idempotence=True)
    try:
        await start_client(producer, options)
        await producer.send_and_wait(kafka.topics.control, command.encode(), key=b"control")
    except KafkaError as exc:
        raise StackError(f"cannot publish to {kafka.topics.control}: {exc}") from exc
    finally:
        await producer.stop()


class ControlFeed:
    """Every control command, folded into ``state``; ``ready`` once the backlog is read."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.state = ControlState()
        self._changed = asyncio.Event()
        self._follower = Follower(kafka, kafka.topics.control, self._record, "control feed")
        self.ready = self._follower.ready

    def start(self) -> None:
        self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()

    async def wait_changed(self, timeout: float) -> None:
        """Sleep up to ``timeout`` s, waking early when a command arrives (a flush, a hold)."""
        self._changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def preload(self) -> None:
        """Read every command so far before the worker consumes anything (blocking, own loop).

        A stage that waited for this inside its faust agent could stall: faust seeks the
        agent's stream to its committed offsets at the end of table recovery, and a stream
        parked on an event at that moment may never be woken again."""

        async def load() -> None:
            for raw in await read_all(self.kafka, self.kafka.topics.control):
                self.apply(raw)

        try:
            asyncio.run(load())
        except StackError as exc:
            log.warning("control commands not loaded at start, delivery waits for them: %s", exc)
            return
        self.ready.set()

    def apply(self, raw: bytes) -> None:
        try:
            command = Command.decode(raw)
        except ValueError as exc:
            log.warning("ignoring a control record: %s", exc)
            return
        if self.state.apply(command):
            self._changed.set()

    def _record(self, _key: bytes | None, value: bytes | None) -> None:
        if value is not None:
            self.apply(value)
