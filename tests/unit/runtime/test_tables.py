import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.runtime.checkpoint import Mark
from streams.runtime.state import Overlay, Store
from streams.runtime.tables import DiskTables, MemoryTables, TableBusyError, TableFactory


@pytest.fixture(params=["memory", "disk"])
def tables(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TableFactory]:
    if request.param == "memory":
        yield MemoryTables()
        return
    disk = DiskTables(tmp_path / "state", "app")
    yield disk
    disk.close()


def mark(offset: int, topic: str = "app-gate-changelog", partition: int = 0) -> Mark:
    return Mark(topic, partition, offset, "cluster-1", 1000.0)


def test_a_table_reads_what_was_written_and_forgets_deletions(tables: TableFactory) -> None:
    table = tables("gate", 0)
    table.write({"d:t\x1fk1": {"request_id": "r1", "expires": 10.0}, "w:requests:0": 41}, None)
    table.write({"w:requests:0": 42}, None)
    assert table.get("d:t\x1fk1") == {"request_id": "r1", "expires": 10.0}
    assert table.get("w:requests:0") == 42
    assert table.get("absent") is None
    assert len(table) == 2
    table.write({"d:t\x1fk1": None, "never there": None}, None)
    assert table.get("d:t\x1fk1") is None
    assert len(table) == 1
    table.close()


def test_entries_can_be_written_while_iterating(tables: TableFactory) -> None:
    table = tables("gate", 1)
    table.write({f"k{i:02d}": {"i": i} for i in range(50)}, None)
    for key, value in table.items():
        if value["i"] % 2:
            table.write({key: None}, None)
    assert sorted(k for k, _ in table.items()) == [f"k{i:02d}" for i in range(0, 50, 2)]
    assert len(table) == 25
    table.close()


def test_a_store_writes_into_its_tables_only_what_kafka_acknowledged(
    tables: TableFactory,
) -> None:
    store = Store("gate", "app-gate-changelog", tables)
    store.cluster = "cluster-1"
    table = store.open(0)
    overlay = Overlay(store)
    overlay.put(0, "r:t", {"second": [1, 2]})
    overlay.put(0, "r:t", {"second": [1, 3]})
    overlay.apply()
    assert store.get(0, "r:t") == {"second": [1, 3]}
    assert table.get("r:t") is None  # not in the changelog yet
    [change] = store.changes()
    assert (change.key, change.partition) == (b"r:t", 0)
    store.put(0, "next", 1)
    assert store.get(0, "r:t") == {"second": [1, 3]}  # sent, not acknowledged: still read
    assert len(store) == 2
    store.acknowledged({0: 41}, now=2000.0)
    assert table.get("r:t") == {"second": [1, 3]}
    assert table.get("next") is None  # a later batch's change waits for its own ack
    if table.persistent:
        assert table.mark() == Mark("app-gate-changelog", 0, 41, "cluster-1", 2000.0, 1)
    store.close()


def test_a_disk_table_keeps_its_entries_and_mark_across_a_restart(tmp_path: Path) -> None:
    disk = DiskTables(tmp_path / "state", "app")
    table = disk("gate", 3)
    table.write({"a": 1, "b": {"x": 2}}, mark(7, partition=3))
    table.write({"a": None}, mark(9, partition=3))
    table.close()
    disk.close()
    again = DiskTables(tmp_path / "state", "app")
    table = again("gate", 3)
    assert dict(table.items()) == {"b": {"x": 2}}
    assert len(table) == 1
    found = table.mark()
    assert found is not None
    assert (found.offset, found.partition) == (9, 3)
    table.clear()
    assert (dict(table.items()), table.mark(), len(table)) == ({}, None, 0)
    table.close()
    assert (tmp_path / "state" / "app" / "gate-3").is_dir()  # kept, for the next owner


def test_a_mark_moves_only_over_changes_that_continue_it(tmp_path: Path) -> None:
    """Changes whose changelog offsets leave a gap after the table's mark (another owner wrote
    in between) are applied, but the mark stays: a recovery must read the gap."""
    disk = DiskTables(tmp_path / "state", "app")
    store = Store("gate", "app-gate-changelog", disk)
    store.cluster = "cluster-1"
    table = store.open(0)
    table.write({}, mark(9))
    store.put(0, "a", 1)
    store.put(0, "b", 2)
    store.changes()
    store.acknowledged({0: 11}, now=2000.0)  # offsets 10 and 11: right after the mark
    moved = table.mark()
    assert moved is not None
    assert moved.offset == 11
    store.put(0, "c", 3)
    store.changes()
    store.acknowledged({0: 20}, now=2001.0)  # offset 20: 12-19 came from someone else
    kept = table.mark()
    assert kept is not None
    assert kept.offset == 11
    assert table.get("c") == 3
    store.close()
    disk.close()


