from __future__ import annotations

from sinks.batching import BatchBuffer


def test_due_by_size() -> None:
    buf = BatchBuffer(max_rows=3, linger=10.0)
    for offset in range(2):
        buf.add("p0", offset, "requests", (offset,), now=0.0)
    assert not buf.due(now=0.1)
    buf.add("p0", 2, "requests", (2,), now=0.1)
    assert buf.due(now=0.1)


def test_due_by_age_of_the_oldest_row() -> None:
    buf = BatchBuffer(max_rows=100, linger=0.5)
    assert not buf.due(now=100.0)  # empty is never due
    buf.add("p0", 7, "requests", (1,), now=1.0)
    buf.add("p0", 8, "requests", (2,), now=1.4)
    assert not buf.due(now=1.4)
    assert buf.due(now=1.5)


def test_take_returns_rows_and_next_offsets_then_resets() -> None:
    buf = BatchBuffer(max_rows=100, linger=1.0)
    buf.add("p0", 10, "requests", ("a",), now=0.0)
    buf.add("p1", 4, "rejections", ("b",), now=0.0)
    buf.add("p0", 11, "requests", ("c",), now=0.0)
    batch = buf.take()
    assert batch.rows == {"requests": [("a",), ("c",)], "rejections": [("b",)]}
    assert batch.offsets == {"p0": 12, "p1": 5}
    assert len(batch) == 3
    assert len(buf) == 0
    assert not buf.due(now=99.0)


def test_a_skipped_record_still_advances_the_offset() -> None:
    buf = BatchBuffer(max_rows=100, linger=1.0)
    buf.add("p0", 3, "requests", None, now=0.0)
    assert len(buf) == 0
    assert buf.due(now=1.0)
    assert buf.take().offsets == {"p0": 4}


def test_origins_stay_parallel_to_rows() -> None:
    from sinks.batching import BatchBuffer

    buf = BatchBuffer(10, 1.0)
    buf.add(0, 5, "requests", ("a",), 0.0, origin="o5")
    buf.add(0, 6, "requests", None, 0.0, origin="skipped")  # nothing written, nothing to trace
    buf.add(1, 2, "rejections", ("b",), 0.0, origin="o2")
    buf.add(0, 7, "requests", ("c",), 0.0, origin="o7")
    batch = buf.take()
    assert batch.rows["requests"] == [("a",), ("c",)]
    assert batch.origins["requests"] == ["o5", "o7"]
    assert batch.origins["rejections"] == ["o2"]
    assert batch.offsets == {0: 8, 1: 3}
    assert buf.take().origins == {}
