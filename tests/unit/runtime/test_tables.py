import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.runtime.state import Overlay, Store
from streams.runtime.tables import DiskTables, MemoryTables, TableFactory


@pytest.fixture(params=["memory", "disk"])
def tables(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TableFactory]:
    if request.param == "memory":
        yield MemoryTables()
        return
    disk = DiskTables(tmp_path / "state")
    yield disk
    disk.close()


def test_a_table_reads_what_was_written_and_forgets_deletions(tables: TableFactory) -> None:
    table = tables("gate", 0)
    table.put("d:t\x1fk1", {"request_id": "r1", "expires": 10.0})
    table.put("w:requests:0", 41)
    table.put("w:requests:0", 42)
    assert table.get("d:t\x1fk1") == {"request_id": "r1", "expires": 10.0}
    assert table.get("w:requests:0") == 42
    assert table.get("absent") is None
    assert len(table) == 2
    table.delete("d:t\x1fk1")
    table.delete("never there")
    assert table.get("d:t\x1fk1") is None
    assert len(table) == 1
    table.close()


def test_entries_can_be_deleted_while_iterating(tables: TableFactory) -> None:
    table = tables("gate", 1)
    for i in range(50):
        table.put(f"k{i:02d}", {"i": i})
    for key, value in table.items():
        if value["i"] % 2:
            table.delete(key)
    assert sorted(k for k, _ in table.items()) == [f"k{i:02d}" for i in range(0, 50, 2)]
    assert len(table) == 25
    table.close()


def test_a_store_on_disk_keeps_the_changelog_contract(tmp_path: Path) -> None:
    disk = DiskTables(tmp_path / "state")
    store = Store("gate", "app-gate-changelog", disk)
    overlay = Overlay(store)
    overlay.put(0, "r:t", {"second": [1, 2]})
    overlay.put(0, "r:t", {"second": [1, 3]})
    overlay.apply()
    assert store.get(0, "r:t") == {"second": [1, 3]}
    [change] = store.changes()
    assert (change.key, change.partition) == (b"r:t", 0)
    store.begin_recovery(1)
    store.restore(1, b"d:t\x1fk", b'{"expires": 5.0}')
    store.restore(1, b"gone", b"1")
    store.restore(1, b"gone", None)
    assert dict(store.items(1)) == {"d:t\x1fk": {"expires": 5.0}}
    assert len(store) == 2
    assert sorted(p.name for p in disk.directory.iterdir()) == ["gate-0", "gate-1"]
    store.drop(0)
    assert store.get(0, "r:t") is None
    assert [p.name for p in disk.directory.iterdir()] == ["gate-1"]
    store.close()
    disk.close()
    assert not disk.directory.exists()


def test_directories_of_processes_that_are_gone_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "state"
    (root / "999999999-abc").mkdir(parents=True)  # no such pid
    (root / f"{os.getpid()}-mine").mkdir()
    disk = DiskTables(root)
    names = {p.name for p in root.iterdir()}
    assert "999999999-abc" not in names
    assert f"{os.getpid()}-mine" in names
    assert disk.directory.parent == root
    disk.close()


def test_a_sweep_cleans_a_slice_per_call_and_goes_on_where_it_stopped(
    tables: TableFactory,
) -> None:
    store = Store("gate", "app-gate-changelog", tables)
    for p in (0, 1):
        for i in range(30):
            store.put(p, f"d:{i:02d}", {"expires": float(i)})
    store.changes()

    def expired(_key: str, value: dict[str, float]) -> bool:
        return value["expires"] < 10.0

    assert store.sweep(expired, budget=25) == 10  # partition 0: 25 looked at, 10 expired
    assert len(store) == 50
    assert store.sweep(expired, budget=25) == 10  # the rest of 0, then 20 of partition 1
    assert store.sweep(expired, budget=25) == 0  # the pass ends
    assert len(store) == 40
    assert {c.key for c in store.changes()} == {f"d:{i:02d}".encode() for i in range(10)}
    assert all(store.get(p, "d:05") is None and store.get(p, "d:15") for p in (0, 1))


def test_a_partition_dropped_in_the_middle_of_a_sweep_is_left_alone(tables: TableFactory) -> None:
    store = Store("gate", "app-gate-changelog", tables)
    for p in (0, 1):
        for i in range(10):
            store.put(p, f"k{i}", {"expires": 0.0})
    assert store.sweep(lambda _k, _v: True, budget=5) == 5
    store.drop(0)
    assert store.sweep(lambda _k, _v: True, budget=100) == 10
    assert len(store) == 0
    store.close()