def test_a_table_another_process_holds_is_refused_and_a_private_one_is_removed(
    tmp_path: Path,
) -> None:
    root = tmp_path / "state"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from streams.runtime.tables import DiskTables
                table = DiskTables(Path({str(root)!r}), "app")("gate", 0)
                print("open", flush=True)
                sys.stdin.read()
                """
            ),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        disk = DiskTables(root, "app")
        with pytest.raises(TableBusyError):
            disk("gate", 0)
        private = disk("gate", 0, shared=False)
        private.write({"k": 1}, mark(0))
        assert private.get("k") == 1
        private.close()
        disk.close()
        assert list((root / "app" / "private").iterdir()) == []
    finally:
        holder.kill()
        holder.wait()
    # the kernel let go of the dead holder's lock
    disk = DiskTables(root, "app")
    disk("gate", 0).close()


def test_a_kill_9_never_leaves_a_table_claiming_an_offset_it_does_not_hold(
    tmp_path: Path,
) -> None:
    """Batches of ~8 KB, each marked with its own offset, until the writer kills itself:
    whatever RocksDB kept (memtables flushed on their own, no WAL) must be exactly the
    batches up to the mark it kept."""
    root = tmp_path / "state"
    writer = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import os, signal
                from pathlib import Path
                from streams.runtime.checkpoint import Mark
                from streams.runtime.tables import DiskTables
                table = DiskTables(Path({str(root)!r}), "app")("gate", 0)
                for i in range(1500):
                    changes = {{f"k{{i}}-{{j}}": "x" * 1000 for j in range(8)}}
                    changes["last"] = i
                    table.write(changes, Mark("t", 0, i, "c", 0.0))
                os.kill(os.getpid(), signal.SIGKILL)
                """
            ),
        ],
        check=False,
    )
    assert writer.returncode == -signal.SIGKILL
    table = DiskTables(root, "app")("gate", 0)
    found = table.mark()
    assert found is not None, "12 MB through 512 KB memtables: some were flushed"
    assert found.offset < 1499  # the last memtables died with the process
    assert table.get("last") == found.offset
    assert table.get(f"k{found.offset}-7") is not None
    assert table.get(f"k{found.offset + 1}-0") is None
    assert len(table) == found.entries == 8 * (found.offset + 1) + 1
    table.close()


def test_directories_of_processes_that_are_gone_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "state"
    # (names as tempfile.mkdtemp makes them: <pid>-<8 characters>)
    (root / "999999999-abcd1234").mkdir(parents=True)  # the layout before tables stayed
    (root / f"{os.getpid()}-mine1234").mkdir()
    (root / "4242-ab").mkdir()  # an app id that only looks like a dead process's directory
    (root / "app" / "private" / "999999999-x1234567").mkdir(parents=True)
    disk = DiskTables(root, "app")
    names = {p.name for p in root.iterdir()}
    assert "999999999-abcd1234" not in names
    assert f"{os.getpid()}-mine1234" in names
    assert "4242-ab" in names
    assert not (root / "app" / "private" / "999999999-x1234567").exists()
    assert disk.directory == root / "app"
    disk.close()


def test_a_sweep_cleans_a_slice_per_call_and_goes_on_where_it_stopped(
    tables: TableFactory,
) -> None:
    store = Store("gate", "app-gate-changelog", tables)
    for p in (0, 1):
        store.open(p)
        for i in range(30):
            store.put(p, f"d:{i:02d}", {"expires": float(i)})
    store.changes()
    store.acknowledged({0: 29, 1: 29})

    def expired(_key: str, value: dict[str, float]) -> bool:
        return value["expires"] < 10.0

    assert store.sweep(expired, budget=25) == 10  # partition 0: 25 looked at, 10 expired
    assert len(store) == 50
    assert store.sweep(expired, budget=25) == 10  # the rest of 0, then 20 of partition 1
    assert store.sweep(expired, budget=25) == 0  # the pass ends
    assert len(store) == 40
    assert {c.key for c in store.changes()} == {f"d:{i:02d}".encode() for i in range(10)}
    assert all(store.get(p, "d:05") is None and store.get(p, "d:15") for p in (0, 1))
    store.close()


def test_a_partition_dropped_in_the_middle_of_a_sweep_is_left_alone(tables: TableFactory) -> None:
    store = Store("gate", "app-gate-changelog", tables)
    for p in (0, 1):
        store.open(p)
        for i in range(10):
            store.put(p, f"k{i}", {"expires": 0.0})
    assert store.sweep(lambda _k, _v: True, budget=5) == 5
    store.drop(0)
    assert store.sweep(lambda _k, _v: True, budget=100) == 10
    assert len(store) == 0
    store.close()


def test_a_sweep_judges_the_newest_value_not_the_acknowledged_one(
    tables: TableFactory,
) -> None:
    """An entry the table holds as expired but that a batch has just renewed (its change sent,
    not yet acknowledged) stays; sweeping never waits for the commit pipeline."""
    store = Store("gate", "app-gate-changelog", tables)
    store.open(0)
    store.put(0, "d:renewed", {"expires": 1.0})
    store.put(0, "d:stale", {"expires": 1.0})
    store.changes()
    store.acknowledged({0: 1})
    store.put(0, "d:renewed", {"expires": 99.0})
    store.changes()  # sent, waiting for Kafka

    def expired(_key: str, value: dict[str, float]) -> bool:
        return value["expires"] <= 10.0

    assert store.sweep(expired) == 1
    assert store.get(0, "d:stale") is None
    assert store.get(0, "d:renewed") == {"expires": 99.0}
    assert store.has_changes()  # the deletion waits for the next checkpoint
    store.close()
