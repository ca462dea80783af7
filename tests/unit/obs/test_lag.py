from __future__ import annotations

from aiokafka import TopicPartition

from streams.obs.lag import ours, topic_lag


def test_groups_of_this_app_only() -> None:
    assert ours("postwire", "postwire")
    assert ours("postwire-bulk", "postwire")
    assert ours("postwire-sink-requests", "postwire")
    assert not ours("postwire2", "postwire")
    assert not ours("other-postwire", "postwire")


def test_lag_sums_partitions_and_counts_uncommitted_ones_from_their_start() -> None:
    parts = [
        TopicPartition("a", 0),
        TopicPartition("a", 1),
        TopicPartition("a", 2),
        TopicPartition("b", 0),
    ]
    committed = {TopicPartition("a", 0): 90, TopicPartition("a", 1): -1, TopicPartition("b", 0): 7}
    starts = {
        TopicPartition("a", 0): 0,
        TopicPartition("a", 1): 5,
        TopicPartition("a", 2): 10,
        TopicPartition("b", 0): 0,
    }
    ends = {
        TopicPartition("a", 0): 100,
        TopicPartition("a", 1): 8,
        TopicPartition("a", 2): 10,
        TopicPartition("b", 0): 7,
    }
    # a0: 10 behind; a1: never committed, 3 records left from its start; a2: empty; b0: caught up
    assert topic_lag(committed, parts, starts, ends) == {"a": 13, "b": 0}


def test_a_commit_past_the_end_read_a_moment_earlier_is_no_lag() -> None:
    tp = TopicPartition("a", 0)
    assert topic_lag({tp: 12}, [tp], {tp: 0}, {tp: 10}) == {"a": 0}
