"""Where a store keeps one partition's entries: a dict (tests, replay, small stores) or a
RocksDB directory on local disk (the workers), so state that grows with a TTL (a gate dedup
key per request for a day, a ledger entry per message for a week) lives off the Python heap.

A table holds only what its changelog holds: the store writes into it only changes Kafka has
acknowledged, together with a *mark* (the changelog offset those changes reach) in the same
write. A disk table outlives its process (``<root>/<app id>/<store>-<partition>``), so a
restart reads the changelog from the mark on instead of from its beginning
(``streams.runtime.checkpoint`` decides whether a mark can be trusted).

Why no WAL and no flush per write: RocksDB without a WAL loses, on a kill -9, the writes still
in its memtables, and keeps a prefix of the write batches (one column family, batches applied
whole). The mark is a key of the same column family, written in the same batch as the data it
describes, so whatever prefix survives carries the mark that matches it; recovery reads the
lost tail from the changelog again. (A second column family for the mark would not do: without
a WAL each family flushes on its own.)

Two processes of the same role on one machine share the directories; a partition is owned by
one at a time, and an ``fcntl`` lock beside each table keeps a second live process out."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any, Protocol, cast

import orjson

from streams.procs import pid_alive
from streams.runtime.checkpoint import Mark

__all__ = ["DiskTables", "MemoryTables", "Table", "TableBusyError", "TableFactory"]

log = logging.getLogger("postwire.runtime")

# decoded values of recently used keys, per disk table: the gate reads its partition
# watermark and a tenant's windows for every request
HOT_ENTRIES = 4096
MEMTABLE_BYTES = 512 * 1024
BLOCK_CACHE_BYTES = 4 * 1024 * 1024  # shared by every table of a process
# the mark's key: no store key starts with a NUL (they are decoded changelog keys the stages
# build from names and ids), and items() skips it
MARK_KEY = b"\x00postwire.mark"
PRIVATE = "private"  # tables of one process only (the shared one was locked), removed after it


_ABSENT = object()
# what tempfile.mkdtemp(prefix=f"{pid}-") names a process's private directory
_PRIVATE_DIR = re.compile(r"(\d+)-[a-z0-9_]{8}")


class TableBusyError(Exception):
    """Another live process holds this table (a partition not yet released by its last owner)."""


class Table(Protocol):
    persistent: bool  # whether what it holds (and its mark) outlives the process

    def get(self, key: str) -> Any: ...

    def write(self, changes: Mapping[str, Any], mark: Mark | None) -> None:
        """Apply ``changes`` (a value of None deletes) and, if given, set ``mark``, at once."""
        ...

    def mark(self) -> Mark | None:
        """The changelog position this table reflects, if it keeps one."""
        ...

    def clear(self) -> None:
        """Forget every entry and the mark (it is read again from the changelog's start)."""
        ...

    def items(self) -> Iterator[tuple[str, Any]]:
        """Every entry; writing while iterating is allowed."""
        ...

    def __len__(self) -> int: ...

    def close(self) -> None:
        """Let go of the table (the partition left, or the process stops): a memory table
        forgets, a disk table stays on disk, marked, for the next owner."""
        ...


class TableFactory(Protocol):
    def __call__(self, store: str, partition: int, *, shared: bool = True) -> Table:
        """The table of ``store``'s ``partition``; ``shared=False``: a throwaway one of this
        process. Raises TableBusyError when another process holds the shared one."""
        ...


class _MemoryTable:
    persistent = False

    def __init__(self) -> None:
        self._data: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        return self._data.get(key)

    def write(self, changes: Mapping[str, Any], mark: Mark | None) -> None:
        data = self._data
        for key, value in changes.items():
            if value is None:
                data.pop(key, None)
            else:
                data[key] = value

    def mark(self) -> Mark | None:
        return None

    def clear(self) -> None:
        self._data = {}

    def items(self) -> Iterator[tuple[str, Any]]:
        return iter(list(self._data.items()))

    def __len__(self) -> int:
        return len(self._data)

    def close(self) -> None:
        self._data = {}


class MemoryTables:
    def __call__(self, store: str, partition: int, *, shared: bool = True) -> Table:
        return _MemoryTable()


def _options(cache: Any) -> Any:
    from rocksdict import BlockBasedOptions, Options

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
    return options


def _write_options() -> Any:
    from rocksdict import WriteOptions

    writes = WriteOptions()
    # see the module doc: the mark travels with the data (a property at run time, a method
    # in rocksdict's stubs)
    writes.disable_wal = True  # type: ignore[method-assign,assignment]
    return writes


class _DiskTable:
    persistent = True

    def __init__(self, path: Path, cache: Any, lock: IO[bytes] | None, *, keep: bool) -> None:
        from rocksdict import Rdict

        self._path = path
        self._lock = lock
        self._keep = keep
        self._options = _options(cache)
        self._db = Rdict(str(path), self._options)
        self._writes = _write_options()
        self._db.set_write_options(self._writes)
        self._hot: dict[str, Any] = {}
        self._mark = self._read_mark()
        self._count = self._mark_count()

    def _read_mark(self) -> Mark | None:
        raw = self._db.get(MARK_KEY)
        if raw is None:
            return None
        try:
            return Mark.from_json(cast(bytes, raw))
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: treated as no mark (the table is rebuilt)

    def _mark_count(self) -> int:
        if self._mark is not None and self._mark.entries is not None:
            return self._mark.entries
        return sum(1 for _ in self.items())

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

    def write(self, changes: Mapping[str, Any], mark: Mark | None) -> None:
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        count = self._count
        db, hot = self._db, self._hot
        for key, value in changes.items():
            raw = key.encode()
            existed = key in hot or db.get(raw) is not None
            if value is None:
                hot.pop(key, None)
                if existed:
                    count -= 1
                    batch.delete(raw)
            else:
                if not existed:
                    count += 1
                batch.put(raw, orjson.dumps(value))
                self._remember(key, value)
        if mark is not None:
            mark = mark.counting(count)
            batch.put(MARK_KEY, mark.to_json())
            self._mark = mark
        db.write(batch, self._writes)
        self._count = count

    def mark(self) -> Mark | None:
        return self._mark

    def clear(self) -> None:
        from rocksdict import Rdict

        self._db.close()
        with contextlib.suppress(Exception):
            Rdict.destroy(str(self._path), self._options)
        shutil.rmtree(self._path, ignore_errors=True)
        self._db = Rdict(str(self._path), self._options)
        self._db.set_write_options(self._writes)
        self._hot, self._mark, self._count = {}, None, 0

    def items(self) -> Iterator[tuple[str, Any]]:
        for raw, value in self._db.items():
            if raw == MARK_KEY:
                continue
            yield cast(bytes, raw).decode(), orjson.loads(cast(bytes, value))

    def __len__(self) -> int:
        return self._count

    def close(self) -> None:
        from rocksdict import Rdict

        self._hot = {}
        if self._keep:
            # written to SST files now, so a clean stop loses nothing and the next start
            # reads only what came after the mark
            with contextlib.suppress(Exception):
                self._db.flush(True)
            self._db.close()
        else:
            self._db.close()
            with contextlib.suppress(Exception):
                Rdict.destroy(str(self._path), self._options)
            shutil.rmtree(self._path, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None


class DiskTables:
    """Tables in ``<root>/<app id>/<store>-<partition>``, kept across restarts and locked
    (``<store>-<partition>.lock``) while a process has them open. A table whose lock another
    live process holds is replaced by a throwaway one under ``<root>/<app id>/private/<pid>-*``
    (rebuilt from its changelog's start, removed when done); those of processes that are gone
    are removed when the next one starts, and so are the per-process directories
    (``<root>/<pid>-*``) of versions that kept no table across a restart."""

    def __init__(self, root: Path, app_id: str = "postwire") -> None:
        self.directory = root / app_id
        self.directory.mkdir(parents=True, exist_ok=True)
        _remove_dead(root, keep=self.directory)
        _remove_dead(self.directory / PRIVATE)
        self._private: Path | None = None
        from rocksdict import Cache

        self._cache = Cache(BLOCK_CACHE_BYTES)

    def __call__(self, store: str, partition: int, *, shared: bool = True) -> Table:
        name = f"{store}-{partition}"
        if not shared:
            return _DiskTable(self._private_dir() / name, self._cache, None, keep=False)
        lock = _lock(self.directory / f"{name}.lock")
        try:
            return _DiskTable(self.directory / name, self._cache, lock, keep=True)
        except BaseException:
            lock.close()
            raise

    def _private_dir(self) -> Path:
        if self._private is None:
            parent = self.directory / PRIVATE
            parent.mkdir(exist_ok=True)
            self._private = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))
        return self._private

    def close(self) -> None:
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None


def _lock(path: Path) -> IO[bytes]:
    handle = path.open("ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise TableBusyError(f"{path} is held by another process") from None
    except BaseException:
        handle.close()
        raise
    return handle


def _remove_dead(parent: Path, keep: Path | None = None) -> None:
    """Remove ``<pid>-*`` directories of processes that are gone (never ``keep``, an app id
    that happens to look like one)."""
    if not parent.is_dir():
        return
    for stale in parent.iterdir():
        found = _PRIVATE_DIR.fullmatch(stale.name)
        if stale == keep or found is None:
            continue  # not a directory mkdtemp made for a process (another app id, say)
        if stale.is_dir() and not pid_alive(int(found[1])):
            shutil.rmtree(stale, ignore_errors=True)
