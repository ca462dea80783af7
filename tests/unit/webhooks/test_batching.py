"""Events grouped into posts per endpoint, bounded in count and bytes."""

from __future__ import annotations

import orjson
import pytest

from streams.webhooks.batching import batch_events


def _item(i: int, size: int = 10) -> bytes:
    return orjson.dumps({"sg_event_id": f"e{i}", "pad": "x" * size})


def test_per_tenant_in_order() -> None:
    events = [("a", "e1", _item(1)), ("b", "e2", _item(2)), ("a", "e3", _item(3))]
    batches = batch_events(events, 100, 10_000)
    by_tenant = {b.tenant: b for b in batches}
    assert by_tenant["a"].event_ids == ["e1", "e3"]
    assert by_tenant["b"].event_ids == ["e2"]
    assert [e["sg_event_id"] for e in orjson.loads(by_tenant["a"].payload)] == ["e1", "e3"]


def test_bounded_in_count() -> None:
    events = [("a", f"e{i}", _item(i)) for i in range(25)]
    batches = batch_events(events, 10, 1_000_000)
    assert [len(b.items) for b in batches] == [10, 10, 5]
    assert [i for b in batches for i in b.event_ids] == [f"e{i}" for i in range(25)]


def test_bounded_in_bytes_and_the_payload_is_the_size_counted() -> None:
    events = [("a", f"e{i}", _item(i, 100)) for i in range(40)]
    batches = batch_events(events, 1000, 1024)
    assert len(batches) > 1
    for b in batches:
        assert len(b.payload) == b.size <= 1024
        assert isinstance(orjson.loads(b.payload), list)
    assert sum(len(b.items) for b in batches) == 40


def test_an_event_larger_than_the_limit_goes_alone() -> None:
    events = [("a", "e1", _item(1)), ("a", "big", _item(2, 5000)), ("a", "e3", _item(3))]
    batches = batch_events(events, 100, 1024)
    assert [b.event_ids for b in batches] == [["e1"], ["big"], ["e3"]]


def test_the_batch_id_depends_on_tenant_and_events_only() -> None:
    one = batch_events([("a", "e1", _item(1)), ("a", "e2", _item(2))], 10, 10_000)[0]
    again = batch_events([("a", "e1", _item(1)), ("a", "e2", _item(2))], 10, 10_000)[0]
    other = batch_events([("b", "e1", _item(1)), ("b", "e2", _item(2))], 10, 10_000)[0]
    assert one.batch_id == again.batch_id != other.batch_id


def test_limits_must_hold_an_event() -> None:
    with pytest.raises(ValueError, match="at least one"):
        batch_events([], 0, 100)
