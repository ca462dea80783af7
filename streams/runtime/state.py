"""State stores of the batch runtime: a dict per input partition, changes buffered during a batch
and written to a compacted changelog topic (same partition number) before the batch's offsets are
committed, so state and progress move together. A restart or a rebalance rebuilds a partition's
state by reading its changelog partition up to the end offset taken when recovery began (from
the mark of a table kept on disk, when it can be trusted).

Writes coalesce: a key changed many times in one batch costs one changelog record. Values are
JSON (orjson); ``None`` is a deletion (a tombstone, which compaction eventually removes)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from streams.errors import StackError
from streams.kafka.connect import start_client
from streams.kafka.topics import CHANGELOG_CONFIG
from streams.runtime.checkpoint import Mark
from streams.runtime.records import Out
from streams.runtime.tables import MemoryTables, Table, TableFactory

__all__ = ["Overlay", "Store", "ensure_changelogs"]


_DELETED = object()
_ABSENT = object()
# entries a housekeeping call looks at per store (~20-40 ms on disk tables); the runner calls it
# every few seconds, so a store is swept far faster than any stage fills it
SWEEP_BUDGET = 20_000


async def ensure_changelogs(
    client: Mapping[str, Any],
    stores: list[Store],
    partitions: int,
    replication: int,
    *,
    min_insync: int = 1,
) -> list[str]:
    """Create the changelog topics that do not exist yet; return their names. ``client``: the
    options of ``streams.kafka.config.client_options``."""
    if not stores:
        return []
    bootstrap = client["bootstrap_servers"]
    admin = AIOKafkaAdminClient(**client, request_timeout_ms=10000)
    try:
        await start_client(admin, client)
        existing = set(await admin.list_topics())
        missing = sorted({s.topic for s in stores} - existing)
        failed: list[str] = []
        created: list[str] = []
        if missing:
            config = {**CHANGELOG_CONFIG, "min.insync.replicas": str(min_insync)}
            response = await admin.create_topics(
                [NewTopic(t, partitions, replication, topic_configs=config) for t in missing]
            )
            # per-topic outcomes come back as error codes; "exists" means another made it first
            for name, code, *_ in response.topic_errors:
                if code == 0:
                    created.append(name)
                elif code != TopicAlreadyExistsError.errno:
                    failed.append(f"{name}: error {code}")
    except KafkaError as exc:
        raise StackError(f"could not check the changelog topics on {bootstrap}: {exc}") from exc
    finally:
        await admin.close()
    if failed:
        raise StackError(f"could not create changelog topics: {', '.join(failed)}")
    return sorted(created)


def _follows(mark: Mark | None, first: int) -> bool:
    """Whether changelog records from offset ``first`` on continue what ``mark`` reflects
    (one producer writes a store's partition, so its own records are contiguous)."""
    return mark is None or mark.offset + 1 == first


class Store:
    """One named store. Keys are strings; values JSON-safe objects. Each partition's entries
    live in a table from ``tables`` (in memory unless the worker hands it disk tables).

    A table holds only what the changelog holds. Writes of a batch go to ``_dirty``;
    ``changes()`` turns them into changelog records and keeps them, in order, in ``_sent``
    until the runner reports Kafka's acknowledgement (``acknowledged``), which writes them
    into the tables with their changelog offsets (the tables' marks). Reads look at the
    newest first: dirty, sent, table."""

    def __init__(self, name: str, topic: str, tables: TableFactory | None = None) -> None:
        self.name = name
        self.topic = topic
        self.cluster: str | None = None  # the Kafka cluster id, set by recovery
        self._tables = tables or MemoryTables()
        self._data: dict[int, Table] = {}
        self._dirty: dict[int, dict[str, Any]] = {}
        self._sent: deque[dict[int, dict[str, Any]]] = deque()
        self._sweep: Iterator[tuple[int, str, Any]] | None = None

    def _table(self, partition: int) -> Table:
        table = self._data.get(partition)
        if table is None:
            table = self._data[partition] = self._tables(self.name, partition)
        return table

    def open(self, partition: int, *, shared: bool = True) -> Table:
        """The partition's table, opened for recovery (TableBusyError: another process still
        has it; ``shared=False`` takes a throwaway one instead)."""
        self.drop(partition)
        table = self._data[partition] = self._tables(self.name, partition, shared=shared)
        return table

    # reads and writes during a batch
    def get(self, partition: int, key: str, default: Any = None) -> Any:
        dirty = self._dirty.get(partition)
        if dirty is not None:
            found = dirty.get(key, _ABSENT)
            if found is not _ABSENT:
                return default if found is _DELETED else found
        for layer in reversed(self._sent):
            sent = layer.get(partition)
            if sent is not None:
                found = sent.get(key, _ABSENT)
                if found is not _ABSENT:
                    return default if found is _DELETED else found
        table = self._data.get(partition)
        if table is None:
            return default
        found = table.get(key)
        return default if found is None else found

    def put(self, partition: int, key: str, value: Any) -> None:
        self._dirty.setdefault(partition, {})[key] = value

    def delete(self, partition: int, key: str) -> None:
        if self.get(partition, key) is not None:
            self._dirty.setdefault(partition, {})[key] = _DELETED

    def items(self, partition: int) -> Iterator[tuple[str, Any]]:
        """Every entry of ``partition`` (what the table has, as changed since)."""
        over: dict[str, Any] = {}
        for layer in self._sent:
            over.update(layer.get(partition, {}))
        over.update(self._dirty.get(partition, {}))
        table = self._data.get(partition)
        if table is not None:
            for key, value in table.items():
                if key in over:
                    continue
                yield key, value
        for key, value in over.items():
            if value is not _DELETED:
                yield key, value

    def partitions(self) -> list[int]:
        return list(self._data.keys() | self._dirty.keys())

    def sweep(self, expired: Callable[[str, Any], bool], budget: int = SWEEP_BUDGET) -> int:
        """Delete entries ``expired`` says are, looking at no more than ``budget`` of them and
        going on from there on the next call, so a store of millions of entries is cleaned a
        slice at a time instead of stopping the loop for a whole pass. Returns how many went."""
        deleted = 0
        for _ in range(budget):
            if self._sweep is None:
                self._sweep = self._walk()
            entry = next(self._sweep, None)
            if entry is None:
                self._sweep = None  # a pass is done; the next call starts another
                break
            partition, key, _ = entry
            if partition not in self._data:
                continue
            # judged on the newest value (a change may be waiting for its acknowledgement),
            # so a sweep never deletes what a batch has just renewed
            current = self.get(partition, key, _ABSENT)
            if current is not _ABSENT and expired(key, current):
                self.delete(partition, key)
                deleted += 1
        return deleted

    def has_changes(self) -> bool:
        """Whether anything changed since the last ``changes()``."""
        return any(self._dirty.values())

    def _walk(self) -> Iterator[tuple[int, str, Any]]:
        for partition in list(self._data):
            if partition not in self._data:
                continue
            for key, value in self.items(partition):
                yield partition, key, value

    def __len__(self) -> int:
        """Entries, exactly (it looks up every key changed since the last acknowledgement)."""
        total = 0
        for partition in self.partitions():
            table = self._data.get(partition)
            base = len(table) if table is not None else 0
            over: dict[str, Any] = {}
            for layer in self._sent:
                over.update(layer.get(partition, {}))
            over.update(self._dirty.get(partition, {}))
            for key, value in over.items():
                there = table is not None and table.get(key) is not None
                base += (value is not _DELETED) - there
            total += base
        return total

    def entries(self) -> int:
        """Entries as of the last acknowledged changes (cheap, for the metric)."""
        return sum(len(table) for table in self._data.values())

    # the runtime's side
    def changes(self) -> list[Out]:
        """The changelog records for everything changed since the last call (one per key).
        They are held until ``acknowledged``."""
        dirty, self._dirty = self._dirty, {}
        if not dirty:
            return []
        self._sent.append(dirty)
        return [
            Out(
                self.topic,
                key.encode(),
                None if value is _DELETED else orjson.dumps(value),
                partition=partition,
            )
            for partition, changed in dirty.items()
            for key, value in changed.items()
        ]

    def acknowledged(self, offsets: Mapping[int, int], now: float | None = None) -> None:
        """Kafka acknowledged the oldest ``changes()`` not yet acknowledged: write them into
        the tables, marked with ``offsets`` (per partition, the last changelog offset)."""
        if not self._sent:
            return
        layer = self._sent.popleft()
        written = time.time() if now is None else now
        for partition, changed in layer.items():
            # (a partition that left meanwhile is no longer in the layer)
            table = self._table(partition)
            offset = offsets.get(partition)
            mark = None
            if offset is not None and table.persistent:
                mark = Mark(self.topic, partition, offset, self.cluster, written)
                if not _follows(table.mark(), offset - len(changed) + 1):
                    # another owner wrote to the changelog in between (this process lost the
                    # partition and did not know yet): the table lacks those records, so its
                    # mark stays where it was and a recovery reads them from there
                    mark = None
            table.write(
                {k: None if v is _DELETED else v for k, v in changed.items()},
                mark,
            )

    @staticmethod
    def decode(value: bytes | None) -> Any:
        """A changelog record's value as a table holds it (None: a deletion)."""
        return None if value is None else orjson.loads(value)

    def restore(self, partition: int, key: bytes | None, value: bytes | None) -> None:
        """Apply one changelog record during recovery."""
        if key is not None:
            self._table(partition).write({key.decode(): self.decode(value)}, None)

    def begin_recovery(self, partition: int) -> None:
        """Recover ``partition`` from the changelog's start, into an empty table."""
        self.open(partition).clear()

    def drop(self, partition: int) -> None:
        """The partition went to another worker: its state is theirs now."""
        if self._sweep is not None:
            self._sweep = None  # it may be reading this partition's table
        table = self._data.pop(partition, None)
        if table is not None:
            table.close()
        self._dirty.pop(partition, None)
        for layer in self._sent:
            layer.pop(partition, None)

    def close(self) -> None:
        for partition in list(self._data):
            self.drop(partition)


class Overlay:
    """Writes of one batch over a store, applied only when the whole batch was decided: a batch
    that raises leaves the store as it was, so deciding it again record by record counts
    nothing twice."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._writes: dict[tuple[int, str], Any] = {}

    def get(self, partition: int, key: str, default: Any = None) -> Any:
        found = self._writes.get((partition, key), self)
        if found is self:
            return self.store.get(partition, key, default)
        return default if found is _DELETED else found

    def put(self, partition: int, key: str, value: Any) -> None:
        self._writes[(partition, key)] = value

    def delete(self, partition: int, key: str) -> None:
        self._writes[(partition, key)] = _DELETED

    def apply(self) -> None:
        for (partition, key), value in self._writes.items():
            if value is _DELETED:
                self.store.delete(partition, key)
            else:
                self.store.put(partition, key, value)
        self._writes = {}
