"""State stores: changes coalesce per batch, deletions are tombstones, recovery replays them."""

from __future__ import annotations

import orjson

from streams.runtime.cache import BoundedCache
from streams.runtime.state import Overlay, Store


def test_changes_coalesce_to_one_record_per_key_and_partition() -> None:
    store = Store("s", "app-s-changelog")
    for i in range(100):
        store.put(0, "tenant-a", {"n": i})
    store.put(1, "tenant-a", {"n": 7})
    out = store.changes()
    assert sorted((o.partition, o.key, orjson.loads(o.value or b"null")) for o in out) == [
        (0, b"tenant-a", {"n": 99}),
        (1, b"tenant-a", {"n": 7}),
    ]
    assert {o.topic for o in out} == {"app-s-changelog"}
    assert store.changes() == []  # flushed once


def test_a_delete_is_a_tombstone_and_recovery_replays_it() -> None:
    store = Store("s", "t")
    store.put(0, "k", 1)
    store.put(0, "gone", 2)
    store.changes()
    store.delete(0, "gone")
    [tomb] = store.changes()
    assert (tomb.key, tomb.value) == (b"gone", None)
    fresh = Store("s", "t")
    fresh.begin_recovery(0)
    for key, value in ((b"k", b"1"), (b"gone", b"2"), (b"gone", None)):
        fresh.restore(0, key, value)
    assert dict(fresh.items(0)) == {"k": 1}
    assert fresh.changes() == []  # restoring writes nothing back


def test_drop_forgets_a_partition_that_moved_away() -> None:
    store = Store("s", "t")
    store.put(0, "a", 1)
    store.put(1, "b", 2)
    store.drop(1)
    assert store.get(1, "b") is None
    assert len(store) == 1
    assert [o.partition for o in store.changes()] == [0]


def test_overlay_writes_reach_the_store_only_when_applied() -> None:
    store = Store("s", "t")
    store.put(0, "kept", 1)
    store.changes()
    overlay = Overlay(store)
    overlay.put(0, "new", 2)
    overlay.delete(0, "kept")
    assert overlay.get(0, "new") == 2
    assert overlay.get(0, "kept", "absent") == "absent"
    assert store.get(0, "kept") == 1  # a batch that raises leaves the store as it was
    assert store.changes() == []
    overlay.apply()
    assert dict(store.items(0)) == {"new": 2}
    assert len(store.changes()) == 2


def test_bounded_cache_drops_its_oldest_entries_when_full() -> None:
    cache = BoundedCache(100)
    for i in range(1000):
        cache[f"k{i}"] = i
    assert len(cache) <= 100
    assert "k999" in cache
    assert "k0" not in cache


def test_bounded_cache_hands_out_copies() -> None:
    cache = BoundedCache(10)
    cache["k"] = {"result": {"score": 1}, "expires": 5.0}
    got = cache.get("k")
    got["result"]["score"] = 99
    assert cache["k"] == {"result": {"score": 1}, "expires": 5.0}
    assert cache.get("absent", "default") == "default"


def test_a_bounded_cache_of_size_zero_keeps_nothing() -> None:
    cache = BoundedCache(0)
    cache["k"] = 1
    assert len(cache) == 0
    assert cache.get("k") is None


def test_a_bounded_cache_holds_values_at_their_own_size() -> None:
    cache = BoundedCache(2000)
    before = _rss()
    for i in range(2000):
        cache[f"k{i}"] = {"result": {"address": f"someone{i}@example.com", "score": 90}}
    # orjson's own output keeps a page or two a value: 8 MB or more here
    assert _rss() - before < 2_000_000


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096
