"""Where a store keeps one partition's entries: a dict (tests, replay, small stores) or a
RocksDB directory on local disk (the workers), so state that grows with a TTL (a gate dedup
key per request for a day, a ledger entry per message for a week) lives off the Python heap.

A disk table is only a cache of its changelog: it is created empty when the partition is
assigned, filled by recovery, and destroyed when the partition leaves or the process stops.
That is why it writes no WAL (a crash loses nothing the changelog does not have) and why each
process keeps its tables in a directory of its own."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, cast

import orjson

from streams.procs import pid_alive

__all__ = ["DiskTables", "MemoryTables", "Table", "TableFactory"]

# decoded values of recently used keys, per disk table: the gate reads its partition
# watermark and a tenant's windows for every request
HOT_ENTRIES = 4096
MEMTABLE_BYTES = 512 * 1024
BLOCK_CACHE_BYTES = 4 * 1024 * 1024  # shared by every table of a process


_ABSENT = object()


class Table(Protocol):
    def get(self, key: str) -> Any: ...

    def put(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> bool:
        """Remove ``key``; whether it was there."""
        ...

    def items(self) -> Iterator[tuple[str, Any]]:
        """Every entry; deleting entries while iterating is allowed."""
        ...

    def __len__(self) -> int: ...

    def close(self) -> None:
        """Forget everything (the partition left, or the process stops)."""
        ...


class TableFactory(Protocol):
    def __call__(self, store: str, partition: int) -> Table: ...


class _MemoryTable:
    def __init__(self) -> None:
        self._data: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self._data.get(key)

    def put(self, key: str, value: Any) -> None:
        self._data[key] = value

    def delete(self, key: str) -> bool:
        return self._data.pop(key, _ABSENT) is not _ABSENT

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(list(self._data.items()))

    def __len__(self) -> int:
        return len(self._data)

    def close(self) -> None:
        self._data = {}


class MemoryTables:
    def __call__(self, store: str, partition: int) -> Table:
        return _MemoryTable()


class _DiskTable:
    def __init__(self, path: Path, cache: Any) -> None:
        from rocksdict import BlockBasedOptions, Options, Rdict, WriteOptions

        shutil.rmtree(path, ignore_errors=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        table = BlockBasedOptions()
        table.set_bloom_filter(10, False)  # most dedup lookups are for keys never seen
        table.set_block_cache(cache)
        options.set_block_based_table_factory(table)
        # small memtables: a process holds a table per partition and store, and RocksDB's
        # default (64 MB, two of them) would be the worker's largest allocation
        options.set_write_buffer_size(MEMTABLE_BYTES)
        options.set_max_write_buffer_number(2)
        self._path = path
        self._options = options
        self._db = Rdict(str(path), options)
        writes = WriteOptions()
        # the changelog is the log; (a property at run time, a method in rocksdict's stubs)
        writes.disable_wal = True  # type: ignore[method-assign,assignment]
        self._db.set_write_options(writes)
        self._hot: dict[str, Any] = {}
        self._count = 0

    def get(self, key: str) -> Any:
        hot = self._hot.get(key)
        if hot is not None:
            return hot
        raw = self._db.get(key.encode())
        if raw is None:
            return None
        value = orjson.loads(raw)
        self._remember(key, value)
        return value

    def _remember(self, key: str, value: Any) -> None:
        if len(self._hot) >= HOT_ENTRIES:
            self._hot.clear()
        self._hot[key] = value

    def put(self, key: str, value: Any) -> None:
        raw = key.encode()
        if key not in self._hot and self._db.get(raw) is None:
            self._count += 1
        self._db[raw] = orjson.dumps(value)
        self._remember(key, value)

    def delete(self, key: str) -> bool:
        raw = key.encode()
        if self._hot.pop(key, None) is None and self._db.get(raw) is None:
            return False
        self._count -= 1
        del self._db[raw]
        return True

    def items(self) -> Iterator[tuple[str, Any]]:
        for raw, value in self._db.items():
            yield cast(bytes, raw).decode(), orjson.loads(cast(bytes, value))

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        from rocksdict import Rdict

        self._hot = {}
        self._db.close()
        with contextlib.suppress(Exception):
            Rdict.destroy(str(self._path), self._options)
        shutil.rmtree(self._path, ignore_errors=True)


class DiskTables:
    """Tables in ``<root>/<pid>-<random>/<store>-<partition>``. Directories left by processes
    that are gone (a crash, a kill -9) are removed when the next one starts."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.iterdir():
            pid = stale.name.split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        self.directory = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root))
        from rocksdict import Cache

        self._cache = Cache(BLOCK_CACHE_BYTES)

    def __call__(self, store: str, partition: int) -> Table:
        return _DiskTable(self.directory / f"{store}-{partition}", self._cache)

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)
